using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>
/// A target that fails a write during its own reintegration (issue 14) leaves the pool the way any
/// failing target does: while it rejoins the log (still excluded) or while the job moves chunks back
/// onto it, clients see no error, the reintegration fails naming the target and the error, the target
/// is excluded again durably, the pool stays writable and rebuilds, and a later reintegration works.
/// </summary>
[TestClass]
public sealed class ReintegrateFailureTests
{
    private const int Cs = 4096;
    private const int Chunks = 200;

    /// <summary>Every write and flush command to the target fails from now on; reads still work.</summary>
    private const string WritesFail = "fail_every=1&fail_ops=write,flush";

    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-reintfail-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    private static readonly StorageEngineOptions Options = new() { Catalog = PlacementV2Tests.UpTo4() };

    /// <summary>rf 2 on 3 file targets, an image written in full, target 1 excluded and rebuilt away.</summary>
    private async Task<(StorageEngine Engine, Pool Pool, Image Image, byte[] Model)> ExcludedAndRebuiltAsync(NativeBlockDevice[] devs, WaitableRasSink ras)
    {
        var engine = await StorageEngine.FormatAsync(devs, Options with { Ras = ras });
        var pool = await engine.CreatePoolAsync("tank", 3 * (4L << 20), 2, TestDevices.SmallPool with { LayoutVersion = 4 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", Chunks * Cs, Cs);
        var model = TestDevices.Pattern(Chunks * Cs, 1);
        await image.WriteAsync(0, model);
        await engine.ExcludeTargetAsync(1);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(pool, 1), "the rebuild moved every replica off target 1");
        return (engine, pool, image, model);
    }

    /// <summary>
    /// Writes <paramref name="count"/> single and multi-chunk runs at seeded places, each awaited and
    /// then put into the model: what the model holds was acknowledged. Any error fails the test.
    /// </summary>
    private static async Task ClientWritesAsync(Image image, byte[] model, int count, int seed)
    {
        var rng = new Random(seed);
        for (int i = 0; i < count; i++)
        {
            int at = rng.Next(Chunks - 4), n = rng.Next(1, 5), skew = i % 3 * 512;
            var data = TestDevices.Pattern(n * Cs - skew, seed * 1000 + i);
            await image.WriteAsync((long)at * Cs + skew, data);
            data.CopyTo(model, at * Cs + skew);
        }
    }

    /// <summary>
    /// After the failure: the target is excluded again and the pool rebuilt without it; every
    /// acknowledged byte reads back, after a reopen too (the exclusion is durable), and a second
    /// reintegration with the device sound brings the target back.
    /// </summary>
    private async Task AssertExcludedDurablyThenReintegratedAsync(NativeBlockDevice[] devs, StorageEngine engine, Pool pool, Image image, byte[] model, WaitableRasSink ras)
    {
        var ct = TestContext.CancellationToken;
        await ras.First(RasIds.TargetAutoExcluded).WaitAsync(ct);
        await pool.WaitForJobAsync(ct);
        Assert.AreEqual(PoolStatus.Ready, pool.State, pool.ReadOnlyReason);
        Assert.IsFalse(ras.WithId(RasIds.PoolReadOnly).Any(), "the failing target never made the pool read-only");
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        Assert.AreEqual(Pool.RebuildJob, pool.JobStatus!.Kind);
        Assert.AreEqual("completed", pool.JobStatus.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(pool, 1), "no replica is left on the target that failed");
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await pool.CreateImageAsync("c", "after", Cs, Cs);
        await engine.DisposeAsync();

        devs[1].SetFaults("");
        var reopened = await StorageEngine.OpenAsync(devs, Options);
        var p = await reopened.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(new[] { 1 }, p.ExcludedTargets.ToArray(), "the exclusion was durable");
        Assert.IsNull(p.RunningJob);
        var img = p.OpenImage("c", "v");
        CollectionAssert.AreEqual(model, await ReadAllAsync(img, model.Length), "every acknowledged write reads back");
        Assert.IsNotNull(p.OpenImage("c", "after"));

        var again = (await reopened.ReintegrateTargetAsync(1)).Single();
        Assert.IsTrue(again.JobStarted);
        await p.WaitForJobAsync(ct);
        Assert.AreEqual("completed", p.JobStatus!.State, p.JobStatus.Reason);
        Assert.AreEqual("completed", p.ReintegrationStatus!.State);
        Assert.AreEqual(0, p.ExcludedTargets.Count);
        Assert.IsTrue(OnTarget(p, 1) > 0, "chunks moved back onto target 1");
        Assert.AreEqual(0, MigrationKit.NotAtRf(p));
        CollectionAssert.AreEqual(model, await ReadAllAsync(img, model.Length));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task WritesFail_WhileJobMovesChunksBack_ClientsSeeNoErrorJobFailedTargetExcludedAgain()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var ras = new WaitableRasSink();
        var (engine, pool, image, model) = await ExcludedAndRebuiltAsync(devs, ras);

        // The job waits for its first chunk's credit until the target fails.
        await pool.SetPropertyAsync("migrate_rate", "1");
        var r = (await engine.ReintegrateTargetAsync(1)).Single();
        Assert.IsTrue(r.JobStarted);
        Assert.AreEqual(0, pool.ExcludedTargets.Count);
        Assert.AreEqual("moving", pool.ReintegrationStatus!.State);
        devs[1].SetFaults(WritesFail);

        // Clients write across the failure while the job is let go: both the clients' replica writes
        // and the job's copies onto target 1 fail there.
        var clients = ClientWritesAsync(image, model, 60, 3);
        await pool.SetPropertyAsync("migrate_rate", "0");
        await clients;

        var dropped = await ras.First(RasIds.TargetDropped).WaitAsync(TestContext.CancellationToken);
        StringAssert.Contains(dropped.Message, "pool 'tank' stopped using target 1 after its device failed a write");
        var failed = await ras.First(RasIds.PoolReintegrateFailed).WaitAsync(TestContext.CancellationToken);
        Assert.AreEqual(1, failed.Target);
        StringAssert.Contains(failed.Message, "pool 'tank' reintegrate failed: target 1 failed a write (");
        StringAssert.Contains(failed.Message, "it is excluded and the pool rebuilds");
        Assert.IsGreaterThan(0L, devs[1].GetFaultStats().IosFailed);
        var status = pool.ReintegrationStatus!;
        Assert.AreEqual(1, status.Target);
        Assert.AreEqual("failed", status.State);
        StringAssert.Contains(status.Reason, "target 1 failed a write (");
        Assert.IsFalse(ras.WithId(RasIds.PoolReintegrateCompleted).Any());
        await AssertExcludedDurablyThenReintegratedAsync(devs, engine, pool, image, model, ras);
    }

    /// <summary>
    /// The target fails while it rejoins the log, before the exclusion is lifted: its first checkpoint
    /// (every write fails), or the log round that lifts the exclusion (only its log region fails, so
    /// the batch lifting it is written to the other shards and a checkpoint must exclude it again).
    /// </summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    [DataRow(false, DisplayName = "its rejoin checkpoint fails")]
    [DataRow(true, DisplayName = "the round lifting its exclusion fails")]
    public async Task WritesFail_WhileTargetRejoinsTheLog_RefusedTargetStaysExcludedClientsSeeNoError(bool logOnly)
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var ras = new WaitableRasSink();
        var (engine, pool, image, model) = await ExcludedAndRebuiltAsync(devs, ras);
        var shard = pool.Shards[1];
        devs[1].SetFaults(logOnly
            ? $"fail_every=1&fail_ops=write&fail_range={shard.WalStart}-{shard.WalStart + shard.Header.WalLength}"
            : "fail_every=1&fail_ops=write");

        // Clients write while it rejoins (in the log-only case the lift's round must be the one that
        // fails there, so the clients wait until the reintegration is answered).
        var clients = logOnly ? Task.CompletedTask : ClientWritesAsync(image, model, 40, 5);
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ReintegrateTargetAsync(1));
        await clients;
        StringAssert.Contains(e.Message, $"target 1 ('{devs[1].Name}') could not rejoin pool 'tank': target 1 failed a write (");
        StringAssert.Contains(e.Message, "it stays excluded; 'strata storage reintegrate-target 1' tries again once the device is sound");
        Assert.IsFalse(e.Message.Contains('\n'), "one line");
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        var dropped = ras.WithId(RasIds.TargetDropped).Single();
        StringAssert.Contains(dropped.Message, "pool 'tank' stopped using target 1, which was rejoining it for its reintegration, after its device failed a write");
        var failed = ras.WithId(RasIds.PoolReintegrateFailed).Single();
        Assert.AreEqual(1, failed.Target);
        StringAssert.Contains(failed.Message, "pool 'tank' reintegration of target 1 failed: target 1 failed a write (");
        Assert.AreEqual("failed", pool.ReintegrationStatus!.State);
        Assert.AreEqual(e.Message, pool.ReintegrationStatus.Reason);
        Assert.IsFalse(ras.WithId(RasIds.TargetReintegrated).Any());
        Assert.IsGreaterThan(0L, devs[1].GetFaultStats().IosFailed);

