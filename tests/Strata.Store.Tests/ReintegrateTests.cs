using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>`storage reintegrate-target` (issue 14): an excluded target comes back.</summary>
[TestClass]
public sealed class ReintegrateTests
{
    private const int Cs = 4096;

    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-reint-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    private static List<(long Chunk, Replica Replica)> OnTarget(Pool pool, uint image, int target)
    {
        lock (pool.Meta.Sync)
            return [.. pool.Meta.Images[image].Chunks.SelectMany(kv => kv.Value.Replicas.Where(r => r.Target == target).Select(r => (kv.Key, r))).OrderBy(x => x.Key)];
    }

    private static void AssertAllocatorsMatchMaps(Pool pool)
    {
        long mapped = MigrationKit.MappedBytes(pool), used = pool.Shards.Where(s => !pool.IsExcluded(s.Index)).Sum(s => s.Allocator.UsedBytes);
        Assert.AreEqual(mapped, used, "the allocators hold exactly what the maps name");
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Reintegrate_Rf2TargetBackMidRebuild_ValidKeptBadCopiedAnewEverythingPlacedAgain()
    {
        const int chunks = 200;
        var devs = MigrationKit.FileTargets(_dir, 3);
        // Layout 3, so that an upgrade (to 4) can be asked for while the job runs.
        var (engine, pool, ras) = await PoolAsync(devs, 2, layout: 3);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, model);

        // The rebuild waits for its first chunk's credit; the target answers nothing while it is out.
        await pool.SetPropertyAsync("migrate_rate", "1");
        await engine.ExcludeTargetAsync(1);
        devs[1].SetFaults(Dead);
        for (int i = 0; i < 30; i++)
        {
            var data = TestDevices.Pattern(Cs, 50 + i);
            await image.WriteAsync((i * 7L % chunks) * Cs, data);
            data.CopyTo(model, i * 7L % chunks * Cs);
        }

        // Still failing: refused, nothing changed, the rebuild goes on.
        var failing = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ReintegrateTargetAsync(1));
        StringAssert.Contains(failing.Message, "target 1 (");
        StringAssert.Contains(failing.Message, "cannot be read");
        StringAssert.Contains(failing.Message, "it stays excluded");
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        Assert.AreEqual(Pool.RebuildJob, pool.RunningJob);

        // Back, with 5 of its replicas damaged while it was out.
        devs[1].SetFaults("");
        var onOne = OnTarget(pool, image.Id, 1);
        Assert.IsTrue(onOne.Count > 20, "chunks written while the target was out left it; the others are still mapped there");
        var damaged = onOne.Take(5).ToList();
        foreach (var (_, r) in damaged)
            await pool.Shards[1].WriteDataAsync(r.Offset, TestDevices.Pattern(Cs, 999));

