using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>`storage add-target` and `pool extend` (issue 14): a target added to a running engine, a pool grown onto it as a migration job.</summary>
[TestClass]
public sealed class ExtendTests
{
    private const int Cs = 4096;

    public TestContext TestContext { get; set; } = null!;

    private static async Task<(StorageEngine Engine, Pool Pool, InMemoryRasSink Ras)> PoolAsync(IBlockDevice[] devs, uint layout, int rf = 1)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = PlacementV2Tests.UpTo4() });
        var pool = await engine.CreatePoolAsync("tank", devs.Length * (4L << 20), rf, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        return (engine, pool, ras);
    }

    private static Task<StorageEngine> ReopenAsync(IBlockDevice[] devs) =>
        StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });

    private static Dictionary<long, int[]> Locations(Pool pool, Image image)
    {
        lock (pool.Meta.Sync)
            return pool.Meta.Images[image.Id].Chunks.ToDictionary(kv => kv.Key, kv => kv.Value.Replicas.Select(r => (int)r.Target).Order().ToArray());
    }

    private static async Task<byte[]> ReadAllAsync(Image image, int length)
    {
        var buf = new byte[length];
        await image.ReadAsync(0, buf);
        return buf;
    }

    [TestMethod]
    [DataRow(4u, 1)]
    [DataRow(1u, 1)]
    [DataRow(4u, 2)]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Extend_TwoToThreeTargetsUnderClientWrites_MovesWhatPlacementSaysAndKeepsData(uint layout, int rf)
    {
        const int chunks = 600;
        var devs = TestDevices.Memory(3);
        var (engine, pool, ras) = await PoolAsync(devs[..2], layout, rf);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, model);
        var before = Locations(pool, image);
        var placement = pool.Placement;

        await engine.AddTargetAsync(devs[2]);
        var dry = await pool.ExtendAsync(dryRun: true);
        Assert.IsFalse(dry.Started);
        Assert.AreEqual(2, pool.Query().Targets.Count, "a dry run changes nothing");

        // Client writes while the job runs (the throttle keeps it going long enough to overlap).
        await pool.SetPropertyAsync("migrate_rate", "2M");
        var plan = await pool.ExtendAsync(dryRun: false);
        Assert.IsTrue(plan.Started);
        var rng = new Random(7);
        var rewritten = new HashSet<long>();
        for (int i = 0; i < 40; i++)
        {
            long c = rng.Next(chunks);
            var data = TestDevices.Pattern(Cs, 100 + i);
            await image.WriteAsync(c * Cs, data);
            data.CopyTo(model, c * Cs);
            rewritten.Add(c);
        }
        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);

        var status = pool.JobStatus!;
        Assert.AreEqual("completed", status.State, status.Reason);
        Assert.AreEqual(3, pool.TargetCount);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, placement), "every chunk is where placement puts it on 3 targets");
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool));
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));

        // The chunks that moved are exactly those the placement moves; the fraction is about 1/3 on placement v2.
        var after = Locations(pool, image);
        int moved = 0, expected = 0;
        foreach (var (c, was) in before)
        {
            var want = new int[rf];
            placement.Targets(image.Id, c, 3, want);
            bool shouldMove = !was.SequenceEqual(want.Order());
            expected += shouldMove ? 1 : 0;
            if (!rewritten.Contains(c))
                Assert.AreEqual(shouldMove, !was.SequenceEqual(after[c]), $"chunk {c}");
            moved += !was.SequenceEqual(after[c]) ? 1 : 0;
        }
        double movedReplicas = (double)dry.MovingReplicas / dry.Replicas;
        TestContext.WriteLine($"layout {layout} rf {rf}: dry run {dry.MovingReplicas}/{dry.Replicas} replicas ({movedReplicas:P1}), {dry.MovingBytes} bytes; chunks moved {moved}, placement says {expected} of {chunks}");
        Assert.AreEqual(expected, dry.MovingChunks);
        if (layout == 4)
            Assert.AreEqual(1.0 / 3, movedReplicas, 1.0 / 30, "placement v2 moves about 1/n");
        else
            Assert.IsTrue(movedReplicas > 0.5, $"placement v1 moves most: {movedReplicas:P1}");
        Assert.AreEqual(1, ras.WithId(RasIds.PoolExtendStarted).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolExtendCompleted).Count());
        await engine.DisposeAsync();

        // A restart opens the three targets and the pool on all of them.
        var reopened = await ReopenAsync(devs);
        var p = await reopened.OpenPoolAsync("tank");
        Assert.AreEqual(3, p.Query().Targets.Count);
        Assert.AreEqual(3, reopened.ListPools().Single().Targets);
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        Assert.AreEqual(0, MigrationKit.Misplaced(p, placement));
        await reopened.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Extend_PoolClosedMidJob_ResumesAtOpenAndCompletes()
    {
        const int chunks = 300;
        var devs = TestDevices.Memory(3);
        var (engine, pool, ras) = await PoolAsync(devs[..2], 4);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 3);
        await image.WriteAsync(0, model);
        await engine.AddTargetAsync(devs[2]);
        // One chunk's worth of credit per second: the job is still running when the engine closes.
        await pool.SetPropertyAsync("migrate_rate", "4K");
        await pool.ExtendAsync(dryRun: false);
        Assert.AreEqual("extend", pool.RunningJob);
        await engine.DisposeAsync();

        var reopened = await ReopenAsync(devs);
        var p = await reopened.OpenPoolAsync("tank");
        Assert.AreEqual("extend", p.GetProperty("job"), "the job is durable");
        await p.SetPropertyAsync("migrate_rate", "0");
        await p.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", p.JobStatus!.State, p.JobStatus.Reason);
        Assert.AreEqual("none", p.GetProperty("job"));
        Assert.AreEqual(0, MigrationKit.Misplaced(p, p.Placement));
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await reopened.DisposeAsync();
    }

    [TestMethod]
    public async Task AddTarget_BadDevices_RefusedWithReasonNothingWritten()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, _) = await PoolAsync(devs, 4);
        var e = await Assert.ThrowsExactlyAsync<BusyException>(() => engine.AddTargetAsync(devs[1]));
        StringAssert.Contains(e.Message, "already is target 1 of this engine");

        var foreign = TestDevices.Memory(1);
        await (await StorageEngine.FormatAsync(foreign)).DisposeAsync();
        string foreignHash = TestHelpers.Sha256(foreign[0]);
        e = await Assert.ThrowsExactlyAsync<BusyException>(() => engine.AddTargetAsync(foreign[0]));
        StringAssert.Contains(e.Message, "of another engine");
        Assert.AreEqual(foreignHash, TestHelpers.Sha256(foreign[0]), "another engine's target is not touched");

        var small = TestDevices.Memory(1, 2L << 20)[0];
        var s = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.AddTargetAsync(small));
        StringAssert.Contains(s.Message, "a target of this engine needs at least");
        Assert.AreEqual(2, engine.Targets.Count);

        var x = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.ExtendAsync(dryRun: false));
        StringAssert.Contains(x.Message, "already is on all 2 target(s)");
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task AddTarget_ThenRestart_OpensAllTargetsAndOlderPoolStaysOnItsOwn()
    {
        var devs = TestDevices.Memory(3);
        var (engine, pool, ras) = await PoolAsync(devs[..2], 1);
        var image = await pool.CreateImageAsync("c", "v", 50 * Cs, Cs);
        var model = TestDevices.Pattern(50 * Cs, 5);
        await image.WriteAsync(0, model);
        await engine.AddTargetAsync(devs[2]);
        Assert.AreEqual(1, ras.WithId(RasIds.TargetAdded).Count());
        var fresh = await engine.CreatePoolAsync("new", 3 * (2L << 20), 1, TestDevices.SmallPool);
        Assert.AreEqual(3, fresh.TargetCount, "a pool created after the add spans it");
        await engine.DisposeAsync();

        var reopened = await ReopenAsync(devs);
        Assert.AreEqual(3, reopened.Targets.Count);
        var p = await reopened.OpenPoolAsync("tank");
        Assert.AreEqual(2, p.TargetCount);
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        Assert.AreEqual(3, (await reopened.OpenPoolAsync("new")).TargetCount);
        await reopened.DisposeAsync();

        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(() => ReopenAsync(devs[..2]));
        StringAssert.Contains(e.Message, "of 3, but 2 devices were given");
    }

    [TestMethod]
    public async Task AddTarget_CrashAfterRecordBeforeOlderTargetsCount_OpenFinishesIt()
    {
        var devs = TestDevices.Memory(3);
        var (engine, pool, _) = await PoolAsync(devs[..2], 4);
        var image = await pool.CreateImageAsync("c", "v", 20 * Cs, Cs);
        var model = TestDevices.Pattern(20 * Cs, 9);
        await image.WriteAsync(0, model);
        await pool.DisposeAsync();
        // The record step fails, as a crash right after it would leave things: the new target written, the others not yet counting it.
        await Assert.ThrowsExactlyAsync<IOException>(() => engine.AddTargetAsync(devs[2], () => throw new IOException("crash")));

        var reopened = await ReopenAsync(devs);
        Assert.AreEqual(3, reopened.Targets.Count);
        Assert.IsTrue(reopened.Targets.All(t => t.Superblock.TargetCount == 3), "the open finished the count");
        var p = await reopened.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await reopened.DisposeAsync();

        // A crash before the record: the device is not opened; adding it again reuses it.
        var devs2 = TestDevices.Memory(3);
        var (engine2, _, _) = await PoolAsync(devs2[..2], 4);
        await Assert.ThrowsExactlyAsync<IOException>(() => engine2.AddTargetAsync(devs2[2], () => throw new IOException("crash")));
        await engine2.DisposeAsync();
        var again = await ReopenAsync(devs2[..2]);
        await again.AddTargetAsync(devs2[2]);
        Assert.AreEqual(3, again.Targets.Count);
        await again.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Extend_AndUpgrade_ExcludeEachOtherNamingTheRunningJob()
    {
        var devs = TestDevices.Memory(3);
        var (engine, pool, _) = await PoolAsync(devs[..2], 3);
        var image = await pool.CreateImageAsync("c", "v", 100 * Cs, Cs);
        await image.WriteAsync(0, TestDevices.Pattern(100 * Cs, 2));
        await engine.AddTargetAsync(devs[2]);
        await pool.SetPropertyAsync("migrate_rate", "4K");
        await pool.ExtendAsync(dryRun: false);
        var e = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(4, dryRun: false));
        StringAssert.Contains(e.Message, "has extension in progress");
        var again = await Assert.ThrowsExactlyAsync<PoolBusyException>(() => pool.ExtendAsync(dryRun: false));
        StringAssert.Contains(again.Message, "is running extend");
        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State);

        // Now the other way round: an upgrade running refuses an extension.
        var devs4 = TestDevices.Memory(3);
        var (engine4, pool4, _) = await PoolAsync(devs4[..2], 3);
        var img4 = await pool4.CreateImageAsync("c", "v", 100 * Cs, Cs);
        await img4.WriteAsync(0, TestDevices.Pattern(100 * Cs, 2));
        await engine4.AddTargetAsync(devs4[2]);
        await pool4.SetPropertyAsync("migrate_rate", "4K");
        await pool4.UpgradeAsync(4, dryRun: false);
        var u = await Assert.ThrowsExactlyAsync<PoolBusyException>(() => pool4.ExtendAsync(dryRun: false));
        StringAssert.Contains(u.Message, "is upgrading (3 -> 4");
        StringAssert.Contains(u.Message, "extension cannot start");
        Assert.AreEqual(2, pool4.TargetCount, "nothing changed");
        await pool4.SetPropertyAsync("migrate_rate", "0");
        await pool4.WaitForUpgradeAsync(TestContext.CancellationToken);
        await engine.DisposeAsync();
        await engine4.DisposeAsync();
    }
}
