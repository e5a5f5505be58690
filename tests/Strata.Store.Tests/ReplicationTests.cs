using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class ReplicationTests
{
    /// <summary>
    /// A target that lost its shard's log, checkpoints and data (but not its
    /// headers) costs nothing with rf=2: metadata comes from the other shards'
    /// logs, data from the other replicas, and the open rewrites the lost metadata.
    /// </summary>
    [TestMethod]
    public async Task OpenPool_OneShardMetadataAndDataWiped_Rf2LosesNothing()
    {
        var devs = TestDevices.Memory(3);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 6L * 1024 * 1024, 2, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 256 * 1024, 16384);
        var data = TestDevices.Pattern(256 * 1024, 21);
        await img.WriteAsync(0, data);
        await pool.SetContainerPropertyAsync("c", "user.x", "y");
        var shard = pool.Shards[1];
        long walStart = shard.WalStart, metaEnd = shard.Base + shard.Header.DataOffset + shard.Header.DataLength;
        await engine.DisposeAsync();
        devs[1].ZeroBytes(walStart, metaEnd - walStart);

        var (engine2, ras) = await TestDevices.OpenAsync(devs);
        var pool2 = await engine2.OpenPoolAsync("tank");
        Assert.AreEqual(1, ras.WithId(RasIds.CheckpointBad).Single().Target);
        Assert.AreEqual("y", pool2.GetContainerProperty("c", "user.x"));
        var back = new byte[data.Length];
        await pool2.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
        Assert.IsTrue(ras.WithId(RasIds.ReplicaRepaired).All(e => e.Target == 1));
        await engine2.DisposeAsync();

        // The open rewrote target 1's metadata: it alone can now rebuild the pool.
        foreach (int t in new[] { 0, 2 })
        {
            var s = pool2.Shards[t];
            devs[t].ZeroBytes(s.WalStart, s.Base + s.Header.DataOffset - s.WalStart);
        }
        var (engine3, _) = await TestDevices.OpenAsync(devs);
        var pool3 = await engine3.OpenPoolAsync("tank");
        Assert.AreEqual("y", pool3.GetContainerProperty("c", "user.x"));
        await pool3.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
    }
}
