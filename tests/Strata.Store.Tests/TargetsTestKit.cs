using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>What the target tests share (ExcludeTests, ReintegrateTests, RfChangeTests): a pool on their devices, whole-image reads, a dead target.</summary>
internal static class TargetsTestKit
{
    /// <summary>A fault configuration in which every command on the target fails (a dead disk).</summary>
    public const string Dead = "fail_every=1&fail_ops=read,write,flush,trim,zeroes";

    /// <summary>An engine on <paramref name="devs"/> (catalog up to layout 4) with pool "tank" (4 MiB a target) and container "c".</summary>
    public static async Task<(StorageEngine Engine, Pool Pool, InMemoryRasSink Ras)> PoolAsync(IBlockDevice[] devs, int rf, uint layout = 4, StorageEngineOptions? options = null)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devs, (options ?? new StorageEngineOptions()) with { Ras = ras, Catalog = PlacementV2Tests.UpTo4() });
        var pool = await engine.CreatePoolAsync("tank", devs.Length * (4L << 20), rf, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        return (engine, pool, ras);
    }

    /// <summary>Chunks of the pool with a replica on target <paramref name="target"/>.</summary>
    public static int OnTarget(Pool pool, int target)
    {
        lock (pool.Meta.Sync)
            return pool.Meta.Images.Values.Sum(i => i.Chunks.Values.Count(m => m.Replicas.Any(r => r.Target == target)));
    }

    public static async Task<byte[]> ReadAllAsync(Image image, int length)
    {
        var buf = new byte[length];
        await image.ReadAsync(0, buf);
        return buf;
    }
}
