using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>
/// A target whose device fails writes (issue 14, "Losing a target"): on an rf 2 pool the writes
/// succeed on the other replicas, the target leaves the pool (PoolLog.TryDropShard), the engine
/// excludes it and the pool rebuilds; where a chunk's only copy is on it, the pool fails as before.
/// </summary>
[TestClass]
public sealed class TargetDropTests
{
    private const int Cs = 4096;

    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-drop-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    /// <summary>Every write and flush command to target 1 fails from now on; reads still work.</summary>
    private const string WritesFail = "fail_every=1&fail_ops=write,flush";

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    [DataRow(true, DisplayName = "durable writes")]
    [DataRow(false, DisplayName = "writeback writes and flushes")]
    public async Task WritesFail_Rf2Target_EveryWriteSucceedsTargetLeavesRebuiltAndExclusionDurable(bool durable)
    {
        const int chunks = 200;
        var devs = MigrationKit.FileTargets(_dir, 3);
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = PlacementV2Tests.UpTo4() });
        var pool = await engine.CreatePoolAsync("tank", 3 * (4L << 20), 2, TestDevices.SmallPool with { LayoutVersion = 4 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, model);
        int onOne = OnTarget(pool, 1);
        Assert.IsTrue(onOne > 0);

        devs[1].SetFaults(WritesFail);
        // Single chunks and multi-chunk runs, every one answered without an error.
        var rng = new Random(7);
        for (int i = 0; i < 40; i++)
        {
            int at = rng.Next(chunks - 4), n = rng.Next(1, 5);
            var data = TestDevices.Pattern(n * Cs - (i % 3) * 512, 100 + i);
            await image.WriteAsync((long)at * Cs + (i % 3) * 512, data, durable);
            data.CopyTo(model, at * Cs + (i % 3) * 512);
        }
        if (!durable)
            await image.FlushAsync();
        Assert.AreEqual(PoolStatus.Ready, pool.State, pool.ReadOnlyReason);
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        var left = ras.WithId(RasIds.TargetDropped).Single();
        StringAssert.Contains(left.Message, "pool 'tank' stopped using target 1 after its device failed a write");
        Assert.IsGreaterThan(0L, devs[1].GetFaultStats().IosFailed);

        // The engine excludes it (once) and the pool rebuilds what had a copy there.
        var auto = await ras.First(RasIds.TargetAutoExcluded).WaitAsync(TestContext.CancellationToken);
        StringAssert.Contains(auto.Message, "target 1 ('");
        StringAssert.Contains(auto.Message, "excluded after a failed write; 1 pool(s) rebuild onto the other targets");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(pool, 1), "no replica is left on the target that failed");
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        Assert.AreEqual(0, MigrationKit.NotAtRf(pool));
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.IsFalse(ras.WithId(RasIds.PoolReadOnly).Any(), "the failing target never made the pool read-only");
        await engine.DisposeAsync();

        // Durable: a reopen (the device answering again) keeps the target out and reads every byte.
        devs[1].SetFaults("");
        var reopened = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });
        var p = await reopened.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(new[] { 1 }, p.ExcludedTargets.ToArray());
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    /// <summary>
    /// Target 1's flush fails in a round: the round completes on the other shards, but its records may
    /// name replicas on target 1 that the failed flush never made durable. Until the checkpoint that
    /// records the exclusion lands, the log's durable mark must not cover that round: a later batch would
    /// write the mark, and a crash before the checkpoint would replay those records without the tail check,
    /// naming replicas whose data is gone (CrashTests seed 345 in CI: data_checksum_mismatch after reopen).
    /// </summary>
    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public async Task FlushFails_Rf2Target_DurableMarkWaitsForTheDropsCheckpoint()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan });
        var pool = await engine.CreatePoolAsync("tank", 3 * (4L << 20), 2, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 64 * Cs, Cs);
        var model = TestDevices.Pattern(64 * Cs, 3);
        await image.WriteAsync(0, model);
        ulong before = pool.Log.DurableThrough;

        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        pool.BeforeDropCheckpoint = async () =>
        {
            held.TrySetResult();
            await release.Task;
        };
        devs[1].SetFaults("fail_every=1&fail_ops=flush");
        var data = TestDevices.Pattern(2 * Cs, 4);
        var write = image.WriteAsync(5 * Cs, data);
        // The checkpoint waits for every round before it: the failed round is complete now.
        await held.Task.WaitAsync(TestContext.CancellationToken);
        Assert.IsTrue(pool.Log.DropPending);
        Assert.IsFalse(write.IsCompleted, "the write's acknowledgement waits for the drop's checkpoint");
        Assert.AreEqual(before, pool.Log.DurableThrough, "no durable mark covers a round completed while the drop is pending");

        release.TrySetResult();
        await write;
        data.CopyTo(model, 5 * Cs);
        Assert.IsFalse(pool.Log.DropPending);
        Assert.IsGreaterThan(before, pool.Log.DurableThrough, "the drop's checkpoint made everything durable");
        CollectionAssert.AreEqual(new[] { 1 }, pool.ExcludedTargets.ToArray());
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    /// <summary>
    /// A routine checkpoint captured before a drop and written after it (to the remaining shard only,
    /// flushing only it) must not become current without the exclusion: its state holds a writeback
    /// mapping whose replica on the dropped target no flush made durable. Here the round logging that
    /// mapping fails its flush on target 1, and the power fails while the drop's own checkpoint waits.
    /// The reopened pool must not map a replica whose bytes its CRC does not name (CrashTests seed 28080).
    /// </summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task FlushFailsBesideRoutineCheckpoint_Rf2_ReopenMapsNoUnflushedReplica()
    {
        var power = new CrashSwitch();
        var disks = Enumerable.Range(0, 2).Select(i => new CrashDisk($"d{i}", 4L << 20, power)).ToArray();
        var options = new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan };
        var engine = await StorageEngine.FormatAsync(disks, options);
        var pool = await engine.CreatePoolAsync("p", 2L << 20, 2, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        const int chunks = 8;
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var old = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, old);
        // Durable rounds until the next one takes the log past half: a routine checkpoint starts after it.
        long half = pool.Shards[0].Header.WalLength / 2, step = 0;
        for (int i = 0; pool.Log.Used + step <= half; i++)
        {
            long used = pool.Log.Used;
            var data = TestDevices.Pattern(Cs, 10 + i);
            await image.WriteAsync(0, data);
            data.CopyTo(old, 0);
            step = Math.Max(step, pool.Log.Used - used);
        }
        // Writes beside it only once a later round started or the drop's checkpoint waits for it.
        pool.Log.HoldCheckpointForARound = true;
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        pool.BeforeDropCheckpoint = async () =>
        {
            held.TrySetResult();
            await Task.Delay(Timeout.Infinite, TestContext.CancellationToken);
        };
        // Writeback: the data is on both disks (not flushed), the mappings applied and queued.
        var fresh = TestDevices.Pattern(chunks * Cs, 2);
        await image.WriteAsync(0, fresh, false);
        long firstOnTarget1;
        lock (pool.Meta.Sync)
            firstOnTarget1 = pool.Meta.Images[image.Id].Chunks.Count(kv => kv.Value.Replicas[0].Target == 1);
        Assert.IsGreaterThan(0L, firstOnTarget1, "some chunk is read from target 1 first");
        long checkpoints = pool.Log.Stats.Checkpoints;
        // Target 1 runs one more command (the round's log write), then fails every write and flush.
        disks[1].FailWritesAfter = 1;
        var flush = image.FlushAsync();
        await held.Task.WaitAsync(TestContext.CancellationToken);
        Assert.IsTrue(disks[1].WritesFailed);
        Assert.IsGreaterThan(checkpoints, pool.Log.Stats.Checkpoints, "a routine checkpoint was started beside the failing round");
        Assert.IsFalse(flush.IsCompleted, "the flush is held until the drop's checkpoint");

        power.CutPower();
        var next = new CrashSwitch();
        var reopenedDisks = disks.Select(d => d.AfterCrash(next, (_, _, _) => PendingFate.Lost)).ToArray();
        var ras = new InMemoryRasSink();
        var reopened = await StorageEngine.OpenAsync(reopenedDisks, options with { Ras = ras });
        var p = await reopened.OpenPoolAsync("p");
        var read = await ReadAllAsync(p.OpenImage("c", "v"), chunks * Cs);
        var bad = ras.Events.FirstOrDefault(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable);
        Assert.IsNull(bad, $"{bad?.Id}: {bad?.Message}");
        // The flush was never acknowledged: each chunk reads as before it or as the writeback write left it.
        for (int c = 0; c < chunks; c++)
        {
            var got = read.AsSpan(c * Cs, Cs);
            Assert.IsTrue(got.SequenceEqual(old.AsSpan(c * Cs, Cs)) || got.SequenceEqual(fresh.AsSpan(c * Cs, Cs)), $"chunk {c} reads wrong bytes");
        }
        await reopened.DisposeAsync();
    }

    /// <summary>Only target 1's log region fails: the metadata goes on on the other shards, the target leaves.</summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task LogWriteFails_Rf2Target_PoolStaysWritableTargetLeaves()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, ras) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", 64 * Cs, Cs);
        var model = TestDevices.Pattern(64 * Cs, 3);
        await image.WriteAsync(0, model);
        var shard = pool.Shards[1];
        devs[1].SetFaults($"fail_every=1&fail_ops=write&fail_range={shard.WalStart}-{shard.WalStart + shard.Header.WalLength}");
        for (int i = 0; i < 10; i++)
        {
            var data = TestDevices.Pattern(Cs, 40 + i);
            await image.WriteAsync(i * 5L * Cs, data);
            data.CopyTo(model, i * 5 * Cs);
        }
        Assert.AreEqual(PoolStatus.Ready, pool.State, pool.ReadOnlyReason);
        Assert.IsTrue(pool.IsExcluded(1));
        Assert.AreEqual(1, ras.WithId(RasIds.TargetDropped).Count());
        await pool.CreateImageAsync("c", "w", Cs, Cs);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();

        devs[1].SetFaults("");
        var reopened = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });
        var p = await reopened.OpenPoolAsync("tank");
        Assert.IsTrue(p.IsExcluded(1));
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        Assert.IsNotNull(p.OpenImage("c", "w"), "metadata committed after the target left is there");
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    /// <summary>On rf 1 the target holds the only copy of its chunks: it cannot leave, so the pool fails read-only as before.</summary>
    [TestMethod]
    public async Task LogWriteFails_Rf1TargetWithChunks_PoolReadOnlyNothingDropped()
    {
        var devs = MigrationKit.FileTargets(_dir, 2);
        var (engine, pool, ras) = await PoolAsync(devs, 1);
        var image = await pool.CreateImageAsync("c", "v", 16 * Cs, Cs);
        var model = TestDevices.Pattern(16 * Cs, 5);
        await image.WriteAsync(0, model);
        Assert.IsTrue(OnTarget(pool, 1) > 0);
        var shard = pool.Shards[1];
        devs[1].SetFaults($"fail_every=1&fail_ops=write&fail_range={shard.WalStart}-{shard.WalStart + shard.Header.WalLength}");
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => image.WriteAsync(0, TestDevices.Pattern(Cs, 9)).AsTask());
        Assert.AreEqual(PoolStatus.ReadOnly, pool.State);
        Assert.AreEqual(0, pool.ExcludedTargets.Count);
        Assert.IsFalse(ras.WithId(RasIds.TargetDropped).Any());
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length), "acknowledged data still reads");
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    /// <summary>With DropTargetOnWriteError off, a failed replica write fails the client's write, as it did before.</summary>
    [TestMethod]
    public async Task WritesFail_DropTurnedOff_WriteFailsTargetStays()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, ras) = await PoolAsync(devs, 2, options: new StorageEngineOptions { DropTargetOnWriteError = false });
        var image = await pool.CreateImageAsync("c", "v", 64 * Cs, Cs);
        await image.WriteAsync(0, TestDevices.Pattern(64 * Cs, 2));
        var data = shardData(pool, 1);
        devs[1].SetFaults($"fail_every=1&fail_ops=write&fail_range={data.Start}-{data.End}");
        long chunk;
        lock (pool.Meta.Sync)
            chunk = pool.Meta.Images[image.Id].Chunks.First(kv => kv.Value.Replicas.Any(r => r.Target == 1)).Key;
        var e = await Assert.ThrowsExactlyAsync<StoreException>(() => image.WriteAsync(chunk * Cs, TestDevices.Pattern(Cs, 8)).AsTask());
        Assert.AreEqual(Strata.Interop.Errno.EIO, e.Errno);
        Assert.AreEqual(0, pool.ExcludedTargets.Count);
        Assert.IsFalse(ras.WithId(RasIds.TargetDropped).Any());
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();

        static (long Start, long End) shardData(Pool pool, int t)
        {
            var s = pool.Shards[t];
            return (s.Base + s.Header.DataOffset, s.Base + s.Header.DataOffset + s.Header.DataLength);
        }
    }
}
