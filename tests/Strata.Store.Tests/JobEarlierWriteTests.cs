using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Store.Tests.TargetsTestKit;

namespace Strata.Store.Tests;

/// <summary>
/// A client write that chose its chunk's targets before a pool job changed where chunks go (extend,
/// rf change, rebuild, reintegration; and the placement v2 upgrade), and commits while the job runs or
/// after it: the job does not end with that chunk off the placement or short of the rf the pool then claims.
/// </summary>
[TestClass]
public sealed class JobEarlierWriteTests
{
    private const int Cs = 4096;
    private const int Chunks = 64;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>An unmapped chunk (of the image's second half) that <paramref name="fits"/>.</summary>
    private static long UnmappedChunk(Func<long, bool> fits)
    {
        for (long c = Chunks / 2; c < Chunks; c++)
            if (fits(c))
                return c;
        throw new InvalidOperationException("no chunk fits");
    }

    /// <summary>Whether placement v2 puts a replica of the chunk on target <paramref name="on"/> of 3 (rf <paramref name="rf"/>).</summary>
    private static bool PlacedOn(Image image, long chunk, int rf, int on)
    {
        var want = new int[rf];
        PlacementV2.Instance.Targets(image.Id, chunk, 3, want);
        return want.Contains(on);
    }

    /// <summary>
    /// The writer to an unmapped chunk chooses its targets (and copy count), then its data write is held in
    /// the device; the job starts and is let run until it either ends or waits for the writers that came
    /// before it; then the write goes on and commits. Once the job has completed, every mapped chunk is
    /// where the pool's placement puts it, with the rf the pool claims, and nothing is left on an excluded
    /// target. Without the job's wait for earlier writes (Pool.RunJobAsync), the job completes while the
    /// write is held and the chunk stays as its writer placed it; the upgrade's action drains them by
    /// closing the gate once (Pool.DrainEarlierWritesAsync).
    /// </summary>
    [TestMethod]
    [DataRow("extend")]
    [DataRow("rf")]
    [DataRow("exclude")]
    [DataRow("reintegrate")]
    [DataRow("upgrade")]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Job_WriteChoseTargetsBeforeTheJobCommitsDuringIt_JobEndsWithEveryChunkWhereThePoolClaims(string job)
    {
        // Once armed, the first data write on any of the devices is held.
        var hold = new IoHold();
        var devs = Enumerable.Range(0, 3).Select(i => new HoldingDisk($"d{i}", hold,
            (d, op, offset, _) => op == IoOpcode.Write && offset >= Volatile.Read(ref d.From))).ToArray();
        int rf = job is "extend" or "rf" or "upgrade" ? 1 : 2;
        var (engine, pool, ras) = await PoolAsync(job == "extend" ? devs[..2] : devs, rf, layout: job == "upgrade" ? 3u : 4u);
        var image = await pool.CreateImageAsync("c", "v", Chunks * Cs, Cs);
        var model = new byte[Chunks * Cs];
        TestDevices.Pattern(Chunks / 2 * Cs, 1).CopyTo(model, 0);
        await image.WriteAsync(0, model.AsMemory(0, Chunks / 2 * Cs));

        if (job == "reintegrate")
        {
            await engine.ExcludeTargetAsync(2);
            await pool.WaitForJobAsync(TestContext.CancellationToken);
            Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        }
        // A chunk the job would place elsewhere than its writer: on the new target, with a copy on the
        // target about to be excluded, (reintegration) with a copy on the target coming back, (upgrade)
        // elsewhere with placement v2 than with v1, on a target whose writes are held. An rf change: any
        // chunk (its writer gives it one copy).
        long chunk = job switch
        {
            "rf" => Chunks - 1,
            "upgrade" => UnmappedChunk(c => PlacementV1.Instance.Target(image.Id, c, 0, 3) is int t && t < 2 && t != PlacementV2.Instance.Target(image.Id, c, 0, 3)),
            _ => UnmappedChunk(c => PlacedOn(image, c, rf, 2)),
        };

        // The held write is on targets 0 and 1 only: an excluded target's writes are not what is held.
        foreach (var s in pool.Shards.Where(s => s.Index < 2))
            Volatile.Write(ref ((HoldingDisk)s.Device).From, s.Base + s.Header.DataOffset);
        hold.Arm();
        var data = TestDevices.Pattern(Cs, 2);
        var write = image.WriteAsync(chunk * Cs, data, durable: false).AsTask();
        await hold.Held.Task.WaitAsync(TestContext.CancellationToken);
        data.CopyTo(model, chunk * Cs);

        // A pool job waits for the earlier writes without holding new ones; an upgrade's action closes the gate.
        var waiting = Task.WhenAny(pool.Gate.WaitingForEarlier, pool.Gate.Closing);
        switch (job)
        {
            case "extend":
                await engine.AddTargetAsync(devs[2]);
                Assert.IsTrue((await pool.ExtendAsync(dryRun: false)).Started);
                break;
            case "rf":
                await pool.SetPropertyAsync("rf", "2");
                break;
            case "exclude":
                Assert.IsTrue((await engine.ExcludeTargetAsync(2)).Single().RebuildStarted);
                break;
            case "reintegrate":
                Assert.IsTrue((await engine.ReintegrateTargetAsync(2)).Single().JobStarted);
                break;
            case "upgrade":
                await pool.UpgradeAsync(4, dryRun: false);
                break;
        }
        // The job ends, or waits for the held write: either way the write goes on now.
        Task Done() => job == "upgrade" ? pool.WaitForUpgradeAsync(TestContext.CancellationToken) : pool.WaitForJobAsync(TestContext.CancellationToken);
        await Task.WhenAny(Done(), waiting).WaitAsync(TestContext.CancellationToken);
        hold.Release.TrySetResult();
        await write.WaitAsync(TestContext.CancellationToken);
        await Done();

        if (job == "upgrade")
        {
            var status = pool.GetUpgradeStatus();
            Assert.AreEqual("completed", status.Status, status.Reason);
            Assert.AreEqual(4u, pool.LayoutVersion);
        }
        else
            Assert.AreEqual("completed", pool.JobStatus!.State, pool.JobStatus.Reason);
        Assert.AreEqual(job == "rf" ? 2 : rf, pool.Rf);
        Assert.AreEqual(3, pool.TargetCount);
        lock (pool.Meta.Sync)
            TestContext.WriteLine($"{job}: chunk {chunk} at targets {string.Join(",", pool.Meta.Images[image.Id].Chunks[chunk].Replicas.Select(r => r.Target))}");
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, pool.Placement), "every chunk is where the pool's placement puts it");
        Assert.AreEqual(0, MigrationKit.NotAtRf(pool), "every chunk has the rf the pool claims");
        foreach (int t in pool.ExcludedTargets)
            Assert.AreEqual(0, OnTarget(pool, t), $"nothing is left on excluded target {t}");
        Assert.AreEqual("ok", pool.Query().Redundancy!.Health);
        CollectionAssert.AreEqual(model, await ReadAllAsync(image, model.Length));
        await engine.DisposeAsync();
    }
}