        await ClientWritesAsync(image, model, 20, 6);
        await AssertExcludedDurablyThenReintegratedAsync(devs, engine, pool, image, model, ras);
    }

    /// <summary>
    /// rf 1: a target that failed never leaves a pool once it is in, but one still rejoining has nothing
    /// placed on it or read from it, so it leaves again: the pool stays writable, its lost chunks stay
    /// lost (EIO, never other bytes) until a reintegration succeeds.
    /// </summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task WritesFail_Rf1TargetWhileItRejoins_RefusedPoolWritableLostChunksStillLostThenBack()
    {
        var devs = MigrationKit.FileTargets(_dir, 2);
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(devs, Options with { Ras = ras });
        var pool = await engine.CreatePoolAsync("tank", 2 * (4L << 20), 1, TestDevices.SmallPool with { LayoutVersion = 4 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 40 * Cs, Cs);
        var model = TestDevices.Pattern(40 * Cs, 8);
        await image.WriteAsync(0, model);
        await engine.ExcludeTargetAsync(1, force: true);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        long lost = pool.Query().Redundancy!.LostChunks;
        Assert.IsTrue(lost > 0);

        devs[1].SetFaults("fail_every=1&fail_ops=write");
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ReintegrateTargetAsync(1));
        StringAssert.Contains(e.Message, "could not rejoin pool 'tank': target 1 failed a write (");
        Assert.AreEqual(PoolStatus.Ready, pool.State, pool.ReadOnlyReason);
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        Assert.AreEqual(lost, pool.Query().Redundancy!.LostChunks, "what was lost is still lost, not served from the target");
        await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => ReadAllAsync(image, model.Length));
        var after = await pool.CreateImageAsync("c", "after", 4 * Cs, Cs);
        await after.WriteAsync(0, TestDevices.Pattern(4 * Cs, 9));
        await engine.DisposeAsync();

        devs[1].SetFaults("");
        var reopened = await StorageEngine.OpenAsync(devs, Options);
        var p = await reopened.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(new[] { 1 }, p.ExcludedTargets.ToArray());
        var r = (await reopened.ReintegrateTargetAsync(1)).Single();
        Assert.AreEqual(lost, r.Recovered);
        await p.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", p.ReintegrationStatus!.State);
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        CollectionAssert.AreEqual(TestDevices.Pattern(4 * Cs, 9), await ReadAllAsync(p.OpenImage("c", "after"), 4 * Cs));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }
}
