using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>`pool set-prop P rf N` on a pool with data (issue 14): a job gives every chunk N copies; rf never overstates them.</summary>
[TestClass]
public sealed class RfChangeTests
{
    private const int Cs = 4096;

    public TestContext TestContext { get; set; } = null!;

    private static Task<(StorageEngine Engine, Pool Pool, InMemoryRasSink Ras)> PoolAsync(int rf, uint layout) =>
        TargetsTestKit.PoolAsync(TestDevices.Memory(3), rf, layout);

    private static int[] CopyCounts(Pool pool, uint image)
    {
        lock (pool.Meta.Sync)
            return [.. pool.Meta.Images[image].Chunks.Values.Select(m => m.Replicas.Select(r => r.Target).Distinct().Count()).Distinct().Order()];
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task RfChange_1To2WithData_JobCopiesEveryChunkAndRfSaysOneUntilItEnds()
    {
        const int chunks = 120;
        var (engine, pool, ras) = await PoolAsync(1, layout: 3);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, model);
        long usedBefore = pool.Query().UsedBytes;

        // The job waits for its first chunk's credit.
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.SetPropertyAsync("rf", "2");
        Assert.AreEqual("1", pool.GetProperty("rf"), "rf does not say 2 while chunks have one copy");
        Assert.AreEqual("2", pool.GetProperty(Pool.RfNextProp));
        Assert.AreEqual(Pool.ReplicateJob, pool.Query().Job!.Kind);
        var again = await Assert.ThrowsExactlyAsync<PoolBusyException>(() => pool.SetPropertyAsync("rf", "1"));
        StringAssert.Contains(again.Message, "pool 'tank' is running replicate");
        var up = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(4, dryRun: false));
        StringAssert.Contains(up.Message, "has replication in progress");

        // Writes meanwhile get two copies at once.
        var data = TestDevices.Pattern(Cs, 77);
        await image.WriteAsync(5 * Cs, data);
        data.CopyTo(model, 5 * Cs);
        lock (pool.Meta.Sync)
            Assert.AreEqual(2, pool.Meta.Images[image.Id].Chunks[5].Replicas.Length);

        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual("2", pool.GetProperty("rf"));
        CollectionAssert.AreEqual(new[] { 2 }, CopyCounts(pool, image.Id));
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, pool.Placement));
        Assert.AreEqual(2 * usedBefore, pool.Query().UsedBytes);
        Assert.AreEqual(MigrationKit.MappedBytes(pool), pool.Shards.Sum(s => s.Allocator.UsedBytes));
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.AreEqual(1, ras.WithId(RasIds.PoolRfChangeStarted).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolRfChangeCompleted).Count());
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task RfChange_2To1WithData_RfOneAtOnceJobFreesTheSecondCopies()
    {
        const int chunks = 120;
        var (engine, pool, ras) = await PoolAsync(2, layout: 4);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 2);
        await image.WriteAsync(0, model);
        long usedBefore = pool.Query().UsedBytes;

        await pool.SetPropertyAsync("rf", "1");
        Assert.AreEqual("1", pool.GetProperty("rf"), "every chunk has at least one copy: true at once");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        CollectionAssert.AreEqual(new[] { 1 }, CopyCounts(pool, image.Id));
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, pool.Placement));
        Assert.AreEqual(usedBefore / 2, pool.Query().UsedBytes, "the second copies are free");
        Assert.AreEqual(MigrationKit.MappedBytes(pool), pool.Shards.Sum(s => s.Allocator.UsedBytes));
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.AreEqual(1, ras.WithId(RasIds.PoolRfChangeCompleted).Count());
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task RfChange_MoreCopiesThanLiveTargets_RefusedWithTheFigure()
    {
        var (engine, pool, _) = await PoolAsync(1, layout: 4);
        var image = await pool.CreateImageAsync("c", "v", 20 * Cs, Cs);
        await image.WriteAsync(0, TestDevices.Pattern(20 * Cs, 3));
        await engine.ExcludeTargetAsync(0, force: true);
        await engine.ExcludeTargetAsync(1, force: true);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("rf", "2"));
        Assert.AreEqual("rf 2 needs 2 targets that are not excluded; pool 'tank' has 1", e.Message);
        Assert.AreEqual("1", pool.GetProperty("rf"));
        Assert.IsNull(pool.RunningJob);
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task RfChange_DuringAnUpgrade_RefusedNamingItQueryShowsTheUpgrade()
    {
        var (engine, pool, _) = await PoolAsync(1, layout: 3);
        var image = await pool.CreateImageAsync("c", "v", 60 * Cs, Cs);
        await image.WriteAsync(0, TestDevices.Pattern(60 * Cs, 4));
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(4, dryRun: false);

        CollectionAssert.AreEqual(new[] { "upgrade" }, pool.Query().Running.ToArray());
        var e = await Assert.ThrowsExactlyAsync<PoolBusyException>(() => pool.SetPropertyAsync("rf", "2"));
        StringAssert.Contains(e.Message, "pool 'tank' is upgrading (3 -> 4");
        StringAssert.Contains(e.Message, "replication cannot start until the upgrade completes");
        Assert.AreEqual("1", pool.GetProperty("rf"));
        Assert.IsFalse(pool.GetProperties().ContainsKey(Pool.RfNextProp), "nothing was recorded");
        await engine.DisposeAsync();
    }
}
