using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Layout 4 (<c>placement_v2</c>) as far as this build has it: placement v2 itself, and its action
/// run through a catalog whose layout 3 is a stand-in (supported, without its action) until layout 3
/// is registered in the default catalog.
/// </summary>
[TestClass]
public sealed class PlacementV2Tests
{
    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-pv2-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    /// <summary>This build's catalog, layout 4 running <paramref name="action"/> (default: its own).</summary>
    internal static LayoutCatalog UpTo4(IUpgradeAction? action = null)
    {
        var d = LayoutCatalog.Default;
        if (action == null)
            return d;
        var v4 = d[4] with { Features = [d[4].Features[0] with { Action = action }] };
        return new LayoutCatalog([.. d.Versions.Take(3), v4, .. d.Versions.Skip(4)], d.Releases);
    }

    [TestMethod]
    public void Targets_FrozenValues_AsDocumented()
    {
        // docs/format.md "Placement v2": a change here is a new placement, hence a new layout.
        foreach (var (image, chunk, targets, expect) in new (uint, long, int, int[])[]
                 {
                     (1, 0, 5, [1, 3, 0]), (1, 1, 5, [1, 0, 3]), (7, 123456, 3, [1, 2, 0]), (42, 99, 8, [4, 6, 3]), (3, 5, 2, [1, 0]),
                 })
        {
            var t = new int[expect.Length];
            PlacementV2.Instance.Targets(image, chunk, targets, t);
            CollectionAssert.AreEqual(expect, t, $"image {image} chunk {chunk} on {targets} targets");
            for (int r = 0; r < expect.Length; r++)
                Assert.AreEqual(expect[r], PlacementV2.Instance.Target(image, chunk, r, targets));
        }
    }

    [TestMethod]
    public void Targets_AnyRfUpToTargets_DistinctAndInRange()
    {
        for (int targets = 1; targets <= 9; targets++)
            for (int rf = 1; rf <= targets; rf++)
                for (long c = 0; c < 300; c++)
                {
                    var t = new int[rf];
                    PlacementV2.Instance.Targets((uint)(c % 7 + 1), c, targets, t);
                    Assert.IsTrue(t.All(x => x >= 0 && x < targets), $"{targets} targets rf {rf} chunk {c}: {string.Join(",", t)}");
                    Assert.AreEqual(rf, t.Distinct().Count(), $"{targets} targets rf {rf} chunk {c}: {string.Join(",", t)}");
                }
    }

    [TestMethod]
    public void AddingATarget_MovesAboutOneChunkInNPlusOne_WherePlacementV1MovesMost()
    {
        const int chunks = 20_000;
        int v2 = 0, v1 = 0, replicasV2 = 0;
        for (long c = 0; c < chunks; c++)
        {
            if (PlacementV2.Instance.Target(1, c, 0, 4) != PlacementV2.Instance.Target(1, c, 0, 5))
                v2++;
            if (PlacementV1.Instance.Target(1, c, 0, 4) != PlacementV1.Instance.Target(1, c, 0, 5))
                v1++;
            int[] before = new int[2], after = new int[2];
            PlacementV2.Instance.Targets(1, c, 4, before);
            PlacementV2.Instance.Targets(1, c, 5, after);
            replicasV2 += before.Count(t => !after.Contains(t));
        }
        TestContext.WriteLine($"4 -> 5 targets: placement v2 moves {v2} of {chunks} chunks (rf 2: {replicasV2} of {2 * chunks} replicas), v1 {v1}");
        Assert.IsTrue(v2 > chunks * 0.15 && v2 < chunks * 0.25, $"v2 moved {v2} of {chunks}");
        Assert.IsTrue(replicasV2 < 2 * chunks * 0.25, $"v2 moved {replicasV2} of {2 * chunks} replicas");
        Assert.IsTrue(v1 > chunks * 0.7, $"v1 moved {v1} of {chunks}");
    }

