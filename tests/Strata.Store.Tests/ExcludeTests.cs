using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>`storage exclude-target` and the rebuild (issue 14): a lost target on rf 2 and rf 1 pools.</summary>
[TestClass]
public sealed class ExcludeTests
{
    private const int Cs = 4096;

    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-excl-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Exclude_Rf2TargetThenItDies_EveryChunkServedAndRebuiltOntoTheOthers()
    {
        const int chunks = 300;
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, ras) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 1);
        await image.WriteAsync(0, model);
        int onOne = OnTarget(pool, 1);
        Assert.IsTrue(onOne > 0);

        // The rebuild waits for its first chunk's credit; the target is dead from the moment it is excluded.
        await pool.SetPropertyAsync("migrate_rate", "1");
        var result = (await engine.ExcludeTargetAsync(1)).Single();
        devs[1].SetFaults(Dead);
        Assert.IsTrue(result.RebuildStarted, result.RebuildRefused);
        var q = pool.Query().Redundancy!;
        Assert.AreEqual("rebuilding", q.Health);
        Assert.AreEqual(onOne, q.ChunksAtOneCopy, "every chunk that had a replica on target 1 is at one copy");
        Assert.AreEqual((long)onOne * Cs, q.BytesAtOneCopy);
        Assert.AreEqual(0, q.LostChunks);

        // Reads and writes go on without the dead target.
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        for (int i = 0; i < 30; i++)
        {
            var data = TestDevices.Pattern(Cs, 50 + i);
            await image.WriteAsync((i * 7L % chunks) * Cs, data);
            data.CopyTo(model, i * 7L % chunks * Cs);
        }

        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(pool, 1), "no replica is left on the excluded target");
        lock (pool.Meta.Sync)
            Assert.IsTrue(pool.Meta.Images[image.Id].Chunks.Values.All(m => m.Replicas.Length == 2 && m.Replicas[0].Target != m.Replicas[1].Target));
        var after = pool.Query().Redundancy!;
        Assert.AreEqual("ok", after.Health);
        Assert.AreEqual(0, after.ChunksAtOneCopy);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.AreEqual(1, ras.WithId(RasIds.TargetExcluded).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolRebuildStarted).Count());
        Assert.AreEqual(1, ras.WithId(RasIds.PoolRebuildCompleted).Count());
        Assert.IsFalse(ras.WithId(RasIds.PoolReadOnly).Any(), "the dead target never made the pool read-only");
        Assert.AreEqual(0L, devs[1].GetFaultStats().IosFailed, "nothing was sent to the excluded target");
        await engine.DisposeAsync();

        // The exclusion is durable (the device answers again, with what it held when it was excluded).
        devs[1].SetFaults("");
        var reopened = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });
        var p = await reopened.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(new[] { 1 }, p.ExcludedTargets.ToArray());
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    public async Task Exclude_Rf1Target_RefusedWithTheFigure_ForcedReportsLostImagesAndReadsFail()
    {
        var devs = TestDevices.Memory(2);
        var (engine, pool, ras) = await PoolAsync(devs, 1);
        var a = await pool.CreateImageAsync("c", "a", 40 * Cs, Cs);
        var dataA = TestDevices.Pattern(40 * Cs, 3);
        await a.WriteAsync(0, dataA);
        int lost = OnTarget(pool, 0);

        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ExcludeTargetAsync(0));
        StringAssert.Contains(e.Message, $"would leave {lost} chunk(s) ({lost * Cs} bytes) of pool 'tank' with no copy (images: a)");
        Assert.AreEqual(0, pool.ExcludedTargets.Count, "nothing changed");

        var r = (await engine.ExcludeTargetAsync(0, force: true)).Single();
        Assert.AreEqual(lost, r.Degradation.LostChunks);
        CollectionAssert.AreEqual(new[] { "a" }, r.Degradation.LostImages.ToArray());
        Assert.AreEqual("degraded", pool.Query().Redundancy!.Health == "rebuilding" ? "degraded" : pool.Query().Redundancy!.Health);
        StringAssert.Contains(ras.WithId(RasIds.PoolDataLost).Single().Message, "images a");
        await pool.WaitForJobAsync();

        long lostChunk, kept;
        lock (pool.Meta.Sync)
        {
            var chunks = pool.Meta.Images[a.Id].Chunks;
            lostChunk = chunks.First(kv => kv.Value.Replicas[0].Target == 0).Key;
            kept = chunks.First(kv => kv.Value.Replicas[0].Target == 1).Key;
        }
        var buf = new byte[Cs];
        var x = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => a.ReadAsync(lostChunk * Cs, buf).AsTask());
        StringAssert.Contains(x.Message, "was on excluded target(s) 0");
        Assert.IsTrue(buf.All(b => b == 0), "no wrong bytes");
        await a.ReadAsync(kept * Cs, buf);
        CollectionAssert.AreEqual(dataA.AsSpan((int)(kept * Cs), Cs).ToArray(), buf);

        // New writes land on the remaining target, also where the lost chunk was.
        await a.WriteAsync(lostChunk * Cs, TestDevices.Pattern(Cs, 9));
        await a.ReadAsync(lostChunk * Cs, buf);
        CollectionAssert.AreEqual(TestDevices.Pattern(Cs, 9), buf);
        Assert.AreEqual(0, OnTarget(pool, 0) - (lost - 1), "the rewritten chunk left target 0");
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Exclude_SecondTargetBeforeTheRebuild_RefusedWithFigure_AfterItLosesNothing()
    {
        const int chunks = 200;
        var devs = TestDevices.Memory(3);
        var (engine, pool, ras) = await PoolAsync(devs, 2, layout: 3);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 4);
        await image.WriteAsync(0, model);
        await pool.SetPropertyAsync("migrate_rate", "1");
        await engine.ExcludeTargetAsync(0);

        // Chunks on targets 0 and 1 have their only live copy on 1 until the rebuild copies them.
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ExcludeTargetAsync(1));
        StringAssert.Contains(e.Message, "with no copy");
        StringAssert.Contains(e.Message, "the last replica of a chunk is not excluded");
        var u = await Assert.ThrowsExactlyAsync<BusyException>(() => pool.UpgradeAsync(4, dryRun: false));
        StringAssert.Contains(u.Message, "has rebuild in progress");

        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State);
        // Rebuilt: a second failure leaves one copy of everything, nothing lost.
        var second = (await engine.ExcludeTargetAsync(1)).Single();
        Assert.AreEqual(0, second.Degradation.LostChunks);
        Assert.AreEqual(chunks, second.Degradation.ChunksAtOneCopy);
        Assert.IsFalse(second.RebuildStarted && pool.JobStatus.State == "failed");
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("degraded", pool.Query().Redundancy!.Health, "one target left: nowhere to rebuild to");
        var last = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.ExcludeTargetAsync(2, force: true));
        StringAssert.Contains(last.Message, "is the last target of pool 'tank'");
        await engine.DisposeAsync();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task ReadErrors_PastTheThreshold_TargetExcludedByItselfNoClientErrorAndRebuilt()
    {
        const int chunks = 200;
        var devs = MigrationKit.FileTargets(_dir, 3);
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = PlacementV2Tests.UpTo4(), ExcludeAfterErrors = 4 });
        var pool = await engine.CreatePoolAsync("tank", 3 * (4L << 20), 2, TestDevices.SmallPool with { LayoutVersion = 4 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 8);
        await image.WriteAsync(0, model);

        // Target 2's reads fail from now on; every chunk still reads back right from its other replica.
        devs[2].SetFaults("fail_every=1&fail_ops=read");
        var buf = new byte[Cs];
        for (long c = 0; c < chunks; c++)
        {
            await image.ReadAsync(c * Cs, buf);
            CollectionAssert.AreEqual(model.AsSpan((int)(c * Cs), Cs).ToArray(), buf, $"chunk {c}");
        }
        var auto = await ras.First(RasIds.TargetAutoExcluded).WaitAsync(TestContext.CancellationToken);
        StringAssert.Contains(auto.Message, "target 2");
        StringAssert.Contains(auto.Message, "excluded after 4 device errors");
        await ras.First(RasIds.PoolRebuildStarted).WaitAsync(TestContext.CancellationToken);
        await pool.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(pool, 2));
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Exclude_DuringAnUpgrade_RebuildRefusedNamingItUpgradeMovesNothingOntoTheTarget()
    {
        const int chunks = 150;
        var devs = TestDevices.Memory(3);
        var ras = new WaitableRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = PlacementV2Tests.UpTo4() });
        var pool = await engine.CreatePoolAsync("tank", 3 * (4L << 20), 2, TestDevices.SmallPool with { LayoutVersion = 3 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 12);
        await image.WriteAsync(0, model);

        // The upgrade's placement move waits for its first chunk's credit.
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(4, dryRun: false);
        CollectionAssert.Contains(pool.Query().Running.ToList(), "upgrade");
        var r = (await engine.ExcludeTargetAsync(1)).Single();
        Assert.IsFalse(r.RebuildStarted);
        StringAssert.Contains(r.RebuildRefused, "pool 'tank' is upgrading (3 -> 4");
        StringAssert.Contains(r.RebuildRefused, "rebuild cannot start until the upgrade completes");

        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForUpgradeAsync(TestContext.CancellationToken);
        Assert.AreEqual(4u, pool.LayoutVersion);
        // The upgrade's move places every chunk on the targets left, which is what the rebuild would have done.
        Assert.AreEqual(0, OnTarget(pool, 1), "the upgrade put no replica on the excluded target and moved the ones there away");
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, pool.Placement));
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        Assert.IsFalse(ras.WithId(RasIds.MigrationChunkLeft).Any());
        await engine.DisposeAsync();
    }
    private static async Task<byte[]> WholeAsync(IBlockDevice dev)
    {
        var bytes = new byte[dev.Geometry.Capacity];
        await DeviceIo.ReadAsync(dev, 0, bytes);
        return bytes;
    }

    /// <summary>Every command on the target past its superblock fails: the pool's shard (header, log, checkpoints, data) is gone.</summary>
    private static string DeadShard(IBlockDevice dev) => $"{Dead}&fail_range={TargetSuperblock.ReservedBytes}-{dev.Geometry.Capacity}";

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    [DataRow("device", "its superblock cannot be read: ", DisplayName = "the whole device fails")]
    [DataRow("shard", "its shard header cannot be read: ", DisplayName = "the whole shard fails")]
    [DataRow("past header", "its checkpoint cannot be read: ", DisplayName = "the shard header reads, the rest fails")]
    public async Task Open_ExcludedTargetsDeviceFailsEveryIo_OpensServesRebuildsAndReintegratesOnceHealed(string fails, string problem)
    {
        const int chunks = 120;
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, _) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 21);
        await image.WriteAsync(0, model);
        int onTwo = OnTarget(pool, 2);
        Assert.IsTrue(onTwo > 0);
        long failFrom = fails switch { "device" => 0, "shard" => TargetSuperblock.ReservedBytes, _ => pool.Shards[2].Base + ShardHeader.Size };
        // The rebuild waits for its first chunk's credit: the restart finds target 2's replicas still mapped.
        await pool.SetPropertyAsync("migrate_rate", "1");
        await engine.ExcludeTargetAsync(2);
        await engine.DisposeAsync();
        devs[2].SetFaults($"{Dead}&fail_range={failFrom}-{devs[2].Geometry.Capacity}");

        // Read-only first: it opens the same way and writes nothing.
        var roRas = new InMemoryRasSink();
        var ro = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = roRas, Catalog = PlacementV2Tests.UpTo4(), ReadOnly = true });
        var rp = await ro.OpenPoolAsync("tank");
        Assert.AreEqual(PoolStatus.ReadOnly, rp.State);
        CollectionAssert.AreEqual(new[] { 2 }, rp.ExcludedTargets.ToArray());
        CollectionAssert.AreEqual(model, await ReadAllAsync(rp.OpenImage("c", "v"), model.Length));
        StringAssert.Contains(roRas.WithId(RasIds.CheckpointBad).Single().Message, "pool 'tank' metadata on target 2 is unusable: " + problem);
        await ro.DisposeAsync();

        var ras = new InMemoryRasSink();
        var reopened = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = PlacementV2Tests.UpTo4() });
        var p = await reopened.OpenPoolAsync("tank");
        long failedAtOpen = devs[2].GetFaultStats().IosFailed;
        Assert.AreEqual(PoolStatus.Ready, p.State);
        if (fails == "device")
        {
            StringAssert.StartsWith(ras.WithId(RasIds.TargetUnreadable).Single().Message, "target 2 ('file:");
            // Nothing may write a superblock the engine could not read.
            var refused = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => reopened.CreatePoolAsync("other", 3 * (1L << 20)));
            StringAssert.StartsWith(refused.Message, "a pool cannot be created while target 2 ('file:");
        }
        CollectionAssert.AreEqual(new[] { 2 }, p.ExcludedTargets.ToArray());
        var d = p.Query().Redundancy!;
        Assert.AreEqual("rebuilding", d.Health, "the rebuild job resumed");
        // The resumed job may have copied the one chunk its first credit allows before this query.
        Assert.IsTrue(d.ChunksAtOneCopy == onTwo || d.ChunksAtOneCopy == onTwo - 1, $"{d.ChunksAtOneCopy} chunk(s) at one copy, {onTwo} had a replica on target 2");
        Assert.AreEqual(0, d.LostChunks);
        var img = p.OpenImage("c", "v");
        CollectionAssert.AreEqual(model, await ReadAllAsync(img, model.Length));
        for (int i = 0; i < 20; i++)
        {
            var data = TestDevices.Pattern(Cs, 60 + i);
            long at = i * 5L % chunks * Cs;
            await img.WriteAsync(at, data);
            data.CopyTo(model, at);
        }
        await p.SetPropertyAsync("migrate_rate", "0");
        await p.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", p.JobStatus!.State, p.JobStatus.Reason);
        Assert.AreEqual(0, OnTarget(p, 2));
        Assert.AreEqual("ok", p.Query().Redundancy!.Health);
        CollectionAssert.AreEqual(model, await ReadAllAsync(img, model.Length));
        Assert.AreEqual(failedAtOpen, devs[2].GetFaultStats().IosFailed, "nothing after the open was sent to the excluded target");
        Assert.IsFalse(ras.WithId(RasIds.PoolReadOnly).Any());

        // The device answers again: the target comes back into the running pool (its real header is read then).
        devs[2].SetFaults("");
        var back = (await reopened.ReintegrateTargetAsync(2)).Single();
        Assert.IsTrue(back.JobStarted);
        await p.WaitForJobAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", p.JobStatus!.State, p.JobStatus.Reason);
        Assert.AreEqual(0, p.ExcludedTargets.Count);
        Assert.IsTrue(OnTarget(p, 2) > 0, "chunks moved back onto target 2");
        await reopened.DisposeAsync();
        var last = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = PlacementV2Tests.UpTo4() });
        var lp = await last.OpenPoolAsync("tank");
        Assert.AreEqual(0, lp.ExcludedTargets.Count);
        CollectionAssert.AreEqual(model, await ReadAllAsync(lp.OpenImage("c", "v"), model.Length));
        await last.DisposeAsync();
        foreach (var dev in devs)
            dev.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    [DataRow(true, "its superblock cannot be read: ", DisplayName = "the whole device fails")]
    [DataRow(false, "its shard header cannot be read: ", DisplayName = "the whole shard fails")]
    public async Task Open_TargetNotExcludedFails_RefusedNamingTargetAndErrorNothingWritten(bool device, string problem)
    {
        const int chunks = 60;
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, _) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", chunks * Cs, Cs);
        var model = TestDevices.Pattern(chunks * Cs, 22);
        await image.WriteAsync(0, model);
        await engine.DisposeAsync();
        var before = new[] { await WholeAsync(devs[0]), await WholeAsync(devs[2]) };
        devs[1].SetFaults(device ? Dead : DeadShard(devs[1]));

        var (reopened, ras) = await TestDevices.OpenAsync(devs, catalog: PlacementV2Tests.UpTo4());
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(() => reopened.OpenPoolAsync("tank"));
        StringAssert.StartsWith(e.Message, "pool 'tank' target 1 ('file:");
        StringAssert.Contains(e.Message, "cannot be read (" + problem);
        StringAssert.Contains(e.Message, "EIO");
        StringAssert.EndsWith(e.Message, "and is not excluded from the pool; refusing to open (nothing was written)");
        Assert.IsFalse(e.Message.Contains('\n'));
        StringAssert.Contains(ras.WithId(RasIds.CheckpointBad).Single().Message, "metadata on target 1 is unusable");
        await reopened.DisposeAsync();
        var after = new[] { await WholeAsync(devs[0]), await WholeAsync(devs[2]) };
        Assert.IsTrue(before[0].SequenceEqual(after[0]), "target 0 unchanged");
        Assert.IsTrue(before[1].SequenceEqual(after[1]), "target 2 unchanged");

        // Once the device answers, the pool opens with everything.
        devs[1].SetFaults("");
        var (healed, _) = await TestDevices.OpenAsync(devs, catalog: PlacementV2Tests.UpTo4());
        var p = await healed.OpenPoolAsync("tank");
        CollectionAssert.AreEqual(model, await ReadAllAsync(p.OpenImage("c", "v"), model.Length));
        await healed.DisposeAsync();
        foreach (var dev in devs)
            dev.Dispose();
    }
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Open_TailReplicaOnTargetNotExcludedCannotBeRead_RefusedNamingItNothingWritten()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, pool, _) = await PoolAsync(devs, 2);
        var image = await pool.CreateImageAsync("c", "v", 8 * Cs, Cs);
        var data = TestDevices.Pattern(Cs, 31);
        // The last round's chunk-map record has no later durable mark: replay verifies its replicas.
        await image.WriteAsync(0, data);
        int t;
        lock (pool.Meta.Sync)
            t = pool.Meta.Images[image.Id].Chunks[0].Replicas[1].Target;
        var shard = pool.Shards[t];
        long dataStart = shard.Base + shard.Header.DataOffset;
        await pool.CloseAsync(checkpoint: false);
        await engine.DisposeAsync();
        int[] others = [.. Enumerable.Range(0, 3).Where(i => i != t)];
        var before = new[] { await WholeAsync(devs[others[0]]), await WholeAsync(devs[others[1]]) };
        devs[t].SetFaults($"fail_every=1&fail_ops=read&fail_range={dataStart}-{dataStart + shard.Header.DataLength}");

        var (reopened, _) = await TestDevices.OpenAsync(devs, catalog: PlacementV2Tests.UpTo4());
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(() => reopened.OpenPoolAsync("tank"));
        StringAssert.StartsWith(e.Message, $"pool 'tank' target {t} ('file:");
        StringAssert.Contains(e.Message, "cannot be read (its data cannot be read to verify the log tail: ");
        StringAssert.EndsWith(e.Message, "and is not excluded from the pool; refusing to open (nothing was written)");
        await reopened.DisposeAsync();
        var after = new[] { await WholeAsync(devs[others[0]]), await WholeAsync(devs[others[1]]) };
        Assert.IsTrue(before[0].SequenceEqual(after[0]) && before[1].SequenceEqual(after[1]), "the other targets are unchanged");

        devs[t].SetFaults("");
        var (healed, _) = await TestDevices.OpenAsync(devs, catalog: PlacementV2Tests.UpTo4());
        var p = await healed.OpenPoolAsync("tank");
        Assert.IsTrue(p.ReplayedRecords > 0);
        Assert.AreEqual(0, p.DroppedTailRecords, "the record verified once its replica could be read");
        var back = new byte[Cs];
        await p.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
        await healed.DisposeAsync();
        foreach (var dev in devs)
            dev.Dispose();
    }
    [TestMethod]
    public async Task Open_TwoTargetsUnreadable_EngineRefusedNamingBoth()
    {
        var devs = MigrationKit.FileTargets(_dir, 3);
        var (engine, _, _) = await PoolAsync(devs, 2);
        await engine.DisposeAsync();
        devs[0].SetFaults(Dead);
        devs[2].SetFaults(Dead);
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(() => TestDevices.OpenAsync(devs, catalog: PlacementV2Tests.UpTo4()));
        StringAssert.StartsWith(e.Message, "2 device(s) cannot be read (file:");
        StringAssert.EndsWith(e.Message, "the engine cannot tell which target each is and does not start");
        StringAssert.Contains(e.Message, Path.Combine(_dir, "t0"));
        StringAssert.Contains(e.Message, Path.Combine(_dir, "t2"));
        foreach (var dev in devs)
            dev.Dispose();
    }
}
