namespace Strata.Engine.Store;

/// <summary>
/// Where the replicas of a chunk go. The function is part of the format: scrub and
/// migration recompute where chunks belong, so each version is frozen and a new one
/// needs a layout version (docs/format.md, "Placement"). The chunk path asks only
/// this interface; the pool takes the one of its layout (<see cref="Placements.For"/>).
/// </summary>
public interface IPlacement
{
    /// <summary>The placement version: 1 (hash modulo targets, layouts 1-3); 2 (jump consistent hash, layout 4) is not built yet.</summary>
    int Version { get; }

    /// <summary>
    /// The target of replica <paramref name="replica"/> (0-based) of chunk <paramref name="chunk"/> of
    /// image <paramref name="image"/> in a pool of <paramref name="targets"/> targets. Replicas
    /// 0..min(rf, targets)-1 of one chunk are on distinct targets.
    /// </summary>
    int Target(uint image, long chunk, int replica, int targets);

    /// <summary>
    /// Every replica's target of one chunk (<c>replicas.Length</c> = rf), distinct while rf does not
    /// exceed <paramref name="targets"/>: what a migration compares with where the chunk is.
    /// </summary>
    void Targets(uint image, long chunk, int targets, Span<int> replicas);
}

/// <summary>The placement of each layout version: the one place that maps a layout to its placement.</summary>
public static class Placements
{
    /// <summary>The layout that brings placement v2 (catalog feature <c>placement_v2</c>).</summary>
    public const uint PlacementV2Layout = 4;

    public static IPlacement For(uint layoutVersion) =>
        layoutVersion < PlacementV2Layout
            ? PlacementV1.Instance
            : throw new IncompatibleLayoutException($"layout version {layoutVersion} places chunks with placement v2, which this engine does not have");
}

/// <summary>
/// Placement v1 (layouts 1-3): target of replica r of chunk c of image i is
/// (H(i, c) + r) mod targets, with H = splitmix64(i * 0x9E3779B97F4A7C15 ^ c).
/// </summary>
public sealed class PlacementV1 : IPlacement
{
    public static readonly PlacementV1 Instance = new();

    private PlacementV1()
    {
    }

    public int Version => 1;

    public static ulong Hash(uint image, long chunk)
    {
        ulong z = ((ulong)image * 0x9E3779B97F4A7C15UL) ^ (ulong)chunk;
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public int Target(uint image, long chunk, int replica, int targets) =>
        (int)((Hash(image, chunk) % (ulong)targets + (ulong)replica) % (ulong)targets);

    public void Targets(uint image, long chunk, int targets, Span<int> replicas)
    {
        ulong first = Hash(image, chunk) % (ulong)targets;
        for (int r = 0; r < replicas.Length; r++)
            replicas[r] = (int)((first + (ulong)r) % (ulong)targets);
    }
}