        var result = (await engine.ReintegrateTargetAsync(1)).Single();
        Assert.AreEqual(onOne.Count, result.Replicas);
        Assert.AreEqual(onOne.Count - 5, result.Valid);
        Assert.AreEqual(5, result.Invalid);
        Assert.AreEqual(5L * Cs, result.InvalidBytes);
        Assert.IsTrue(result.JobStarted);
        Assert.AreEqual(0, pool.ExcludedTargets.Count);
        var q = pool.Query();
        Assert.AreEqual("reintegrating", q.Redundancy!.Health);
        Assert.AreEqual(Pool.ReintegrateJob, q.Job!.Kind);
        CollectionAssert.AreEqual(new[] { "reintegration" }, q.Running.ToArray());
        Assert.AreEqual(5, q.Redundancy.ChunksAtOneCopy, "the chunks whose replica did not verify are at one copy until the job copies them");
        foreach (var (chunk, _) in damaged)
            lock (pool.Meta.Sync)
                Assert.IsFalse(pool.Meta.Images[image.Id].Chunks[chunk].Replicas.Any(r => r.Target == 1), "a bad replica is no longer mapped");
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        var busy = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(4, dryRun: false));
        StringAssert.Contains(busy.Message, "has reintegration in progress");

        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, pool.Placement), "every chunk is where placement puts it with target 1 in");
        lock (pool.Meta.Sync)
            Assert.IsTrue(pool.Meta.Images[image.Id].Chunks.Values.All(m => m.Replicas.Length == 2 && m.Replicas[0].Target != m.Replicas[1].Target));
        Assert.IsTrue(OnTarget(pool, image.Id, 1).Count > onOne.Count - 5, "chunks moved back onto target 1");
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        AssertAllocatorsMatchMaps(pool);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.AreEqual(1, ras.WithId(RasIds.TargetReintegrated).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolReintegrateStarted).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolReintegrateCompleted).Count());
        Assert.IsFalse(ras.WithId(RasIds.DataChecksumMismatch).Any(), "no bad replica was ever served or read");
        await engine.DisposeAsync();

        var reopened = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });
        var p = await reopened.OpenPoolAsync("tank");
        Assert.AreEqual(0, p.ExcludedTargets.Count);
        Assert.IsNull(p.RunningJob);
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Reintegrate_QueriedWhileTheCheckReadsTheTarget_ShowsReplicasCheckedOfTotal()
    {
        // Armed from the start: the hold takes the holdAt-th read at or past a disk's From (set on target 1 only).
        var hold = new IoHold();
        hold.Arm();
        int reads = 0, holdAt = 0;
        var devs = new[] { "d0", "d1" }.Select(n => new HoldingDisk(n, hold, (d, op, offset, _) =>
            op == IoOpcode.Read && offset >= Volatile.Read(ref d.From) && Interlocked.Increment(ref reads) == Volatile.Read(ref holdAt))).ToArray();
        // rf 1: the rebuild has nothing to copy, so every replica on target 1 stays mapped there.
        var (engine, pool, _) = await PoolAsync(devs, 1);
        var image = await pool.CreateImageAsync("c", "v", 60 * Cs, Cs);
        var model = TestDevices.Pattern(60 * Cs, 4);
        await image.WriteAsync(0, model);
        await engine.ExcludeTargetAsync(1, force: true);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        int onOne = OnTarget(pool, image.Id, 1).Count;
        Assert.IsTrue(onOne > 20);

        // The check's 11th replica read is held: ten are verified.
        var shard = pool.Shards[1];
        Volatile.Write(ref holdAt, 11);
        Volatile.Write(ref devs[1].From, shard.Base + shard.Header.DataOffset);
        var reintegrating = engine.ReintegrateTargetAsync(1);
        await hold.Held.Task.WaitAsync(TestContext.CancellationToken);
        var q = pool.Query();
        Assert.AreEqual(new PoolReintegrationStatus(1, "checking", 10, onOne, 10L * Cs, (long)onOne * Cs, null), q.Reintegration);
        CollectionAssert.Contains(q.Running.ToArray(), "reintegration");
        CollectionAssert.AreEqual(new[] { 1 }, q.Redundancy!.Excluded.ToArray(), "still excluded while it is checked");

        hold.Release.TrySetResult();
        var r = (await reintegrating).Single();
        Assert.AreEqual(onOne, r.Valid);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual(new PoolReintegrationStatus(1, "completed", onOne, onOne, (long)onOne * Cs, (long)onOne * Cs, null), pool.ReintegrationStatus);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task Reintegrate_Rf1TargetWithLostChunks_ChunksReadableAgainAndCounted()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, ras) = await PoolAsync(devs, 1);
        var a = await pool.CreateImageAsync("c", "a", 40 * Cs, Cs);
        var data = TestDevices.Pattern(40 * Cs, 3);
        await a.WriteAsync(0, data);
        int lost = OnTarget(pool, a.Id, 0).Count;
        await engine.ExcludeTargetAsync(0, force: true);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        var buf = new byte[40 * Cs];
        await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => a.ReadAsync(0, buf).AsTask());

        var r = (await engine.ReintegrateTargetAsync(0)).Single();
        Assert.AreEqual(lost, r.Replicas);
        Assert.AreEqual(lost, r.Valid);
        Assert.AreEqual(lost, r.Recovered);
        Assert.AreEqual(0, r.Degradation.LostChunks);
        StringAssert.Contains(ras.WithId(RasIds.TargetReintegrated).Single().Message, $"{lost} lost chunk(s) are readable again");
        CollectionAssert.AreEqual(data, await ReadAllAsync(a, data.Length));
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        AssertAllocatorsMatchMaps(pool);
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task Reintegrate_UnknownNotExcludedOrBlankTarget_RefusedWithOneLineNothingChanged()
    {
        var devs = TestDevices.Memory(3);
        var (engine, pool, _) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", 50 * Cs, Cs);
        var model = TestDevices.Pattern(50 * Cs, 5);
        await image.WriteAsync(0, model);

        var unknown = await Assert.ThrowsExactlyAsync<NotFoundException>(() => engine.ReintegrateTargetAsync(7));
        Assert.AreEqual("target 7 does not exist; the engine has targets 0..2", unknown.Message);
        var notOut = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ReintegrateTargetAsync(2));
        Assert.AreEqual("target 2 is not excluded from any open pool; nothing to reintegrate", notOut.Message);

        await engine.ExcludeTargetAsync(2);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        // Replaced by a blank device: the superblock is gone.
        await DeviceIo.WriteAsync(devs[2], 0, new byte[2 * HeaderCopies.CopySize]);
        var blank = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ReintegrateTargetAsync(2));
        StringAssert.Contains(blank.Message, "target 2 ('mem2') has no valid superblock");
        StringAssert.Contains(blank.Message, "it was replaced by a blank device or overwritten; its data cannot be brought back and it stays excluded");
        Assert.IsFalse(blank.Message.Contains('\n'), "one line");
        CollectionAssert.AreEqual(new[] { 2 }, pool.ExcludedTargets.ToArray());
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health, "the rebuild had finished; nothing changed");
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Reintegrate_TwoPoolsOneRefuses_OtherRejoinsMessageNamesBothRetryFinishes()
    {
        var devs = TestDevices.Memory(3);
        var (engine, tank, _) = await PoolAsync(devs, 2);
        var other = await engine.CreatePoolAsync("other", devs.Length * (4L << 20), 2, TestDevices.SmallPool with { LayoutVersion = 4 });
        await other.CreateContainerAsync("c");
        var models = new List<(Image Image, byte[] Model)>();
        foreach (var (p, seed) in new[] { (tank, 11), (other, 12) })
        {
            var image = await p.CreateImageAsync("c", "v", 64 * Cs, Cs);
            var model = TestDevices.Pattern(64 * Cs, seed);
            await image.WriteAsync(0, model);
            models.Add((image, model));
        }
        await engine.ExcludeTargetAsync(0);
        await tank.WaitForJobAsync(TestContext.CancellationToken);
        await other.WaitForJobAsync(TestContext.CancellationToken);
        // 'other' refuses writes (system prepare): it cannot take the target back now, 'tank' can.
        await other.PrepareAsync();

        var e = await Assert.ThrowsExactlyAsync<BusyException>(() => engine.ReintegrateTargetAsync(0));
        StringAssert.Contains(e.Message, "target 0: it rejoined pool 'tank'");
        StringAssert.Contains(e.Message, "pool 'other' refused: pool 'other' is read-only");
        StringAssert.Contains(e.Message, "run 'strata storage reintegrate-target 0' again");
        Assert.IsEmpty(tank.ExcludedTargets);
        CollectionAssert.AreEqual(new[] { 0 }, other.ExcludedTargets.ToArray());

        other.CancelPrepare();
        var again = await engine.ReintegrateTargetAsync(0);
        Assert.HasCount(1, again);
        Assert.AreEqual("other", again[0].Pool);
        Assert.IsEmpty(other.ExcludedTargets);
        await tank.WaitForJobAsync(TestContext.CancellationToken);
        await other.WaitForJobAsync(TestContext.CancellationToken);
        foreach (var (image, model) in models)
            CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Reintegrate_DuringAnUpgrade_RefusedNamingIt()
    {
        var devs = TestDevices.Memory(3);
        // The job holds at its first step: once target 0 is out, placement_v2 may find nothing to
        // move, and a job that ends at once would let the reintegration start.
        var (engine, pool, _) = await PoolAsync(devs, 2, layout: 3, new StorageEngineOptions { UpgradeHoldAtStep = 1 });
        var image = await pool.CreateImageAsync("c", "v", 100 * Cs, Cs);
        await image.WriteAsync(0, TestDevices.Pattern(100 * Cs, 6));
        await engine.ExcludeTargetAsync(0);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        await pool.UpgradeAsync(4, dryRun: false);
        Assert.AreEqual("in progress", pool.GetProperty("upgrade_status"));

        var e = await Assert.ThrowsExactlyAsync<PoolBusyException>(() => engine.ReintegrateTargetAsync(0));
        StringAssert.Contains(e.Message, "pool 'tank' is upgrading (3 -> 4");
        StringAssert.Contains(e.Message, "reintegration cannot start until the upgrade completes");
        CollectionAssert.AreEqual(new[] { 0 }, pool.ExcludedTargets.ToArray(), "nothing changed");
        await engine.DisposeAsync();
    }
}
