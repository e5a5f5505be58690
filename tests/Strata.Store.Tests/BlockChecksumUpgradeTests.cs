using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// The layout-3 action (block_checksums, docs/format.md "Per-block checksums"): every chunk above
/// 4 KiB is read, checked against its old per-chunk CRC and rewritten with its block table, online,
/// through the migration loop; client writes meanwhile write the table form themselves.
/// </summary>
[TestClass]
public sealed class BlockChecksumUpgradeTests
{
    private const int KiB = 1024, MiB = 1024 * 1024;

    /// <summary>Chunks above 4 KiB still without a block table.</summary>
    internal static int WithoutTable(Pool pool)
    {
        lock (pool.Meta.Sync)
            return pool.Meta.Images.Values.Where(i => ChunkChecksum.TakesTable(i.ChunkSize)).Sum(i => i.Chunks.Values.Count(m => !m.Blocks));
    }

    /// <summary>Bytes the chunk maps refer to on all targets, each extent with its table where it has one.</summary>
    private static long MappedExtentBytes(Pool pool)
    {
        lock (pool.Meta.Sync)
            return pool.Meta.Images.Values.Sum(i => i.Chunks.Values.Sum(m => (long)m.Replicas.Length * m.ExtentLength(i.ChunkSize)));
    }

    private static long Used(Pool pool) => pool.Query().Targets.Sum(t => t.UsedBytes);

    private static async Task<byte[]> ReadAllAsync(Pool pool, string image)
    {
        var img = pool.OpenImage("c", image);
        var b = new byte[img.Size];
        await img.ReadAsync(0, b);
        return b;
    }

    /// <summary>A layout-2 pool with image c/v of two 64 KiB chunks, the first written with <c>Pattern(64 KiB, seed)</c>, the second a hole.</summary>
    private static async Task<(Pool Pool, Image Image, byte[] First)> HalfWrittenLayout2Async(int seed)
    {
        var (engine, _) = await TestDevices.FormatAsync(TestDevices.Memory(1));
        var pool = await engine.CreatePoolAsync("tank", 8L * MiB, 1, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 128 * KiB, 64 * KiB);
        var first = TestDevices.Pattern(64 * KiB, seed);
        await img.WriteAsync(0, first);
        return (pool, img, first);
    }

