using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// The migration loop (engine/Strata.Engine/Migration, docs/migration.md) on pools on file targets,
/// run as a test layout's upgrade action that moves every chunk one target on.
/// </summary>
[TestClass]
public sealed class MigrationTests
{
    private const int ChunkSize = 16384;
    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-mig-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    private async Task<(StorageEngine Engine, Pool Pool, WaitableRasSink Ras)> CreateAsync(IBlockDevice[] devs, IUpgradeAction action, int rf, long bytesPerTarget = 8L << 20)
    {
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = MigrationKit.Catalog(action) });
        var pool = await engine.CreatePoolAsync("tank", devs.Length * bytesPerTarget, rf, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        return (engine, pool, ras);
    }

    private static async Task<(StorageEngine Engine, Pool Pool, WaitableRasSink Ras)> ReopenAsync(IBlockDevice[] devs, IUpgradeAction action)
    {
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = MigrationKit.Catalog(action) });
        return (engine, await engine.OpenPoolAsync("tank"), ras);
    }

    private static async Task<byte[]> ReadAllAsync(Image image, long size)
    {
        var b = new byte[size];
        await image.ReadAsync(0, b);
        return b;
    }

    [TestMethod]
    [DataRow(1, 2)]
    [DataRow(2, 3)]
    public async Task Move_NoClients_EveryChunkAtItsNewTargetsSourcesFreedDataIntact(int rf, int targets)
    {
        var devs = MigrationKit.FileTargets(_dir, targets);
        var action = MigrationKit.RotateAction(new MigrationOptions { CursorEvery = 5 });
        var (engine, pool, ras) = await CreateAsync(devs, action, rf);
        var image = await pool.CreateImageAsync("c", "v", 40 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(40 * ChunkSize - 1000, 7);
        await image.WriteAsync(0, data);
        Assert.AreEqual(40, MigrationKit.Misplaced(pool, RotatedPlacement.Instance), "every chunk starts off its new targets");

        var plan = await pool.UpgradeAsync(3, dryRun: false);
        Assert.AreEqual(40L * ChunkSize, plan.Actions[0].BytesToMove, "rf 1 moves each chunk, rf 2 one replica of each (the other is already on a new target)");
        await pool.WaitForUpgradeAsync();

        var status = pool.GetUpgradeStatus();
        Assert.AreEqual("completed", status.Status, status.Reason);
        Assert.AreEqual(40, status.ItemsDone);
        Assert.AreEqual(status.BytesTotal, status.BytesDone);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool), "every source extent was freed, every destination is in use");
        CollectionAssert.AreEqual(data, (await ReadAllAsync(image, data.Length)));
        await engine.DisposeAsync();

        var (again, reopened, ras2) = await ReopenAsync(devs, action);
        Assert.AreEqual(0, MigrationKit.Misplaced(reopened, RotatedPlacement.Instance));
        CollectionAssert.AreEqual(data, await ReadAllAsync(reopened.OpenImage("c", "v"), data.Length));
        Assert.IsFalse(ras.WithId(RasIds.DataChecksumMismatch).Any() || ras2.WithId(RasIds.DataChecksumMismatch).Any());
        await again.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Move_ConcurrentClientWrites_NoAcknowledgedWriteLostNoExtentLeaked()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, ras) = await CreateAsync(devs, MigrationKit.RotateAction(new MigrationOptions { CursorEvery = 1 }), rf: 2);
        const int chunks = 64;
        var image = await pool.CreateImageAsync("c", "v", chunks * ChunkSize, ChunkSize);
        var model = TestDevices.Pattern(chunks * ChunkSize, 3);
        await image.WriteAsync(0, model);

        var rng = new Random(5);
        await pool.UpgradeAsync(3, dryRun: false);
        var job = pool.WaitForUpgradeAsync();
        int writes = 0;
        // Clients write across the whole image, partial and multi-chunk, durable and writeback,
        // until the job has ended and they wrote at least 60 times.
        while (!job.IsCompleted || writes < 60)
        {
            int len = rng.Next(1, 3 * ChunkSize);
            int off = rng.Next(0, model.Length - len);
            var bytes = TestDevices.Pattern(len, rng.Next());
            await image.WriteAsync(off, bytes, durable: rng.Next(2) == 0);
            bytes.CopyTo(model, off);
            writes++;
        }
        await job;
        await image.FlushAsync();
        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status, pool.GetUpgradeStatus().Reason);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool), "no extent leaked or freed twice");
        Assert.IsFalse(ras.WithId(RasIds.DataChecksumMismatch).Any() || ras.WithId(RasIds.MigrationChunkLeft).Any());
        TestContext.WriteLine($"{writes} client writes during the move");
        await engine.DisposeAsync();

        var (again, reopened, _) = await ReopenAsync(devs, MigrationKit.RotateAction());
        CollectionAssert.AreEqual(model, await ReadAllAsync(reopened.OpenImage("c", "v"), model.Length));
        await again.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Throttle_SlowRateChangedToUnthrottledWhileRunning_JobCompletes()
    {
        var devs = MigrationKit.FileTargets(_dir, 2);
        var spy = new CursorSpyAction(MigrationKit.RotateAction(new MigrationOptions { CursorEvery = 1 }));
        var (engine, pool, _) = await CreateAsync(devs, spy, rf: 1);
        var image = await pool.CreateImageAsync("c", "v", 20 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(20 * ChunkSize, 9);
        await image.WriteAsync(0, data);
        // One byte per second: the first chunk goes (a second's credit), the next waits for hours.
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(3, dryRun: false);
        await spy.Saved;

        var status = pool.GetUpgradeStatus();
        Assert.IsTrue(status.Running);
        Assert.AreEqual(1, status.ItemsDone, "the throttle holds the loop after its first chunk");
        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForUpgradeAsync(TestContext.CancellationToken);

        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
        CollectionAssert.AreEqual(data, await ReadAllAsync(image, data.Length));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Cursor_PoolClosedMidMove_ResumesAtItsCursorAndCompletes()
    {
        var devs = MigrationKit.FileTargets(_dir, 2);
        var spy = new CursorSpyAction(MigrationKit.RotateAction(new MigrationOptions { CursorEvery = 1 }));
        var (engine, pool, _) = await CreateAsync(devs, spy, rf: 1);
        var image = await pool.CreateImageAsync("c", "v", 20 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(20 * ChunkSize, 10);
        await image.WriteAsync(0, data);
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(3, dryRun: false);
        ulong cursor = await spy.Saved;
        await engine.DisposeAsync(); // a clean stop mid-action: the job stays in progress

        spy.Reset();
        var (again, reopened, ras) = await ReopenAsync(devs, spy);
        Assert.AreEqual(1, ras.WithId(RasIds.PoolUpgradeResumed).Count());
        Assert.AreEqual(cursor, reopened.Meta.UpgradeJob!.Cursor, "the job resumes at the cursor it saved");
        await spy.Saved; // the resumed run moved its first chunk and is held by the throttle again
        await reopened.SetPropertyAsync("migrate_rate", "0");
        await reopened.WaitForUpgradeAsync(TestContext.CancellationToken);

        var status = reopened.GetUpgradeStatus();
        Assert.AreEqual("completed", status.Status, status.Reason);
        Assert.AreEqual(19, status.ItemsDone, "the resumed run visited only the chunks after the cursor");
        Assert.AreEqual(0, MigrationKit.Misplaced(reopened, RotatedPlacement.Instance));
        CollectionAssert.AreEqual(data, await ReadAllAsync(reopened.OpenImage("c", "v"), data.Length));
        await again.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task NoSpace_TargetsFillMidMove_JobPausesWithRasEventAndResumesWhenSpaceIsFreed()
    {
        var devs = MigrationKit.FileTargets(_dir, 2);
        var spy = new CursorSpyAction(MigrationKit.RotateAction(new MigrationOptions { CursorEvery = 1 }));
        var (engine, pool, ras) = await CreateAsync(devs, spy, rf: 1, bytesPerTarget: 1L << 20);
        var image = await pool.CreateImageAsync("c", "v", 20 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(20 * ChunkSize, 11);
        await image.WriteAsync(0, data);
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(3, dryRun: false);
        await spy.Saved;

        // A client fills both targets while the loop is held by its throttle.
        var filler = await pool.CreateImageAsync("c", "filler", 256 * ChunkSize, ChunkSize);
        var full = new HashSet<int>();
        for (long c = 0; c < 256 && full.Count < 2; c++)
        {
            int t = PlacementV1.Instance.Target(filler.Id, c, 0, 2);
            if (full.Contains(t))
                continue;
            try
            {
                await filler.WriteAsync(c * ChunkSize, TestDevices.Pattern(ChunkSize, (int)c));
            }
            catch (NoSpaceException)
            {
                full.Add(t);
            }
        }
        Assert.AreEqual(2, full.Count, "both targets are full");
        await pool.SetPropertyAsync("migrate_rate", "0");

        var paused = await ras.First(RasIds.MigrationPaused);
        StringAssert.Contains(paused.Message, "resumes by itself");
        StringAssert.Contains(pool.GetUpgradeStatus().CurrentAction, "paused");
        Assert.IsTrue(pool.GetUpgradeStatus().Running);
        await pool.RemoveImageAsync("c", "filler");
        await pool.WaitForUpgradeAsync(TestContext.CancellationToken);

        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status, pool.GetUpgradeStatus().Reason);
        Assert.AreEqual(1, ras.WithId(RasIds.MigrationResumed).Count());
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
        CollectionAssert.AreEqual(data, await ReadAllAsync(image, data.Length));
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    public async Task DeviceError_DestinationWritesFail_ChunksKeepTheirLocationJobFailsThenRetrySucceeds()
    {
        var devs = MigrationKit.FileTargets(_dir, 2, "16M", direct: false);
        var (engine, pool, ras) = await CreateAsync(devs, MigrationKit.RotateAction(), rf: 1, bytesPerTarget: 4L << 20);
        var image = await pool.CreateImageAsync("c", "v", 24 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(24 * ChunkSize, 12);
        await image.WriteAsync(0, data);
        int toTarget1 = 0;
        lock (pool.Meta.Sync)
            toTarget1 = pool.Meta.Images[image.Id].Chunks.Values.Count(m => m.Replicas[0].Target == 0);
        Assert.IsTrue(toTarget1 > 0);
        var shard = pool.Shards[1];
        long dataStart = shard.Base + shard.Header.DataOffset;
        devs[1].SetFaults($"fail_every=1&fail_ops=write&fail_range={dataStart}-{dataStart + shard.Header.DataLength}");

        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();

        var status = pool.GetUpgradeStatus();
        Assert.AreEqual("failed", status.Status);
        StringAssert.Contains(status.Reason, $"{toTarget1} chunk(s) could not be moved and kept their location");
        Assert.AreEqual(toTarget1, ras.WithId(RasIds.MigrationChunkLeft).Count());
        Assert.AreEqual(toTarget1, MigrationKit.Misplaced(pool, RotatedPlacement.Instance), "only the chunks bound for the failing target stayed");
        Assert.AreEqual(2u, pool.LayoutVersion);
        CollectionAssert.AreEqual(data, await ReadAllAsync(image, data.Length));
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool), "the failed copies' extents were given back");

        devs[1].SetFaults("");
        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
        CollectionAssert.AreEqual(data, await ReadAllAsync(image, data.Length));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    public async Task DeviceError_SourceReadsFailWithRf2_OtherReplicaServesAndEveryChunkMoves()
    {
        var devs = MigrationKit.FileTargets(_dir, 3, "16M", direct: false);
        var (engine, pool, ras) = await CreateAsync(devs, MigrationKit.RotateAction(), rf: 2, bytesPerTarget: 4L << 20);
        var image = await pool.CreateImageAsync("c", "v", 24 * ChunkSize, ChunkSize);
        var data = TestDevices.Pattern(24 * ChunkSize, 13);
        await image.WriteAsync(0, data);
        var shard = pool.Shards[0];
        long dataStart = shard.Base + shard.Header.DataOffset;
        devs[0].SetFaults($"fail_every=1&fail_ops=read&fail_range={dataStart}-{dataStart + shard.Header.DataLength}");

        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();

        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status, pool.GetUpgradeStatus().Reason);
        Assert.IsTrue(ras.WithId(RasIds.DataReadFailed).Any(), "the failing source was read and reported");
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
        devs[0].SetFaults("");
        CollectionAssert.AreEqual(data, await ReadAllAsync(image, data.Length));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    public async Task Meter_JobOfAnOpenPool_ReportsItemsAndBytesDoneOfTotal()
    {
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(TestDevices.Memory(2), new StorageEngineOptions { Ras = ras, Catalog = MigrationKit.Catalog(MigrationKit.RotateAction()) });
        var pool = await engine.CreatePoolAsync("tank", 8L << 20, 1, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 12 * ChunkSize, ChunkSize);
        await image.WriteAsync(0, TestDevices.Pattern(12 * ChunkSize, 17));
        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();

        using var metrics = new Strata.Engine.Control.StrataMetrics(() => (0, 0, 0), () => 1);
        metrics.ObserveUpgrades(() => engine.OpenPools().Select(p => p.GetUpgradeStatus()).Where(s => s.JobId != null).ToList());
        var seen = new Dictionary<string, double>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (inst, l) =>
        {
            if (inst.Meter == metrics.Meter && inst.Name.StartsWith("strata.upgrade.", StringComparison.Ordinal))
                l.EnableMeasurementEvents(inst);
        };
        listener.SetMeasurementEventCallback<long>((inst, v, tags, _) => seen[$"{inst.Name}{{{tags[0].Value}}}"] = v);
        listener.SetMeasurementEventCallback<double>((inst, v, tags, _) => seen[$"{inst.Name}{{{tags[0].Value}}}"] = v);
        listener.Start();
        listener.RecordObservableInstruments();

        Assert.AreEqual(12, seen["strata.upgrade.items.done{tank}"]);
        Assert.AreEqual(12, seen["strata.upgrade.items.total{tank}"]);
        Assert.AreEqual(12 * ChunkSize, seen["strata.upgrade.bytes.done{tank}"]);
        Assert.AreEqual(12 * ChunkSize, seen["strata.upgrade.bytes.total{tank}"]);
        Assert.IsGreaterThan(0, seen["strata.upgrade.rate{tank}"]);
        Assert.AreEqual(0, seen["strata.upgrade.eta{tank}"]);
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task MigrateRate_BadValuesRefusedWithOneLine_SizesStoredAsBytesPerSecond()
    {
        var engine = await StorageEngine.FormatAsync(TestDevices.Memory(1));
        var pool = await engine.CreatePoolAsync("tank", 4L << 20, 1, TestDevices.SmallPool);
        Assert.AreEqual("auto", pool.GetProperty("migrate_rate"), "auto by default");
        foreach (var (value, says) in new[] { ("-5", "is negative"), ("fast", "is not a size"), ("1e6", "is not a size"), ("10 M", "is not a size"), ("", "is not a size") })
        {
            var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("migrate_rate", value), value);
            StringAssert.Contains(e.Message, says);
            Assert.IsFalse(e.Message.Contains('\n'), e.Message);
        }
        Assert.AreEqual("auto", pool.GetProperty("migrate_rate"), "a refused value changes nothing");
        await pool.SetPropertyAsync("migrate_rate", "100M");
        Assert.AreEqual("104857600", pool.GetProperty("migrate_rate"));
        await pool.SetPropertyAsync("migrate_rate", "1.5K");
        Assert.AreEqual("1536", pool.GetProperty("migrate_rate"));
        await pool.SetPropertyAsync("migrate_rate", " AUTO ");
        Assert.AreEqual("auto", pool.GetProperty("migrate_rate"));
        Assert.AreEqual(PoolPropertySource.Default, pool.GetPropertyValues().Single(p => p.Name == "migrate_rate").Source);
        await engine.DisposeAsync();
    }

    /// <summary>
    /// `auto`, the default: 128 MiB/s from a client's I/O on the pool until 200 ms after its last one,
    /// unthrottled before and after; a set value applies whatever the clients do.
    /// </summary>
    [TestMethod]
    public async Task MigrateRate_Auto_ThrottledWhileClientsDoIoUnthrottledOnceIdle()
    {
        var engine = await StorageEngine.FormatAsync(TestDevices.Memory(1));
        var pool = await engine.CreatePoolAsync("tank", 4L << 20, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 64 * 1024, 4096);
        long tick = System.Diagnostics.Stopwatch.Frequency;
        Assert.AreEqual(0L, pool.MigrateRateAt(System.Diagnostics.Stopwatch.GetTimestamp()), "no client has done I/O: unthrottled");

        foreach (Func<Task> io in new Func<Task>[] { () => image.WriteAsync(0, new byte[4096]).AsTask(), () => image.ReadAsync(0, new byte[4096]).AsTask(), () => image.TrimAsync(0, 4096) })
        {
            long before = System.Diagnostics.Stopwatch.GetTimestamp();
            await io();
            long after = System.Diagnostics.Stopwatch.GetTimestamp();
            Assert.AreEqual(Engine.Migration.MigrateRate.AutoBytes, pool.MigrateRateAt(after), "a client did I/O just now");
            Assert.AreEqual(Engine.Migration.MigrateRate.AutoBytes, pool.MigrateRateAt(before + tick / 20), "50 ms after it");
            Assert.AreEqual(0L, pool.MigrateRateAt(after + tick / 4), "250 ms after the client's last I/O: idle, unthrottled");
        }

        // An image migration's copy also counts its source pool's clients (their reads stay on the source).
        var other = await engine.CreatePoolAsync("other", 4L << 20, 1, TestDevices.SmallPool);
        await other.CreateContainerAsync("c");
        var elsewhere = await other.CreateImageAsync("c", "v", 64 * 1024, 4096);
        await elsewhere.ReadAsync(0, new byte[4096]);
        long read = System.Diagnostics.Stopwatch.GetTimestamp();
        Assert.AreEqual(Engine.Migration.MigrateRate.AutoBytes, pool.MigrateRateAt(read, other), "a client of the source pool did I/O just now");
        Assert.AreEqual(0L, pool.MigrateRateAt(read + tick / 4 + tick, other), "idle on both pools");
        Assert.AreEqual(Engine.Migration.MigrateRate.AutoBytes, other.MigrateRateAt(read), "the other pool's own jobs");
        // An image copy's `auto` is half the rate: its clients' writes are mirrored.
        Assert.AreEqual(Engine.Migration.MigrateRate.AutoImageCopyBytes, pool.MigrateRateAt(read, other, Engine.Migration.MigrateRate.AutoImageCopyBytes));
        Assert.AreEqual(0L, pool.MigrateRateAt(read + tick / 4 + tick, other, Engine.Migration.MigrateRate.AutoImageCopyBytes), "idle: unthrottled");

        await pool.SetPropertyAsync("migrate_rate", "0");
        await image.WriteAsync(0, new byte[4096]);
        Assert.AreEqual(0L, pool.MigrateRateAt(System.Diagnostics.Stopwatch.GetTimestamp()), "0 set: unthrottled even with clients");
        await pool.SetPropertyAsync("migrate_rate", "10M");
        Assert.AreEqual(10L << 20, pool.MigrateRateAt(System.Diagnostics.Stopwatch.GetTimestamp() + 10 * tick), "a set rate applies with clients idle too");
        await engine.DisposeAsync();
    }

    [TestMethod]
    [DoNotParallelize]
    public async Task Move_OneMiBChunks_ManagedAllocationPerChunkIsMetadataOnly()
    {
        const int cs = 1 << 20;
        // GC.GetTotalAllocatedBytes counts every thread of the test host, so whatever an earlier test left running
        // lands in one sample; three upgrades on fresh pools are measured and the least is judged. A chunk copied
        // through a managed array would cost its 1 MiB in every one of them.
        long least = long.MaxValue;
        for (int run = 0; run < 3; run++)
        {
            string dir = Path.Combine(_dir, $"run{run}");
            Directory.CreateDirectory(dir);
            var devs = MigrationKit.FileTargets(dir, 2, "96M");
            var (engine, pool, _) = await CreateAsync(devs, MigrationKit.RotateAction(), rf: 1, bytesPerTarget: 40L << 20);
            var image = await pool.CreateImageAsync("c", "v", 32L * cs, cs);
            await image.WriteAsync(0, TestDevices.Pattern(32 * cs, 14));

            long before = GC.GetTotalAllocatedBytes(precise: true);
            await pool.UpgradeAsync(3, dryRun: false);
            await pool.WaitForUpgradeAsync();
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;

            Assert.AreEqual("completed", pool.GetUpgradeStatus().Status);
            Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance));
            TestContext.WriteLine($"managed allocation: {allocated} bytes for 32 chunks of 1 MiB moved ({allocated / 32} bytes per chunk, the job's own records included)");
            least = Math.Min(least, allocated / 32);
            await engine.DisposeAsync();
            foreach (var d in devs)
                d.Dispose();
        }
        // Measured: 6.8 KiB per chunk alone over 256 chunks, 10-17 KiB (least of three) in a batch after the migration
        // and crash tests, cause not isolated (the samples name the loop's own boxes and closures). 32 KiB keeps the margin of a
        // batch run and still catches a managed copy of the chunk 32 times over.
        Assert.IsLessThan(cs / 32, least, $"{least} bytes allocated per 1 MiB chunk moved, the least of three upgrades");
    }
}
