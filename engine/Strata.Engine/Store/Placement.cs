namespace Strata.Engine.Store;

/// <summary>
/// Where the replicas of a chunk go. The function is part of the format: scrub and
/// migration recompute where chunks belong, so each version is frozen and a new one
/// needs a layout version (docs/format.md, "Placement"). The chunk path asks only
/// this interface; the pool takes the one of its layout (<see cref="Placements.For"/>).
/// </summary>
public interface IPlacement
{
    /// <summary>The placement version: 1 (hash modulo targets, layouts 1-3); 2 (jump consistent hash, layouts 4 on).</summary>
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
        layoutVersion < PlacementV2Layout ? PlacementV1.Instance : PlacementV2.Instance;
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

/// <summary>
/// Placement v2 (layout 4, <c>placement_v2</c>; docs/format.md "Placement v2"): jump consistent
/// hash (Lamping and Veach, 2014) per replica, so that a pool growing from n to n + 1 targets
/// moves about 1/(n + 1) of each replica's chunks instead of most of them, with the replicas of a
/// chunk on distinct targets. Replica r of chunk c of image i tries keys
/// K(r, a) = mix(H(i, c) ^ ((r &lt;&lt; 8 | a) * 0xD6E8FEB86659FD93)) for a = 0, 1, ... 63 and takes the
/// first jump(K, targets) that no earlier replica took; if all 64 collide (rf close to the target
/// count) it takes the first free target after the last try, in index order. H is placement v1's
/// hash, mix the splitmix64 finalizer. Frozen: a change is a new placement and a new layout.
/// </summary>
public sealed class PlacementV2 : IPlacement
{
    public static readonly PlacementV2 Instance = new();

    private const int Tries = 64;

    private PlacementV2()
    {
    }

    public int Version => 2;

    /// <summary>Jump consistent hash: the bucket in [0, buckets) of a key; a key keeps its bucket unless it jumps to a new last one.</summary>
    public static int Jump(ulong key, int buckets)
    {
        long b = -1, j = 0;
        while (j < buckets)
        {
            b = j;
            key = key * 2862933555777941757UL + 1;
            j = (long)((b + 1) * ((double)(1L << 31) / ((key >> 33) + 1)));
        }
        return (int)b;
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public int Target(uint image, long chunk, int replica, int targets)
    {
        Span<int> all = stackalloc int[Math.Min(replica + 1, 64)];
        if (replica >= all.Length)
            throw new ArgumentOutOfRangeException(nameof(replica), $"replica {replica} is beyond the 64 placement v2 spreads");
        Targets(image, chunk, targets, all);
        return all[replica];
    }

    public void Targets(uint image, long chunk, int targets, Span<int> replicas)
    {
        ulong h = PlacementV1.Hash(image, chunk);
        for (int r = 0; r < replicas.Length; r++)
        {
            int t = -1;
            for (int a = 0; a < Tries; a++)
            {
                t = Jump(Mix(h ^ ((ulong)(r << 8 | a) * 0xD6E8FEB86659FD93UL)), targets);
                if (!replicas[..r].Contains(t) || r >= targets)
                    break;
            }
            // Every try collided: the first free target after the last one (only when rf is near the target count).
            for (int k = 1; replicas[..r].Contains(t) && k < targets && r < targets; k++)
                t = (t + 1) % targets;
            replicas[r] = t;
        }
    }
}