    [TestMethod]
    public async Task Upgrade2To3_ConcurrentClientWrites_EveryChunkGetsItsTableAndNoWriteIsLost()
    {
        var devs = TestDevices.Memory(3);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 3 * 10L * MiB, 2, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var sizes = new Dictionary<string, (int Chunk, int Size)> { ["a"] = (16 * KiB, MiB), ["b"] = (64 * KiB, MiB), ["s"] = (4 * KiB, 128 * KiB) };
        var model = new Dictionary<string, byte[]>();
        foreach (var (name, (cs, size)) in sizes)
        {
            var img = await pool.CreateImageAsync("c", name, size, cs);
            model[name] = TestDevices.Pattern(size, name[0]);
            await img.WriteAsync(0, model[name]);
        }
        Assert.AreEqual(MiB / (16 * KiB) + MiB / (64 * KiB), WithoutTable(pool), "at layout 2 no chunk has a table");
        // Slow enough that the writers below overlap the scan for a while.
        await pool.SetPropertyAsync("migrate_rate", "4M");

        await pool.UpgradeAsync(3, dryRun: false);
        var done = pool.WaitForUpgradeAsync();
        int duringJob = 0;
        async Task WriterAsync(int w)
        {
            var rng = new Random(w);
            var names = sizes.Keys.Order().ToArray();
            while (!done.IsCompleted)
            {
                string name = names[rng.Next(names.Length)];
                var data = model[name];
                // Each writer owns one quarter of every image, so the model is exact.
                int quarter = data.Length / 4, len = rng.Next(1, Math.Min(quarter, 40 * KiB));
                int off = w * quarter + rng.Next(0, quarter - len + 1);
                var bytes = TestDevices.Pattern(len, rng.Next());
                await pool.OpenImage("c", name).WriteAsync(off, bytes, durable: rng.Next(2) == 0);
                lock (model)
                    bytes.CopyTo(data, off);
                if (pool.GetProperty("upgrade_status") == "in progress")
                    Interlocked.Increment(ref duringJob);
            }
        }
        await Task.WhenAll(Enumerable.Range(0, 4).Select(WriterAsync));
        await done;
        // Writeback writes free what they superseded once a flush made them durable.
        await pool.OpenImage("c", "a").FlushAsync();

        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.IsGreaterThan(0, duringJob, "client writes completed while the action ran");
        Assert.AreEqual(3u, pool.LayoutVersion);
        Assert.AreEqual(LayoutCatalog.Default.Find("block_checksums")!.Mask, pool.Query().Incompat & LayoutCatalog.Default.Find("block_checksums")!.Mask);
        Assert.AreEqual(0, WithoutTable(pool), "every chunk above 4 KiB has its table");
        Assert.AreEqual(MappedExtentBytes(pool), Used(pool), "no extent leaked or freed twice");
        foreach (var name in sizes.Keys)
            CollectionAssert.AreEqual(model[name], await ReadAllAsync(pool, name), name);
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));

        await engine.DisposeAsync();
        var (again, _) = await TestDevices.OpenAsync(devs);
        var p = await again.OpenPoolAsync("tank");
        Assert.AreEqual(0, WithoutTable(p));
        foreach (var name in sizes.Keys)
            CollectionAssert.AreEqual(model[name], await ReadAllAsync(p, name), name);
    }

    /// <summary>
    /// Seeded crashes inside the action while a client writes: CI runs 500 seeds, STRATA_SOAK_RUNS=N
    /// more, STRATA_CRASH_SEED=S starts at S. Each run upgrades a layout-2 pool (rf 1 or 2, images of
    /// 4, 8 and 16 KiB chunks) to 3, cuts the power at a random device command, brings the disks back
    /// with a random subset of the unflushed writes, and checks the reopened pool: the job resumes by
    /// itself and completes, every chunk has its table, no acknowledged write is lost, no wrong bytes.
    /// </summary>
    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task Upgrade2To3_CrashAtRandomPointsWithClientWrites_ResumesCompletesNothingLost()
    {
        var (seeds, runs, first) = CrashSeeds.FromEnvironment(500);
        int resumed = 0;
        CrashSeeds.AssertNone(await CrashSeeds.FirstFailureAsync(seeds, 2, async seed =>
        {
            if (await CrashRunAsync(seed))
                Interlocked.Increment(ref resumed);
        }));
        Console.WriteLine($"{runs} crash runs inside the layout-3 action from seed {first}: {resumed} resumed the job after the crash");
        if (runs >= 100)
            Assert.IsGreaterThan(runs / 4, resumed, "crashes must land inside the action and be resumed");
    }

    /// <summary>One seeded run; true when the reopened pool resumed a job the crash interrupted.</summary>
    private static async Task<bool> CrashRunAsync(int seed)
    {
        // Consecutive seeds give Random correlated first draws: spread them first (splitmix64).
        var rng = new Random((int)(PlacementV1.Hash(0, seed) & int.MaxValue));
        var options = new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan };
        var power = new CrashSwitch();
        var disks = Enumerable.Range(0, 2).Select(i => new CrashDisk($"crash{i}", 4L * MiB, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks, options);
        var model = new CrashModel { Rf = rng.Next(2) == 0 ? "1" : "2" };
        var pool = await engine.CreatePoolAsync("p", 2L * MiB, int.Parse(model.Rf), TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        foreach (var (name, cs) in new[] { ("a", 16 * KiB), ("b", 8 * KiB), ("s", 4 * KiB) })
        {
            int size = rng.Next(cs, 128 * KiB);
            var data = TestDevices.Pattern(size, rng.Next());
            model.Images[name] = new CrashModel.Img { Data = data, ChunkSize = cs };
            var img = await pool.CreateImageAsync("c", name, size, cs);
            await img.WriteAsync(0, data);
        }
        string context = $"seed {seed}";
        // A whole run (the job and the client writes during it) takes 80-180 device commands.
        power.Reset(rng.Next(1, 100));
        CrashModel before = model, after = model;
        try
        {
            await pool.UpgradeAsync(3, dryRun: false);
            var job = pool.WaitForUpgradeAsync();
            var names = model.Images.Keys.Order().ToArray();
            while (!job.IsCompleted && !power.Crashed)
            {
                string name = names[rng.Next(names.Length)];
                var next = model.Clone();
                var img = next.Images[name];
                int len = rng.Next(1, Math.Min(img.Data.Length, 20 * KiB) + 1);
                int off = rng.Next(0, img.Data.Length - len + 1);
                var bytes = TestDevices.Pattern(len, rng.Next());
                bytes.CopyTo(img.Data, off);
                after = next;
                await pool.OpenImage("c", name).WriteAsync(off, bytes);
                model = before = next;
            }
            await job;
        }
        catch (Exception) when (power.Crashed)
        {
        }
        if (!power.Crashed && pool.GetProperty("upgrade_status") != "completed")
            throw new AssertFailedException($"{context}: the job ended {pool.GetProperty("upgrade_status")} without a crash");
        power.CutPower();
        var next2 = new CrashSwitch();
        var back = disks.Select(d => d.AfterCrash(rng, next2)).ToArray();
        var ras = new InMemoryRasSink();
        var reopened = await StorageEngine.OpenAsync(back, options with { Ras = ras });
        var p = await reopened.OpenPoolAsync("p");
        await p.WaitForUpgradeAsync();
        bool wasResumed = ras.WithId(RasIds.PoolUpgradeResumed).Any();
        if (p.GetProperty("upgrade_status") == "not started")
        {
            // The crash came before the job's first record was durable: nothing happened; start it now.
            await p.UpgradeAsync(3, dryRun: false);
            await p.WaitForUpgradeAsync();
        }
        if (p.GetProperty("upgrade_status") != "completed" || p.LayoutVersion != 3)
            throw new AssertFailedException($"{context}: after reopening, the job is {p.GetProperty("upgrade_status")} at layout {p.LayoutVersion}");
        if (WithoutTable(p) != 0)
            throw new AssertFailedException($"{context}: {WithoutTable(p)} chunk(s) without a table after the job completed");
        if (MappedExtentBytes(p) != Used(p))
            throw new AssertFailedException($"{context}: {Used(p)} bytes in use, the maps refer to {MappedExtentBytes(p)}");
        await CrashModel.VerifyAsync(p, before, after, context);
        var bad = ras.Events.FirstOrDefault(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable);
        if (bad != null)
            throw new AssertFailedException($"{context}: unexpected RAS event {bad.Id}: {bad.Message}");
        await reopened.DisposeAsync();
        return wasResumed;
    }

    /// <summary>
    /// A client write that looks at the layout before the job's layout switch and at the job after its end
    /// (descheduled across both rounds, as seed 66 of the crash test was in CI) still writes the table: the
    /// two are judged as one state. The write enters the pool after the action's drain (which would wait
    /// for it otherwise) while the job is held at its mapped chunk, and goes to a hole, which the job never
    /// holds, so the rest of the job runs between its two looks.
    /// </summary>
    [TestMethod]
    public async Task Upgrade2To3_WriteJudgingItsFormAcrossTheJobsEnd_WritesTheTable()
    {
        var (pool, img, first) = await HalfWrittenLayout2Async(1);
        var looked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var go = new ManualResetEventSlim();
        var second = TestDevices.Pattern(64 * KiB, 2);
        Task write;
        // The job's pass waits for chunk 0 until the write has looked at the layout.
        var chunk0 = await pool.Mover.LockAsync(img.Id, 0);
        try
        {
            var closing = pool.Gate.Closing;
            await pool.UpgradeAsync(3, dryRun: false);
            await closing; // the action's drain began: the write below enters after it
            pool.BetweenLayoutAndJob = () =>
            {
                pool.BetweenLayoutAndJob = null;
                looked.SetResult();
                go.Wait();
            };
            write = Task.Run(async () => await img.WriteAsync(64 * KiB, second));
            await looked.Task; // the writer saw layout 2 and has not looked at the job yet
            chunk0.Dispose();
            await pool.WaitForUpgradeAsync();
            Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
            Assert.AreEqual(3u, pool.LayoutVersion);
        }
        finally
        {
            chunk0.Dispose();
            go.Set();
        }
        await write;
        Assert.AreEqual(0, WithoutTable(pool), "a write after the job's end takes the table form");
        CollectionAssert.AreEqual(first.Concat(second).ToArray(), await ReadAllAsync(pool, "v"));
    }

    /// <summary>
    /// A client write to a chunk not mapped yet that judged its form before the job began (no table) and is
    /// still in flight when the action starts: the action's passes skip unmapped chunks, so without a drain
    /// the job completed and the write then mapped the chunk without a table. The action first closes the
    /// pool's gate once, so the job waits for the write (the gate starts closing while it is held).
    /// </summary>
    [TestMethod]
    public async Task Upgrade2To3_WriteJudgedBeforeTheJobBegan_ActionWaitsForIt_ChunkGetsItsTable()
    {
        var (pool, img, first) = await HalfWrittenLayout2Async(3);
        var judged = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var go = new ManualResetEventSlim();
        pool.FormJudged = yes =>
        {
            pool.FormJudged = null;
            judged.SetResult(yes);
            go.Wait();
        };
        var second = TestDevices.Pattern(64 * KiB, 4);
        var write = Task.Run(async () => await img.WriteAsync(64 * KiB, second));
        Task job;
        try
        {
            Assert.IsFalse(await judged.Task, "before the job, a layout-2 write takes no table");
            var closing = pool.Gate.Closing;
            await pool.UpgradeAsync(3, dryRun: false);
            job = pool.WaitForUpgradeAsync();
            Assert.AreSame(closing, await Task.WhenAny(job, closing), "the action drains the writes in flight before its passes");
        }
        finally
        {
            go.Set();
        }
        await write;
        await job;
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(0, WithoutTable(pool), "the write that judged before the job was converted by the passes after it");
        CollectionAssert.AreEqual(first.Concat(second).ToArray(), await ReadAllAsync(pool, "v"));
    }

    [TestMethod]
    public async Task Upgrade_OneReplicaCorruptRf2_RepairedFromTheOtherAndConverted()
    {
        var devs = TestDevices.Memory(2);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 2 * 8L * MiB, 2, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 256 * KiB, 32 * KiB);
        var data = TestDevices.Pattern(256 * KiB, 8);
        await img.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, img, 3);
        TestHelpers.FlipByte(where[0].Device, where[0].Offset + 5000);

        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        var mismatch = ras.WithId(RasIds.DataChecksumMismatch).Single();
        Assert.AreEqual((where[0].Target, 3L * 32 * KiB), (mismatch.Target, mismatch.Offset));
        Assert.AreEqual(1, ras.WithId(RasIds.ReplicaRepaired).Count());
        Assert.AreEqual(0, WithoutTable(pool));
        CollectionAssert.AreEqual(data, await ReadAllAsync(pool, "v"));
    }

    [TestMethod]
    public async Task Upgrade_OnlyCopyCorruptRf1_JobFailsNamingItChunkLeftAsItIsOthersConverted()
    {
        var devs = TestDevices.Memory(1);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 8L * MiB, 1, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 256 * KiB, 32 * KiB);
        var data = TestDevices.Pattern(256 * KiB, 9);
        await img.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, img, 2).Single();
        TestHelpers.FlipByte(where.Device, where.Offset + 77);

        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        StringAssert.StartsWith(pool.GetProperty("upgrade_status"), "failed: 1 chunk(s)");
        Assert.AreEqual(2u, pool.LayoutVersion, "the layout is not switched while a chunk is left without its table");
        Assert.AreEqual(1, ras.WithId(RasIds.PoolUpgradeFailed).Count());
        var lost = ras.WithId(RasIds.DataUnrecoverable).Single();
        Assert.AreEqual(2L * 32 * KiB, lost.Offset);
        Assert.AreEqual(1, WithoutTable(pool), "only the unreadable chunk keeps its old form");
        await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.ReadAsync(2 * 32 * KiB, new byte[10]).AsTask());
        var rest = new byte[64 * KiB];
        await img.ReadAsync(0, rest);
        CollectionAssert.AreEqual(data.AsSpan(0, 64 * KiB).ToArray(), rest);

        // Once the bad chunk is overwritten (with the table form), a retry completes.
        await img.WriteAsync(2 * 32 * KiB, new byte[32 * KiB]);
        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(3u, pool.LayoutVersion);
    }

    /// <summary>
    /// A placement move (the loop's PlacementMove, as placement_v2 uses it) of a layout-3 pool: a
    /// chunk with a block table moves with its table, so it still verifies block by block.
    /// </summary>
    [TestMethod]
    public async Task PlacementMove_ChunksWithBlockTables_MovedWithTheirTablesDataIntact()
    {
        var move = MigrationKit.RotateAction();
        var cat = new LayoutCatalog(
            [.. LayoutCatalog.Default.Versions.Take(3), new LayoutVersion(4, "test move", [new LayoutFeature("test_move", 4, FeatureClass.Incompat, 5, ActionKind.DataMovement, "moves every chunk one target on", move)], Supported: true)],
            LayoutCatalog.Default.Releases);
        var devs = TestDevices.Memory(3);
        var (engine, ras) = await TestDevices.FormatAsync(devs, cat);
        var pool = await engine.CreatePoolAsync("tank", 3 * 8L * MiB, 2, TestDevices.SmallPool with { LayoutVersion = 3 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 512 * KiB, 32 * KiB);
        var data = TestDevices.Pattern(512 * KiB, 12);
        await img.WriteAsync(0, data);
        Assert.AreEqual(0, WithoutTable(pool));

        await pool.UpgradeAsync(4, dryRun: false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, RotatedPlacement.Instance), "every chunk moved");
        Assert.AreEqual(0, WithoutTable(pool), "every chunk kept its table");
        Assert.AreEqual(MappedExtentBytes(pool), Used(pool));
        CollectionAssert.AreEqual(data, await ReadAllAsync(pool, "v"));
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable or RasIds.MigrationChunkLeft), string.Join("; ", ras.Events.Select(e => e.Message)));
        var back = new byte[4096];
        await img.ReadAsync(100 * KiB, back);
        CollectionAssert.AreEqual(data.AsSpan(100 * KiB, 4096).ToArray(), back);
    }

    /// <summary>
    /// The action run a random number of times in a row, each run but the last stopped after a
    /// random number of saved cursors (cursors saved every two chunks), each from a cursor picked at
    /// random among those saved so far (0 included): the result must not depend on it.
    /// </summary>
    [TestMethod]
    public async Task Idempotency_ActionRepeatedFromRandomSavedCursors_SameResult()
    {
        string? reference = null;
        int stopped = 0;
        for (int seed = 1; seed <= 10; seed++)
        {
            var rng = new Random((int)(PlacementV1.Hash(1, seed) & int.MaxValue));
            var action = new ReplayCursorsAction(new Engine.Migration.MigrationAction(_ => Engine.Migration.BlockTableRewrite.Instance, new Engine.Migration.MigrationOptions { CursorEvery = 2 }),
                rng, runs: seed == 1 ? 1 : rng.Next(2, 6));
            var cat = new LayoutCatalog(
                LayoutCatalog.Default.Versions.Select(v => v.Version != 3 ? v : v with { Features = [v.Features.Single() with { Action = action }] }).ToList(),
                LayoutCatalog.Default.Releases);
            var devs = TestDevices.Memory(2);
            var (engine, ras) = await TestDevices.FormatAsync(devs, cat);
            var pool = await engine.CreatePoolAsync("tank", 2 * 6L * MiB, 2, TestDevices.SmallPool with { LayoutVersion = 2 });
            await pool.CreateContainerAsync("c");
            foreach (var (name, cs, size) in new[] { ("a", 16 * KiB, 300 * KiB), ("b", 64 * KiB, 256 * KiB), ("s", 4 * KiB, 64 * KiB) })
                await (await pool.CreateImageAsync("c", name, size, cs)).WriteAsync(0, TestDevices.Pattern(size, cs));
            await pool.UpgradeAsync(3, dryRun: false);
            await pool.WaitForUpgradeAsync();
            Assert.AreEqual("completed", pool.GetProperty("upgrade_status"), $"seed {seed}");
            Assert.IsTrue(seed == 1 || action.FromSavedCursor > 0, $"seed {seed}: some run started from a cursor saved mid-action");
            stopped += action.Stopped;
            var q = pool.Query();
            string result = string.Join(";", (await UpgradeTests.ImageHashesAsync(pool)).OrderBy(kv => kv.Key).Select(kv => kv.Value))
                + $"|layout {q.LayoutVersion} incompat 0x{q.Incompat:x} compat 0x{q.Compat:x}|without table {WithoutTable(pool)}|used {Used(pool)}|mapped {MappedExtentBytes(pool)}";
            reference ??= result;
            Assert.AreEqual(reference, result, $"seed {seed}");
            Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable or RasIds.MigrationChunkLeft), $"seed {seed}");
            await engine.DisposeAsync();
        }
        Assert.IsGreaterThan(3, stopped, "runs were stopped mid-action and resumed from saved cursors");
    }

    /// <summary>Runs an action several times, each from a random one of the cursors it saved so far.</summary>
    private sealed class ReplayCursorsAction(IUpgradeAction inner, Random rng, int runs) : IUpgradeAction
    {
        public int FromSavedCursor { get; private set; }

        public ActionAccess Access => inner.Access;

        public ActionEstimate Estimate(IUpgradePool pool) => inner.Estimate(pool);

        public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
        {
            var saved = new List<ulong> { 0, cursor };
            CancellationTokenSource? stop = null;
            int stopAfter = 0;
            var spy = new UpgradeContext(ctx.Pool, ctx.Feature, async c =>
            {
                await ctx.SaveCursorAsync(c);
                lock (saved)
                    saved.Add(c);
                if (--stopAfter == 0)
                    stop?.Cancel();
            }, ctx.ReportProgress, ctx.ReportState);
            for (int i = 0; i < runs; i++)
            {
                ulong from;
                lock (saved)
                    from = i == 0 ? cursor : saved[rng.Next(saved.Count)];
                if (from != 0)
                    FromSavedCursor++;
                // Every run but the last stops after a random number of saved cursors (or completes first).
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                stop = i < runs - 1 ? cts : null;
                stopAfter = rng.Next(1, 8);
                try
                {
                    await inner.RunAsync(spy, from, cts.Token);
                }
                catch (OperationCanceledException) when (cts.IsCancellationRequested && !ct.IsCancellationRequested)
                {
                    Stopped++;
                }
            }
        }

        public int Stopped { get; private set; }
    }
}
