using System.Security.Cryptography;
using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Store.Tests;

/// <summary>Catalogs the tests build: the default one with test versions after 2, and wrappers around real actions.</summary>
internal static class TestCatalogs
{
    /// <summary>The default catalog's versions 1 and 2, then a version 3 with the given feature (supported).</summary>
    public static LayoutCatalog WithVersion3(LayoutFeature feature) => new(
        [LayoutCatalog.Default[1], LayoutCatalog.Default[2], new LayoutVersion(3, "test version", [feature], Supported: true)],
        LayoutCatalog.Default.Releases);

    /// <summary>The default catalog with every action run <paramref name="times"/> times in a row.</summary>
    public static LayoutCatalog Repeating(Func<int> times) => new(
        LayoutCatalog.Default.Versions.Select(v => v with
        {
            Features = v.Features.Select(f => UpgradeActionBindings.Default.For(f) is { } a ? f with { Action = new RepeatAction(a, times) } : f).ToList(),
        }).ToList(),
        LayoutCatalog.Default.Releases);

    private sealed class RepeatAction(IUpgradeAction inner, Func<int> times) : IUpgradeAction
    {
        public ActionAccess Access => inner.Access;

        public ActionEstimate Estimate(IUpgradePool pool) => inner.Estimate(pool);

        public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
        {
            int n = times();
            for (int i = 0; i < n; i++)
                await inner.RunAsync(ctx, cursor, ct);
        }
    }
}

/// <summary>
/// A data-scan action of the shape versions 3 and 4 will have: online, one chunk at a time,
/// reading and verifying every chunk, saving its cursor every few chunks (so a crash resumes
/// mid-action), and recording the chunks it visited as a pool property (idempotently: the
/// same value whatever the number of runs).
/// </summary>
internal sealed class ScanChunksAction(int cursorEvery = 3) : IUpgradeAction
{
    public ActionAccess Access => ActionAccess.Online;

    // Reaches the images through the Pool itself: the layout's own data actions will get what
    // they need as members of IUpgradePool; this test action stands in for them.
    public ActionEstimate Estimate(IUpgradePool upgrading)
    {
        var pool = (Pool)upgrading;
        long chunks = 0, bytes = 0;
        foreach (var c in pool.ListContainers())
            foreach (var i in pool.ListImages(c.Label))
            {
                chunks += i.MappedBytes / i.ChunkSize;
                bytes += i.MappedBytes;
            }
        return new ActionEstimate(chunks, bytes, 0, 0);
    }

    public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        var pool = (Pool)ctx.Pool;
        var images = pool.ListContainers().SelectMany(c => pool.ListImages(c.Label).Select(i => (c.Label, i))).OrderBy(x => x.i.Id).ToList();
        ulong n = 0;
        foreach (var (cont, info) in images)
        {
            var img = pool.OpenImage(cont, info.Label);
            var buf = new byte[info.ChunkSize];
            for (long off = 0; off < info.Size; off += info.ChunkSize)
            {
                if (n++ < cursor)
                    continue;
                int len = (int)Math.Min(info.ChunkSize, info.Size - off);
                await img.ReadAsync(off, buf.AsMemory(0, len));
                ctx.ReportProgress(1, len);
                if (n % (ulong)cursorEvery == 0)
                    await ctx.SaveCursorAsync(n);
                ct.ThrowIfCancellationRequested();
            }
        }
        ctx.Propose(new SetPoolProperty("test.scanned", n.ToString(System.Globalization.CultureInfo.InvariantCulture)));
    }
}

/// <summary>An action (exclusive unless told) that holds until released, so a test can look at the pool meanwhile.</summary>
internal sealed class GateAction(ActionAccess access = ActionAccess.Exclusive) : IUpgradeAction
{
    public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ActionAccess Access => access;

    public ActionEstimate Estimate(IUpgradePool pool) => new(1, 0, 0, 0);

    public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        Entered.TrySetResult();
        await Release.Task.WaitAsync(ct);
        ctx.Propose(new SetPoolProperty("test.exclusive", "done"));
    }
}

internal sealed class NeedsSpaceAction(long bytes) : IUpgradeAction
{
    public ActionAccess Access => ActionAccess.Online;

    public ActionEstimate Estimate(IUpgradePool pool) => new(1, 0, bytes, bytes);

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct) => Task.CompletedTask;
}

[TestClass]
public sealed class UpgradeTests
{
    public TestContext TestContext { get; set; } = null!;

    private static readonly PoolCreateOptions V1 = TestDevices.SmallPool with { LayoutVersion = 1 };

