namespace Strata.Engine.Store;

/// <summary>
/// Placement v1 (layout 1): target of replica r of chunk c of image i is
/// (H(i, c) + r) mod targets, with H = splitmix64(i * 0x9E3779B97F4A7C15 ^ c).
/// The function is part of the format: changing it needs a layout version
/// (placement_v2), because scrub and migration recompute where chunks belong.
/// </summary>
public static class PlacementV1
{
    public static ulong Hash(uint image, long chunk)
    {
        ulong z = ((ulong)image * 0x9E3779B97F4A7C15UL) ^ (ulong)chunk;
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public static int Target(uint image, long chunk, int replica, int targets) =>
        (int)((Hash(image, chunk) % (ulong)targets + (ulong)replica) % (ulong)targets);
}