    private static async Task<(StorageEngine Engine, Pool Pool, InMemoryRasSink Ras)> Layout3PoolAsync(IBlockDevice[] devs, int rf, long bytesPerTarget, LayoutCatalog? catalog = null)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = catalog ?? UpTo4() });
        var pool = await engine.CreatePoolAsync("tank", devs.Length * bytesPerTarget, rf, TestDevices.SmallPool with { LayoutVersion = 3 });
        await pool.CreateContainerAsync("c");
        return (engine, pool, ras);
    }

    [TestMethod]
    [DataRow(1, 2)]
    [DataRow(2, 3)]
    public async Task Upgrade3To4_ChunksMoveToPlacementV2_DataIntactAndNewWritesPlacedV2(int rf, int targets)
    {
        const int cs = 65536;
        var devs = MigrationKit.FileTargets(_dir, targets);
        var (engine, pool, ras) = await Layout3PoolAsync(devs, rf, 8L << 20);
        var a = await pool.CreateImageAsync("c", "a", 40 * cs, cs);
        var dataA = TestDevices.Pattern(40 * cs, 1);
        await a.WriteAsync(0, dataA);
        var b = await pool.CreateImageAsync("c", "b", 30 * 4096, 4096);
        var dataB = TestDevices.Pattern(30 * 4096, 2);
        await b.WriteAsync(0, dataB);
        int misplaced = MigrationKit.Misplaced(pool, PlacementV2.Instance);
        Assert.IsTrue(misplaced > 0, "some chunks are not where placement v2 puts them");

        var plan = await pool.UpgradeAsync(4, dryRun: false);
        Assert.AreEqual("data_movement", plan.Actions.Single().Kind);
        await pool.WaitForUpgradeAsync();

        var status = pool.GetUpgradeStatus();
        Assert.AreEqual("completed", status.Status, status.Reason);
        Assert.AreEqual(4u, pool.LayoutVersion);
        Assert.AreEqual(70, status.ItemsDone);
        Assert.AreEqual(plan.Actions[0].BytesToMove, status.BytesDone, "the loop wrote what the estimate said would move");
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, PlacementV2.Instance));
        Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool));
        CollectionAssert.AreEqual(dataA, await ReadAsync(a, dataA.Length));
        CollectionAssert.AreEqual(dataB, await ReadAsync(b, dataB.Length));

        var c = await pool.CreateImageAsync("c", "new", 20 * cs, cs);
        await c.WriteAsync(0, TestDevices.Pattern(20 * cs, 3));
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, PlacementV2.Instance), "writes after the upgrade use placement v2");
        Assert.IsFalse(ras.WithId(RasIds.DataChecksumMismatch).Any());
        await engine.DisposeAsync();

        var reopened = await (await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = UpTo4() })).OpenPoolAsync("tank");
        Assert.AreEqual(4u, reopened.LayoutVersion);
        Assert.AreEqual(0, MigrationKit.Misplaced(reopened, PlacementV2.Instance));
        CollectionAssert.AreEqual(dataA, await ReadAsync(reopened.OpenImage("c", "a"), dataA.Length));
        await reopened.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task ClientWrite_WhileTheActionRuns_GoesToPlacementV2()
    {
        const int cs = 16384;
        var devs = MigrationKit.FileTargets(_dir, 2);
        var spy = new CursorSpyAction(new MigrationAction(pool => new PlacementMove(PlacementV2.Instance, pool.TargetCount), new MigrationOptions { CursorEvery = 1 }));
        var (engine, pool, _) = await Layout3PoolAsync(devs, 1, 8L << 20, UpTo4(spy));
        var image = await pool.CreateImageAsync("c", "v", 40 * cs, cs);
        await image.WriteAsync(0, TestDevices.Pattern(40 * cs, 15));
        // A chunk near the end that placement v2 puts elsewhere than v1.
        long chunk = Enumerable.Range(20, 20).First(c => PlacementV1.Instance.Target(image.Id, c, 0, 2) != PlacementV2.Instance.Target(image.Id, c, 0, 2));
        await pool.SetPropertyAsync("migrate_rate", "1");
        await pool.UpgradeAsync(4, dryRun: false);
        await spy.Saved;

        // The throttle holds the loop before that chunk; a client rewrite of it already lands where
        // placement v2 puts it, so the loop never chases client writes.
        await image.WriteAsync(chunk * cs, TestDevices.Pattern(cs, 16));
        Assert.AreEqual(PlacementV2.Instance.Target(image.Id, chunk, 0, 2), (int)pool.Meta.Images[image.Id].Chunks[chunk].Replicas[0].Target);
        Assert.AreEqual(3u, pool.LayoutVersion);
        await pool.SetPropertyAsync("migrate_rate", "0");
        await pool.WaitForUpgradeAsync(TestContext.CancellationToken);
        Assert.AreEqual("completed", pool.GetUpgradeStatus().Status);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, PlacementV2.Instance));
        await engine.DisposeAsync();
        foreach (var d in devs)
            d.Dispose();
    }

    [TestMethod]
    public async Task Action_RunRandomTimesFromRandomSavedCursors_SameResult()
    {
        const int cs = 8192;
        string? reference = null;
        for (int seed = 1; seed <= 8; seed++)
        {
            var rng = new Random(seed);
            var (engine, pool, _) = await Layout3PoolAsync(TestDevices.Memory(3), 2, 4L << 20);
            var image = await pool.CreateImageAsync("c", "v", 60 * cs, cs);
            var data = TestDevices.Pattern(60 * cs, 21);
            await image.WriteAsync(0, data);
            var feature = pool.Catalog.Find("placement_v2")!;
            var action = new MigrationAction(p => new PlacementMove(PlacementV2.Instance, p.TargetCount), new MigrationOptions { CursorEvery = rng.Next(1, 6) });
            var cursors = new List<ulong> { 0 };
            // Each run starts from a cursor some earlier run saved; some are stopped part-way.
            for (int run = rng.Next(1, 5); run > 0; run--)
            {
                using var stop = new CancellationTokenSource();
                int saves = 0, stopAt = rng.Next(2) == 0 ? rng.Next(1, 10) : int.MaxValue;
                var ctx = new UpgradeContext(pool, feature, c =>
                {
                    cursors.Add(c);
                    if (++saves == stopAt)
                        stop.Cancel();
                    return Task.CompletedTask;
                }, (_, _) => { });
                try
                {
                    await action.RunAsync(ctx, cursors[rng.Next(cursors.Count)], stop.Token);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                }
            }
            await action.RunAsync(new UpgradeContext(pool, feature, _ => Task.CompletedTask, (_, _) => { }), cursors[rng.Next(cursors.Count)], CancellationToken.None);

            Assert.AreEqual(0, MigrationKit.Misplaced(pool, PlacementV2.Instance), $"seed {seed}");
            // The switches are writeback commits: their sources come back once a flush makes them
            // durable, as the job's end does (this calls the action without a job).
            await pool.Log.FlushAsync();
            Assert.AreEqual(MigrationKit.MappedBytes(pool), MigrationKit.UsedBytes(pool), $"seed {seed}");
            CollectionAssert.AreEqual(data, await ReadAsync(image, data.Length), $"seed {seed}");
            string targets;
            lock (pool.Meta.Sync)
                targets = string.Join(";", pool.Meta.Images[image.Id].Chunks.OrderBy(kv => kv.Key).Select(kv => string.Join(",", kv.Value.Replicas.Select(r => r.Target))));
            reference ??= targets;
            Assert.AreEqual(reference, targets, $"seed {seed}: every chunk's replicas are where every other seed put them");
            await engine.DisposeAsync();
        }
    }

    private static async Task<byte[]> ReadAsync(Image image, int length)
    {
        var buf = new byte[length];
        await image.ReadAsync(0, buf);
        return buf;
    }

    /// <summary>What the precondition must ask for, computed here from the two placements directly.</summary>
    private static (long Move, long Need) Expected(Pool pool, int cs)
    {
        var growth = new long[pool.TargetCount];
        long move = 0;
        lock (pool.Meta.Sync)
        {
            foreach (var img in pool.Meta.Images.Values)
                foreach (var (index, map) in img.Chunks)
                {
                    var want = new int[map.Replicas.Length];
                    PlacementV2.Instance.Targets(img.Id, index, pool.TargetCount, want);
                    // At layout 3 a chunk above 4 KiB moves with its 4 KiB block table.
                    int extent = map.ExtentLength(img.ChunkSize);
                    foreach (int t in want.Where(t => !map.Replicas.Any(r => r.Target == t)))
                    {
                        growth[t] += extent;
                        move += extent;
                    }
                    foreach (var r in map.Replicas.Where(r => !want.Contains(r.Target)))
                        growth[r.Target] -= extent;
                }
        }
        return (move, Math.Max(0, growth.Max()) + 4L * cs);
    }

    [TestMethod]
    public async Task Upgrade3To4_FullestTargetCannotHoldWhatMoves_RefusedWithTheFigureChangingNothing()
    {
        const int cs = 65536;
        var devs = TestDevices.Memory(2, 4L << 20);
        var (engine, pool, _) = await Layout3PoolAsync(devs, 1, 2L << 20);
        var image = await pool.CreateImageAsync("c", "v", 64L * cs, cs);
        // Fill until the targets have less room than the copies in flight need.
        for (int c = 0; c < 64 && pool.Query().Targets.Min(t => t.FreeBytes) >= 4 * cs; c++)
            await image.WriteAsync((long)c * cs, TestDevices.Pattern(cs, c));
        var (move, need) = Expected(pool, cs);
        long free = pool.Query().Targets.Min(t => t.FreeBytes);
        Assert.IsTrue(need > free, $"the test pool needs {need} and has {free}");

        var dry = await pool.UpgradeAsync(4, dryRun: true);
        Assert.AreEqual(move, dry.Actions.Single().BytesToMove);
        var check = dry.Preconditions.Single(p => p.Name == "free space");
        Assert.IsFalse(check.Ok);
        var e = await Assert.ThrowsExactlyAsync<NoSpaceException>(() => pool.UpgradeAsync(4, dryRun: false));
        Assert.AreEqual($"no space left in pool 'tank' for the upgrade: data movement needs {need} bytes per target, the fullest target has {free} free", e.Message);
        Assert.AreEqual(3u, pool.LayoutVersion);
        Assert.AreEqual("not started", pool.GetProperty("upgrade_status"));

        // Room again: the same check passes and the upgrade runs.
        await pool.RemoveImageAsync("c", "v");
        var small = await pool.CreateImageAsync("c", "w", 8L * cs, cs);
        await small.WriteAsync(0, TestDevices.Pattern(8 * cs, 5));
        (_, need) = Expected(pool, cs);
        var ok = (await pool.UpgradeAsync(4, dryRun: true)).Preconditions.Single(p => p.Name == "free space");
        Assert.IsTrue(ok.Ok, ok.Detail);
        StringAssert.Contains(ok.Detail, $"needs {need} bytes per target");
        await engine.DisposeAsync();
    }
}