    internal static async Task<(StorageEngine Engine, Pool Pool, InMemoryRasSink Ras)> V1PoolWithDataAsync(IBlockDevice[] devs, StorageEngineOptions? options = null, uint layout = 1)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devs, (options ?? new StorageEngineOptions()) with { Ras = ras });
        var pool = await engine.CreatePoolAsync("tank", 6L * 1024 * 1024, 2, V1 with { LayoutVersion = layout });
        await pool.CreateContainerAsync("old");
        await pool.SetContainerPropertyAsync("old", "user.owner", "ops");
        var a = await pool.CreateImageAsync("old", "a", 300_000, 16384);
        await a.WriteAsync(0, TestDevices.Pattern(300_000, 1));
        var b = await pool.CreateImageAsync("old", "b", 65536, 4096);
        await b.WriteAsync(1000, TestDevices.Pattern(20_000, 2));
        return (engine, pool, ras);
    }

    /// <summary>SHA-256 of every image's bytes, by name (what "data integrity preserved" compares).</summary>
    internal static async Task<Dictionary<string, string>> ImageHashesAsync(Pool pool)
    {
        var d = new Dictionary<string, string>();
        foreach (var c in pool.ListContainers())
            foreach (var i in pool.ListImages(c.Label))
            {
                var buf = new byte[i.Size];
                await pool.OpenImage(c.Label, i.Label).ReadAsync(0, buf);
                d[$"{c.Label}/{i.Label}"] = Convert.ToHexString(SHA256.HashData(buf));
            }
        return d;
    }

    [TestMethod]
    public async Task Upgrade_1To2_DataIntactNewPropertiesWithDefaultsStatusCompleted()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, ras) = await V1PoolWithDataAsync(devs);
        var before = await ImageHashesAsync(pool);
        Assert.AreEqual("not started", pool.GetProperty("upgrade_status"));
        Assert.IsFalse(pool.GetProperties().ContainsKey("scrub"));

        var plan = await pool.UpgradeAsync(2, dryRun: false);
        Assert.AreEqual((1u, 2u), (plan.From, plan.To));
        CollectionAssert.AreEqual(new[] { "pool_props_v2", "container_compression" }, plan.Actions.Select(a => a.Feature).ToArray());
        await pool.WaitForUpgradeAsync();

        Assert.AreEqual(2u, pool.LayoutVersion);
        Assert.AreEqual("2", pool.GetProperty("layout_version"));
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual("2", pool.GetProperty("upgrade_target"));
        Assert.AreEqual("off", pool.GetProperty("scrub"));
        Assert.AreEqual("lazy", pool.GetProperty("reclaim"));
        var st = pool.GetUpgradeStatus();
        Assert.AreEqual((2, 2, 2L, 2L), (st.ActionsDone, st.ActionsTotal, st.ItemsDone, st.ItemsTotal));
        Assert.IsNotNull(st.LongestPauseMs);
        TestContext.WriteLine($"longest I/O pause: {st.LongestPauseMs:0.###} ms");
        CollectionAssert.AreEquivalent(before.ToList(), (await ImageHashesAsync(pool)).ToList());
        Assert.IsTrue(ras.WithId(RasIds.PoolUpgradeStarted).Any());
        Assert.IsTrue(ras.WithId(RasIds.PoolUpgradeCompleted).Any());

        // Durable: the headers carry layout 2 and its feature words, without bit 62.
        await engine.DisposeAsync();
        var (again, _) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(2u, again.ListPools().Single().LayoutVersion, "headers, before the pool is opened");
        var p2 = await again.OpenPoolAsync("tank");
        var q = p2.Query();
        Assert.AreEqual((2u, 0x1UL, 0x3UL), (q.LayoutVersion, q.Compat, q.Incompat));
        Assert.AreEqual("completed", p2.GetProperty("upgrade_status"));
        CollectionAssert.AreEquivalent(before.ToList(), (await ImageHashesAsync(p2)).ToList());
    }

    [TestMethod]
    public async Task DryRun_ListsActionsAndPreconditions_ChangesNothing()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, _) = await V1PoolWithDataAsync(devs);
        await engine.DisposeAsync();
        var (e2, _) = await TestDevices.OpenAsync(devs);
        pool = await e2.OpenPoolAsync("tank");
        string sha = TestHelpers.Sha256(devs);
        var plan = await pool.UpgradeAsync(null, dryRun: true);
        Assert.IsNull(plan.JobId);
        Assert.AreEqual((1u, 6u), (plan.From, plan.To), "the newest layout this engine supports");
        Assert.AreEqual(6, plan.Actions.Count);
        Assert.AreEqual("metadata_only", plan.Actions[0].Kind);
        Assert.AreEqual(2L, plan.Actions[0].Items, "scrub and reclaim");
        Assert.AreEqual(("block_checksums", "data_scan", "online"), (plan.Actions[2].Feature, plan.Actions[2].Kind, plan.Actions[2].Access));
        Assert.AreEqual(("placement_v2", "data_movement", "online"), (plan.Actions[3].Feature, plan.Actions[3].Kind, plan.Actions[3].Access));
        Assert.AreEqual(("wal_v2", "log_format", "exclusive"), (plan.Actions[4].Feature, plan.Actions[4].Kind, plan.Actions[4].Access));
        Assert.AreEqual(("deferred_writes", "metadata_only", "quiesce"), (plan.Actions[5].Feature, plan.Actions[5].Kind, plan.Actions[5].Access));
        // Image a's 19 chunks of 16 KiB on both replicas, each rewritten with its 4 KiB table; b's 4 KiB chunks stay.
        Assert.AreEqual(19L * 2 * (16384 + 4096), plan.Actions[2].BytesToMove);
        Assert.IsTrue(plan.Preconditions.All(p => p.Ok), string.Join("; ", plan.Preconditions.Select(p => p.Detail)));
        Assert.AreEqual(TestHelpers.Sha256(devs), sha);
        Assert.AreEqual(1u, pool.LayoutVersion);
        Assert.AreEqual("not started", pool.GetProperty("upgrade_status"));
    }

    [TestMethod]
    public async Task Preconditions_EachRefusedWithAClearMessage()
    {
        var devs = TestDevices.Memory(2);
        // Release strata-1.2 (layouts 1..3): layout 4 is in its catalog but not supported.
        var (_, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = LayoutCatalog.Default.Truncate(3) });

        using (pool.BeginOperation("rebuild"))
        {
            var e = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(null, false));
            Assert.AreEqual("pool 'tank' has rebuild in progress; an upgrade needs a stable pool; retry when it completes", e.Message);
        }
        using (pool.BeginOperation("extension"))
        using (pool.BeginOperation("reintegration"))
        {
            var plan = await pool.UpgradeAsync(null, dryRun: true);
            Assert.IsFalse(plan.Preconditions.Single(p => p.Name.StartsWith("no rebuild", StringComparison.Ordinal)).Ok);
        }

        await pool.SetPropertyAsync("compatibility", "strata-1.0");
        var c = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(null, false));
        StringAssert.StartsWith(c.Message, "pool 'tank' has compatibility=strata-1.0, which allows layouts up to 1; upgrading to 3 would make it unreadable to that release");
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("compatibility", "strata-9"));
        await pool.SetPropertyAsync("compatibility", "strata-1.1");
        var c3 = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(3, false));
        StringAssert.StartsWith(c3.Message, "pool 'tank' has compatibility=strata-1.1, which allows layouts up to 2; upgrading to 3 would make it unreadable to that release");

        var v4 = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(4, false));
        StringAssert.Contains(v4.Message, "layout version 4 (placement_v2) is not supported by this engine, which supports layouts 1..3");
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(9, false));
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(1, false));

        await pool.UpgradeAsync(2, false);
        await pool.WaitForUpgradeAsync();
        var again = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.UpgradeAsync(2, false));
        Assert.AreEqual("pool 'tank' is already at layout version 2; nothing to upgrade", again.Message);
        // The operation registry refuses to start an unstable operation while an upgrade runs (checked below with a slow job).
    }

    [TestMethod]
    public async Task Preconditions_AnotherUpgradeRunning_AndNotEnoughSpace_Refused()
    {
        var gate = new GateAction();
        var cat = TestCatalogs.WithVersion3(new LayoutFeature("test_exclusive", 3, FeatureClass.Incompat, 5, ActionKind.LogFormat, "test", gate));
        var devs = TestDevices.Memory(2);
        var (_, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = cat });
        await pool.UpgradeAsync(3, false);
        await gate.Entered.Task;
        var e = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(3, false));
        StringAssert.StartsWith(e.Message, "pool 'tank' is already upgrading (1 -> 3, job 1)");
        Assert.ThrowsExactly<PoolBusyException>(() => pool.BeginOperation("rebuild"));
        gate.Release.SetResult();
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual(3u, pool.LayoutVersion);

        var space = TestCatalogs.WithVersion3(new LayoutFeature("test_move", 3, FeatureClass.Incompat, 5, ActionKind.DataMovement, "test",
            new NeedsSpaceAction(1L << 40)));
        var (_, p2, _) = await V1PoolWithDataAsync(TestDevices.Memory(2), new StorageEngineOptions { Catalog = space });
        var s = await Assert.ThrowsExactlyAsync<NoSpaceException>(() => p2.UpgradeAsync(3, false));
        StringAssert.StartsWith(s.Message, "no space left in pool 'tank' for the upgrade: data movement needs 1099511627776 bytes per target");
        Assert.AreEqual(1u, p2.LayoutVersion);
    }

    [TestMethod]
    public async Task Begin_HeadersCarryBit62BeforeTheFirstActionRuns()
    {
        // An online first action may write what older software cannot read (block tables, moved
        // extents) before any checkpoint of its own: the job's begin must already have told the
        // headers, so an older release refuses the pool instead of replaying it.
        var gate = new GateAction(ActionAccess.Online);
        var cat = TestCatalogs.WithVersion3(new LayoutFeature("test_scan", 3, FeatureClass.Incompat, 5, ActionKind.DataScan, "test", gate));
        var devs = TestDevices.Memory(2);
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Catalog = cat, Ras = new InMemoryRasSink() });
        var pool = await engine.CreatePoolAsync("tank", 6L * 1024 * 1024, 2, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        await (await pool.CreateImageAsync("c", "a", 65536, 4096)).WriteAsync(0, TestDevices.Pattern(65536, 3));
        foreach (var h in await WalV2UpgradeTests.HeadersAsync(devs))
            Assert.AreEqual((2u, 0UL), (h.LayoutVersion, h.Incompat & LayoutCatalog.IncompatUpgradeInProgress), "before the job");

        await pool.UpgradeAsync(3, false);
        await gate.Entered.Task;
        foreach (var h in await WalV2UpgradeTests.HeadersAsync(devs))
            Assert.AreEqual((2u, LayoutCatalog.IncompatUpgradeInProgress), (h.LayoutVersion, h.Incompat & LayoutCatalog.IncompatUpgradeInProgress), "while the first action runs");

        gate.Release.SetResult();
        await pool.WaitForUpgradeAsync();
        foreach (var h in await WalV2UpgradeTests.HeadersAsync(devs))
            Assert.AreEqual((3u, 0UL), (h.LayoutVersion, h.Incompat & LayoutCatalog.IncompatUpgradeInProgress), "after the job");
    }

    [TestMethod]
    public async Task ExclusiveAction_IoHeldMetadataRefusedWhileItRuns_HeldIoAnsweredAfter()
    {
        var gate = new GateAction();
        var cat = TestCatalogs.WithVersion3(new LayoutFeature("test_exclusive", 3, FeatureClass.Incompat, 5, ActionKind.LogFormat, "test", gate));
        var devs = TestDevices.Memory(2);
        var (_, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = cat });
        var img = pool.OpenImage("old", "a");
        await pool.UpgradeAsync(3, false);
        await gate.Entered.Task;
        const string Refusal = "pool is upgrading (2 -> 3); retry when it completes";
        // Image I/O is held at the gate (not failed), on handles opened before and during the action.
        var held = new byte[10];
        var read = img.ReadAsync(0, held);
        var write = pool.OpenImage("old", "a").WriteAsync(100_000, TestDevices.Pattern(300_000, 1)[100_000..100_010]);
        StringAssert.EndsWith((await Assert.ThrowsExactlyAsync<PoolBusyException>(() => pool.CreateContainerAsync("during"))).Message, Refusal);
        Assert.AreEqual("in progress", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(2, pool.HeldRequests, "the read and the write wait at the gate");
        Assert.IsFalse(read.IsCompleted || write.IsCompleted, "held I/O is not answered while the action runs");
        gate.Release.SetResult();
        await pool.WaitForUpgradeAsync();
        await read;
        await write;
        CollectionAssert.AreEqual(TestDevices.Pattern(300_000, 1)[..10], held, "the held read was answered after the action");
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual("done", pool.GetProperty("test.exclusive"));
        var back = new byte[300_000];
        await pool.OpenImage("old", "a").ReadAsync(0, back);
        CollectionAssert.AreEqual(TestDevices.Pattern(300_000, 1), back);
        await img.WriteAsync(0, new byte[10]);
        await pool.CreateContainerAsync("after");
    }

    /// <summary>A 16 KiB chunk's replica: the size of the read <see cref="ExclusiveAction_WriteInsideTheGateWhenItCloses_FinishesNotRefused"/> holds.</summary>
    private const int HeldReadSize = 16384;


    /// <summary>
    /// A write that entered the pool's gate before an exclusive action closed it (here: waiting for
    /// the chunk lock of a partial write whose read of the old chunk is held in the device) finishes when it gets the lock; it is not
    /// refused with "pool is upgrading" (the closing waits for it, so refusing it would fail a
    /// client's I/O the window promises to hold).
    /// </summary>
    [TestMethod]
    public async Task ExclusiveAction_WriteInsideTheGateWhenItCloses_FinishesNotRefused()
    {
        // An online step first: the job's start (its checkpoint) is over before the writes below begin.
        var online = new GateAction(ActionAccess.Online);
        var gate = new GateAction();
        var cat = new LayoutCatalog(
            [LayoutCatalog.Default[1], LayoutCatalog.Default[2], new LayoutVersion(3, "test version",
            [
                new LayoutFeature("test_online", 3, FeatureClass.Compat, 5, ActionKind.DataScan, "test", online),
                new LayoutFeature("test_exclusive", 3, FeatureClass.Incompat, 5, ActionKind.LogFormat, "test", gate),
            ], Supported: true)],
            LayoutCatalog.Default.Releases);
        // Once armed, the next read of a whole 16 KiB chunk on either disk is held.
        var hold = new IoHold();
        var disks = new[] { "d0", "d1" }.Select(n => new HoldingDisk(n, hold, (_, op, _, length) => op == IoOpcode.Read && length == HeldReadSize)).ToArray();
        var (_, pool, _) = await V1PoolWithDataAsync(disks, new StorageEngineOptions { Catalog = cat }, layout: 2);
        var img = pool.OpenImage("old", "a");
        await pool.UpgradeAsync(3, false);
        await online.Entered.Task;
        var first = TestDevices.Pattern(4096, 7);
        var second = TestDevices.Pattern(HeldReadSize, 8);
        hold.Arm();
        // A holds chunk 0's lock while its read of the old chunk waits in the device; B has entered the gate
        // and waits for that lock (WriteAsync returns at its first incomplete await: the lock).
        var a = img.WriteAsync(0, first);
        await hold.Held.Task;
        hold.Disarm();
        var b = pool.OpenImage("old", "a").WriteAsync(0, second);
        Assert.IsFalse(b.IsCompleted, "B waits for A's chunk lock");
        online.Release.SetResult();
        // The action is closing the gate (it waits for A and B): a read issued now is held there.
        await pool.Gate.Closing;
        var held = new byte[10];
        var read = img.ReadAsync(HeldReadSize, held);
        Assert.IsFalse(read.IsCompleted, "the read waits at the closing gate");
        Assert.AreEqual(1, pool.HeldRequests, "the read waits at the closing gate");
        hold.Release.TrySetResult();
        await a;
        await b;
        await gate.Entered.Task;
        Assert.IsFalse(read.IsCompleted, "the read is held while the action runs");
        gate.Release.SetResult();
        await pool.WaitForUpgradeAsync();
        await read;
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        var back = new byte[HeldReadSize];
        await pool.OpenImage("old", "a").ReadAsync(0, back);
        CollectionAssert.AreEqual(second, back, "B, the later write, is what the chunk holds");
    }

    /// <summary>
    /// Layout 1 -> 5 in one job, through all five actions (two metadata-only, block_checksums,
    /// placement_v2, wal_v2), while four clients write 4 KiB blocks of their own into images of 4 and
    /// 16 KiB chunks on the handles they opened before the job: none is refused (wal_v2's exclusive
    /// window holds their writes), every acknowledged write reads back, before and after a reopen, and
    /// the data written before the job is unchanged.
    /// </summary>
    [TestMethod]
    public async Task Upgrade1To5_OneJobWithClientWritesRunning_EveryAcknowledgedWriteReadsBack()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, ras) = await V1PoolWithDataAsync(devs);
        var before = await ImageHashesAsync(pool);
        await pool.CreateContainerAsync("live");
        const int Size = 256 * 1024;
        var model = new[] { new byte[Size], new byte[Size] };
        await pool.CreateImageAsync("live", "small", Size, 4096);
        await pool.CreateImageAsync("live", "big", Size, 16384);
        using var stop = new CancellationTokenSource();
        long writes = 0;
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var rng = new Random(w);
            var img = new[] { pool.OpenImage("live", "small"), pool.OpenImage("live", "big") };
            while (!stop.IsCancellationRequested)
            {
                int which = rng.Next(2);
                // Writer w owns the blocks w, w + 4, w + 8, ...: no two writers race on a block.
                int block = rng.Next(0, Size / 4096 / 4) * 4 + w;
                var data = TestDevices.Pattern(4096, rng.Next());
                // Never refused: a writer that sees an error fails the test (Task.WhenAll below).
                await img[which].WriteAsync(block * 4096L, data);
                lock (model)
                    data.CopyTo(model[which], block * 4096);
                Interlocked.Increment(ref writes);
            }
        })).ToArray();
        while (Interlocked.Read(ref writes) < 50)
            await Task.Yield();
        var plan = await pool.UpgradeAsync(5, false);
        CollectionAssert.AreEqual(new[] { "pool_props_v2", "container_compression", "block_checksums", "placement_v2", "wal_v2" }, plan.Actions.Select(a => a.Feature).ToArray());
        long atStart = Interlocked.Read(ref writes);
        await pool.WaitForUpgradeAsync();
        long atEnd = Interlocked.Read(ref writes);
        while (Interlocked.Read(ref writes) < atEnd + 50)
            await Task.Yield();
        await stop.CancelAsync();
        await Task.WhenAll(writers);
        TestContext.WriteLine($"{atEnd - atStart} writes acknowledged during the job, none refused; wal_v2 held I/O for {pool.LastExclusivePauseMs:0.###} ms");
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.IsGreaterThan(0L, atEnd - atStart, "clients wrote while the job ran");
        await Verify(pool);
        await pool.CloseAsync(checkpoint: false);
        await engine.DisposeAsync();
        var (again, ras2) = await TestDevices.OpenAsync(devs);
        await Verify(await again.OpenPoolAsync("tank"));
        Assert.IsFalse(ras.Events.Concat(ras2.Events).Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable));

        async Task Verify(Pool p)
        {
            Assert.AreEqual(5u, p.LayoutVersion);
            Assert.AreEqual(WalFormatV2.Format, p.Log.Format);
            Assert.AreEqual(0, BlockChecksumUpgradeTests.WithoutTable(p));
            Assert.AreEqual(0, MigrationKit.Misplaced(p, PlacementV2.Instance));
            var now = await ImageHashesAsync(p);
            foreach (var (k, v) in before)
                Assert.AreEqual(v, now[k], k);
            var back = new byte[Size];
            await p.OpenImage("live", "small").ReadAsync(0, back);
            CollectionAssert.AreEqual(model[0], back, "live/small");
            await p.OpenImage("live", "big").ReadAsync(0, back);
            CollectionAssert.AreEqual(model[1], back, "live/big");
        }
    }

    [TestMethod]
    public async Task QuiesceWindow_ConcurrentWritersKeepGoing_NoWriteLost()
    {
        var devs = TestDevices.Memory(2);
        var (_, pool, _) = await V1PoolWithDataAsync(devs);
        var img = await pool.CreateImageAsync("old", "busy", 1 << 20, 4096);
        using var stop = new CancellationTokenSource();
        long writes = 0;
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var rng = new Random(w);
            while (!stop.IsCancellationRequested)
            {
                long chunk = rng.Next(0, 64) * 4 + w;
                await img.WriteAsync(chunk * 4096, TestDevices.Pattern(4096, (int)chunk));
                Interlocked.Increment(ref writes);
            }
        })).ToArray();
        while (Interlocked.Read(ref writes) < 20)
            await Task.Delay(5);
        await pool.UpgradeAsync(3, false);
        await pool.WaitForUpgradeAsync();
        long at = Interlocked.Read(ref writes);
        while (Interlocked.Read(ref writes) < at + 20)
            await Task.Delay(5);
        await stop.CancelAsync();
        await Task.WhenAll(writers);
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        var buf = new byte[4096];
        for (int chunk = 0; chunk < 256; chunk++)
        {
            await img.ReadAsync(chunk * 4096L, buf);
            if (buf.Any(b => b != 0))
                CollectionAssert.AreEqual(TestDevices.Pattern(4096, chunk), buf, $"chunk {chunk}");
        }
    }

    [TestMethod]
    public async Task Gating_NewFeaturesOnlyAtLayout2_AndOnlyForContainersCreatedThere()
    {
        var devs = TestDevices.Memory(2);
        var (_, pool, _) = await V1PoolWithDataAsync(devs);
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetContainerPropertyAsync("old", "compression", "on"));
        Assert.AreEqual("container property 'compression' needs pool layout 2 (pool is at 1); run 'strata pool upgrade'", e.Message);
        var s = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("scrub", "lazy"));
        Assert.AreEqual("pool property 'scrub' needs pool layout 2 (pool is at 1); run 'strata pool upgrade'", s.Message);
        // A container created in the old pool does not get the new feature.
        await pool.CreateContainerAsync("new-in-old");
        Assert.AreEqual("1", pool.GetContainerProperty("new-in-old", "layout_version"));
        Assert.ThrowsExactly<NotFoundException>(() => pool.GetContainerProperty("new-in-old", "compression"));

        await pool.UpgradeAsync(2, false);
        await pool.WaitForUpgradeAsync();
        var old = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetContainerPropertyAsync("new-in-old", "compression", "on"));
        StringAssert.StartsWith(old.Message, "container 'new-in-old' was created at pool layout 1; container property 'compression' is available only to containers created at layout 2 or later");
        // Containers created before the upgrade keep what they had.
        Assert.AreEqual("ops", pool.GetContainerProperty("old", "user.owner"));
        await pool.CreateContainerAsync("fresh");
        Assert.AreEqual("2", pool.GetContainerProperty("fresh", "layout_version"));
        Assert.AreEqual("off", pool.GetContainerProperty("fresh", "compression"));
        await pool.SetContainerPropertyAsync("fresh", "compression", "on");
        Assert.AreEqual("on", pool.GetContainerProperty("fresh", "compression"));
        await pool.SetPropertyAsync("scrub", "timed");
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("scrub", "always"));
    }

    [TestMethod]
    public async Task Downgrade_OlderReleaseRefusesUpgradedPool_StillOpensPoolNotUpgraded()
    {
        var older = new StorageEngineOptions { Catalog = LayoutCatalog.Default.Truncate(1) };
        var devs = TestDevices.Memory(2);
        var (engine, pool, _) = await V1PoolWithDataAsync(devs);
        var hashes = await ImageHashesAsync(pool);
        await pool.CreateContainerAsync("more");
        await engine.DisposeAsync();

        // Newer software ran on the pool without upgrading it: the older release still opens it (rollback).
        var rasOld = new InMemoryRasSink();
        var oldEngine = await StorageEngine.OpenAsync(devs, older with { Ras = rasOld });
        var oldPool = await oldEngine.OpenPoolAsync("tank");
        CollectionAssert.AreEquivalent(hashes.ToList(), (await ImageHashesAsync(oldPool)).ToList());
        await oldPool.OpenImage("old", "b").WriteAsync(0, new byte[] { 9 });
        await oldEngine.DisposeAsync();

        var (newEngine, _) = await TestDevices.OpenAsync(devs);
        var p = await newEngine.OpenPoolAsync("tank");
        await p.UpgradeAsync(3, false);
        await p.WaitForUpgradeAsync();
        await newEngine.DisposeAsync();

        string sha = TestHelpers.Sha256(devs);
        rasOld = new InMemoryRasSink();
        oldEngine = await StorageEngine.OpenAsync(devs, older with { Ras = rasOld });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => oldEngine.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "has layout version 3, this engine supports layout versions 1..1 (incompatible layout version: 3 larger than 1)");
        StringAssert.Contains(e.Message, "nothing was written");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, rasOld.Events.Single().Id);
        Assert.AreEqual("pool_durable_format_incompatible", rasOld.Events.Single().Id);
        await oldEngine.DisposeAsync();
        Assert.AreEqual(sha, TestHelpers.Sha256(devs), "the older release wrote nothing");
    }

    [TestMethod]
    public async Task Downgrade_JobInProgress_OlderReleaseRefusesBeforeWriting()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { UpgradeStepDelay = TimeSpan.FromSeconds(30) });
        await pool.UpgradeAsync(3, false);
        await engine.DisposeAsync(); // a clean stop mid-job: the job stays in progress
        string sha = TestHelpers.Sha256(devs);
        var ras = new InMemoryRasSink();
        var old = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = LayoutCatalog.Default.Truncate(1) });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => old.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "(incompatible layout version: 3 larger than 1)");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, ras.Events.Single().Id);
        Assert.AreEqual(sha, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task CleanStopMidJob_ResumesByItselfAtNextOpen_WithRasEvent()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { UpgradeStepDelay = TimeSpan.FromSeconds(30) });
        var hashes = await ImageHashesAsync(pool);
        await pool.UpgradeAsync(3, false);
        Assert.AreEqual("in progress", pool.GetProperty("upgrade_status"));
        await engine.DisposeAsync();

        var (again, ras) = await TestDevices.OpenAsync(devs);
        var p = await again.OpenPoolAsync("tank");
        await p.WaitForUpgradeAsync();
        Assert.AreEqual("completed", p.GetProperty("upgrade_status"));
        Assert.AreEqual(3u, p.LayoutVersion);
        Assert.AreEqual(0, BlockChecksumUpgradeTests.WithoutTable(p), "the resumed job ran the block_checksums action too");
        Assert.AreEqual(1, ras.WithId(RasIds.PoolUpgradeResumed).Count());
        CollectionAssert.AreEquivalent(hashes.ToList(), (await ImageHashesAsync(p)).ToList());
    }

    [TestMethod]
    public async Task FailedJob_CanBeRetriedWithTheSameCall()
    {
        var fail = new FailOnceAction();
        var cat = TestCatalogs.WithVersion3(new LayoutFeature("test_flaky", 3, FeatureClass.Incompat, 5, ActionKind.DataScan, "test", fail));
        var (engine, pool, ras) = await V1PoolWithDataAsync(TestDevices.Memory(2), new StorageEngineOptions { Catalog = cat });
        await pool.UpgradeAsync(3, false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("failed: injected failure", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(2u, pool.LayoutVersion, "versions whose actions completed stay switched");
        Assert.AreEqual(1, ras.WithId(RasIds.PoolUpgradeFailed).Count());
        var plan = await pool.UpgradeAsync(3, false);
        Assert.AreEqual((2u, 3u, 2UL), (plan.From, plan.To, plan.JobId!.Value));
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(3u, pool.LayoutVersion);
    }

    private sealed class FailOnceAction : IUpgradeAction
    {
        private int _runs;

        public ActionAccess Access => ActionAccess.Online;

        public ActionEstimate Estimate(IUpgradePool pool) => new(1, 0, 0, 0);

        public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct) =>
            Interlocked.Increment(ref _runs) == 1 ? throw new InvalidOperationException("injected failure") : Task.CompletedTask;
    }

    [TestMethod]
    public async Task Idempotency_EachActionRunARandomNumberOfTimes_SameResult()
    {
        string? reference = null;
        for (int seed = 1; seed <= 12; seed++)
        {
            var rng = new Random(seed);
            var cat = TestCatalogs.Repeating(() => seed == 1 ? 1 : rng.Next(1, 6));
            var devs = TestDevices.Memory(2);
            var (engine, pool, _) = await V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = cat });
            await pool.UpgradeAsync(null, false);
            await pool.WaitForUpgradeAsync();
            Assert.AreEqual("completed", pool.GetProperty("upgrade_status"), $"seed {seed}");
            // upgrade_progress counts work done in this process (repeats included); everything durable must match.
            string result = string.Join(";", pool.GetProperties().Where(kv => kv.Key != "upgrade_progress").OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"))
                            + "|" + string.Join(";", (await ImageHashesAsync(pool)).OrderBy(kv => kv.Key).Select(kv => kv.Value))
                            + "|" + pool.Query().Incompat + "," + pool.Query().Compat;
            reference ??= result;
            Assert.AreEqual(reference, result, $"seed {seed}");
            await engine.DisposeAsync();
        }
    }

    [TestMethod]
    public async Task OnlineScanAction_CrashAnywhere_ResumesFromItsCursorAndCompletes()
    {
        var cat = TestCatalogs.WithVersion3(new LayoutFeature("test_scan", 3, FeatureClass.Incompat, 5, ActionKind.DataScan, "test", new ScanChunksAction()));
        await CrashRunsAsync(cat, 3, seeds: 60, maxOps: 160, expectScanned: true);
    }

    [TestMethod]
    public async Task Upgrade1To2_CrashAtRandomPoints_ResumedAndCompletedWithDataIntact()
    {
        await CrashRunsAsync(LayoutCatalog.Default, 2, seeds: 150, maxOps: 30, expectScanned: false);
    }

    private static async Task CrashRunsAsync(LayoutCatalog cat, uint to, int seeds, int maxOps, bool expectScanned)
    {
        int resumed = 0, notStarted = 0;
        for (int seed = 1; seed <= seeds; seed++)
        {
            var rng = new Random(seed);
            var power = new CrashSwitch();
            var disks = Enumerable.Range(0, 2).Select(i => new CrashDisk($"u{i}", TestDevices.TargetSize, power)).ToArray();
            var (engine, pool, _) = await V1PoolWithDataAsync(disks, new StorageEngineOptions { Catalog = cat });
            var hashes = await ImageHashesAsync(pool);
            power.Reset(rng.Next(1, maxOps));
            bool started = false;
            try
            {
                await pool.UpgradeAsync(to, false);
                started = true;
                await pool.WaitForUpgradeAsync();
            }
            catch (Exception) when (power.Crashed)
            {
            }
            power.CutPower();
            var next = new CrashSwitch();
            var after = disks.Select(d => d.AfterCrash(rng, next)).ToArray();
            var ras = new InMemoryRasSink();
            var reopened = await StorageEngine.OpenAsync(after, new StorageEngineOptions { Ras = ras, Catalog = cat });
            var p = await reopened.OpenPoolAsync("tank");
            await p.WaitForUpgradeAsync();
            string status = p.GetProperty("upgrade_status");
            if (status == "not started")
            {
                // The crash came before the job's first record was durable: nothing happened; start it now.
                Assert.IsFalse(started && ras.WithId(RasIds.PoolUpgradeResumed).Any(), $"seed {seed}");
                notStarted++;
                await p.UpgradeAsync(to, false);
                await p.WaitForUpgradeAsync();
            }
            else if (ras.WithId(RasIds.PoolUpgradeResumed).Any())
            {
                resumed++;
            }
            Assert.AreEqual("completed", p.GetProperty("upgrade_status"), $"seed {seed}");
            Assert.AreEqual(to, p.LayoutVersion, $"seed {seed}");
            Assert.AreEqual(0UL, p.Query().Incompat & LayoutCatalog.IncompatUpgradeInProgress, $"seed {seed}: bit 62 cleared");
            Assert.AreEqual("off", p.GetProperty("scrub"), $"seed {seed}");
            CollectionAssert.AreEquivalent(hashes.ToList(), (await ImageHashesAsync(p)).ToList(), $"seed {seed}");
            if (expectScanned)
                Assert.AreEqual("35", p.GetProperty("test.scanned"), $"seed {seed}: every chunk of both images visited");
            await reopened.DisposeAsync();
        }
        Console.WriteLine($"{seeds} crash runs: {resumed} resumed mid-job, {notStarted} crashed before the job was recorded");
        Assert.IsGreaterThan(seeds / 8, resumed, $"crashes landed mid-job and were resumed ({resumed} resumed, {notStarted} before the job)");
    }
}
