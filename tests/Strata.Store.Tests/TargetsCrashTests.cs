using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Seeded crashes inside `pool extend` (2-3 targets grown by one) and inside an exclusion and its
/// rebuild (rf 2 on 3 targets) while a client writes, trims, resizes and removes, on CrashDisks:
/// the power fails at a random device command (in a quarter of the runs after an injected EIO),
/// the disks come back with a random subset of unflushed writes (one torn), sometimes fail again
/// while the reopened pool resumes the job; then the job is finished (or asked for again when it
/// was not durable yet) and the pool is checked against the model: no acknowledged write lost,
/// never wrong bytes, the allocators match the maps, every chunk where the placement puts it.
/// With <paramref name="reintegrate"/> the target is excluded (and part or all of its rebuild runs,
/// with client writes) before the power is armed, and the crashes land in its reintegration; with
/// <paramref name="rfChange"/> they land in an rf change (1 -> 2 or 2 -> 1) of a pool with data.
/// With <paramref name="targetFails"/> (and reintegrate) the reintegrating target's disk stops writing
/// after a random number of its commands and the pool drops failing targets (no other fault): the
/// reintegration is refused or its job fails, clients see no error before the power fails, and after
/// the reopen the target, excluded again or not, is reintegrated and the model checked.
/// </summary>
internal sealed class TargetsCrashWorkload(int seed, bool rebuild, bool reintegrate = false, bool rfChange = false, bool targetFails = false)
{
    private string _rfWant = "";

    private readonly PoolCreateOptions _options = new() { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024, LayoutVersion = 4 };
    private readonly JobClient _client = new(new Random(seed));
    private Random Rng => _client.Random;
    private CrashModel _model = new();

    public bool Resumed { get; private set; }

    /// <summary>With targetFails: the disk failed a write before the crash (not the crash's own errors).</summary>
    public bool Failed { get; private set; }

    /// <summary>With targetFails: the pool dropped the target for that failure while it rejoined the log, or after.</summary>
    public bool DroppedRejoining { get; private set; }

    public bool DroppedInJob { get; private set; }

    public async Task RunAsync()
    {
        // The injected EIO tests how the job meets a failed write (the pool read-only, then resumed);
        // a target leaving the pool after one is CrashTests' and TargetDropTests' subject.
        var engineOptions = new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan, DropTargetOnWriteError = targetFails, Catalog = PlacementV2Tests.UpTo4() };
        var power = new CrashSwitch();
        int targets = rebuild || rfChange ? 3 : Rng.Next(2, 4);
        var disks = Enumerable.Range(0, targets + (rebuild || rfChange ? 0 : 1)).Select(i => new CrashDisk($"m{i}", 4L << 20, power)).ToArray();
        var firstRas = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(disks[..targets], engineOptions with { Ras = firstRas });
        _model.Rf = rebuild || Rng.Next(2) == 0 ? "2" : "1";
        var pool = await engine.CreatePoolAsync("p", targets * (1L << 20), int.Parse(_model.Rf), _options);
        await pool.CreateContainerAsync("c");
        if (Rng.Next(2) == 0)
            await pool.SetPropertyAsync("migrate_rate", (Rng.Next(64, 512) * 1024).ToString(System.Globalization.CultureInfo.InvariantCulture));
        await _client.SeedImagesAsync(pool, _model);
        if (!rebuild && !rfChange)
            await engine.AddTargetAsync(disks[targets]);
        _rfWant = _model.Rf == "1" ? "2" : "1";
        int excluded = Rng.Next(targets);
        if (reintegrate)
        {
            // Out before the power is armed: its unflushed writes may be gone after the crash, and
            // the replicas that then fail their CRC must never be served.
            await engine.ExcludeTargetAsync(excluded);
            if (Rng.Next(2) == 0)
                await pool.WaitForJobAsync();
            for (int i = Rng.Next(0, 8); i > 0; i--)
                await _client.OneOpAsync(pool, _model);
        }

        int crashAfter = Rng.Next(1, 400);
        var failing = disks[excluded];
        if (targetFails)
        {
            failing.FailWritesAfter = Rng.Next(1, 150);
            power.Reset(crashAfter, 0, new Random(Rng.Next()));
        }
        else
            power.Reset(crashAfter, Rng.Next(4) == 0 ? Rng.Next(1, crashAfter + 1) : 0, new Random(Rng.Next()));
        CrashModel before = _model, after = _model;
        try
        {
            try
            {
                await StartAsync(engine, pool, excluded);
            }
            catch (InvalidRequestException e) when (targetFails && failing.WritesFailed && !power.Crashed)
            {
                // Its check's flush or its rejoin failed: it stays excluded, the pool goes on.
                if (!pool.IsExcluded(excluded) || pool.State != PoolStatus.Ready)
                    throw new AssertFailedException($"seed {seed}: reintegration refused ({e.Message}) but the target is not excluded or the pool not ready ({pool.ReadOnlyReason})");
            }
            var job = pool.WaitForJobAsync();
            for (int i = 0; i < 40 && !job.IsCompleted && !power.Crashed; i++)
            {
                after = _model.Clone();
                await _client.OneOpAsync(pool, after);
                _model = after;
                before = after;
            }
            await job;
        }
        catch (Exception) when (power.Crashed || power.Faulted)
        {
        }
        if (targetFails)
        {
            Failed = failing.WritesFailed;
            var drops = firstRas.WithId(RasIds.TargetDropped).Where(e => e.Target == excluded && e.Message.Contains("the disk stopped writing")).ToList();
            DroppedRejoining = drops.Any(e => e.Message.Contains("which was rejoining it"));
            DroppedInJob = drops.Any(e => !e.Message.Contains("which was rejoining it"));
            if (!power.Crashed && pool.State != PoolStatus.Ready)
                throw new AssertFailedException($"seed {seed}: the target's failed write made the pool {pool.State}: {pool.ReadOnlyReason}");
            if (firstRas.WithId(RasIds.PoolReadOnly).FirstOrDefault() is { } ro && !power.Crashed)
                throw new AssertFailedException($"seed {seed}: {ro.Message}");
        }
        power.CutPower();
        bool faulted = power.Faulted || failing.WritesFailed;

        power = new CrashSwitch();
        disks = disks.Select(d => d.AfterCrash(Rng, power)).ToArray();
        var middleRas = new InMemoryRasSink();
        if (Rng.Next(3) == 0)
        {
            power.Reset(Rng.Next(1, 200));
            try
            {
                var e = await StorageEngine.OpenAsync(disks, engineOptions with { Ras = middleRas });
                var p = await e.OpenPoolAsync("p");
                await p.WaitForJobAsync();
            }
            catch (Exception) when (power.Crashed)
            {
            }
            power.CutPower();
            power = new CrashSwitch();
            disks = disks.Select(d => d.AfterCrash(Rng, power)).ToArray();
        }

        var ras = new InMemoryRasSink();
        engine = await StorageEngine.OpenAsync(disks, engineOptions with { Ras = ras });
        pool = await engine.OpenPoolAsync("p");
        Resumed = ras.WithId(RasIds.PoolExtendResumed).Any() || ras.WithId(RasIds.PoolRebuildResumed).Any()
            || ras.WithId(RasIds.PoolReintegrateResumed).Any() || ras.WithId(RasIds.PoolRfChangeResumed).Any();
        await pool.WaitForJobAsync();
        bool done = rfChange ? pool.GetProperty("rf") == _rfWant && pool.GetProperties().GetValueOrDefault(Pool.JobProp, Pool.NoJob) == Pool.NoJob
            : reintegrate ? !pool.IsExcluded(excluded) : rebuild ? pool.IsExcluded(excluded) : pool.TargetCount == targets + 1;
        if (!done || pool.JobStatus is { State: "failed" })
        {
            // Not durable before the crash (or failed by the injected device error): asked for again.
            if (pool.JobStatus is { State: "failed" } f && !faulted)
                throw new AssertFailedException($"seed {seed}: the job failed without an injected fault: {f.Reason}");
            if (rfChange)
                await pool.SetPropertyAsync("rf", _rfWant);
            else if (reintegrate && pool.IsExcluded(excluded))
                await engine.ReintegrateTargetAsync(excluded);
            else if (reintegrate)
                throw new AssertFailedException($"seed {seed}: the reintegration job {pool.JobStatus?.State} after the reopen: {pool.JobStatus?.Reason}");
            else if (rebuild && !pool.IsExcluded(excluded))
                await engine.ExcludeTargetAsync(excluded);
            else if (!rebuild)
                await pool.ExtendAsync(dryRun: false);
            await pool.WaitForJobAsync();
        }
        if (reintegrate && (pool.IsExcluded(excluded) || pool.RunningJob != null))
            throw new AssertFailedException($"seed {seed}: target {excluded} still excluded or the reintegration still runs");
        if (reintegrate && MigrationKit.NotAtRf(pool) is > 0 and int offRf)
            throw new AssertFailedException($"seed {seed}: {offRf} chunk(s) do not have {pool.Rf} replicas on distinct targets");
        if (rebuild && !reintegrate && (!pool.IsExcluded(excluded) || pool.RunningJob != null))
            throw new AssertFailedException($"seed {seed}: target {excluded} not excluded or the rebuild still runs");
        if (rfChange && (pool.GetProperty("rf") != _rfWant || MigrationKit.NotAtRf(pool) is > 0))
            throw new AssertFailedException($"seed {seed}: rf is {pool.GetProperty("rf")} (wanted {_rfWant}) and {MigrationKit.NotAtRf(pool)} chunk(s) do not have that many replicas; job {pool.JobStatus?.State}: {pool.JobStatus?.Reason}; RAS: {string.Join(" | ", ras.Events.Select(e => e.Id + ": " + e.Message))}");
        if (rfChange)
        {
            before.Rf = _rfWant;
            after.Rf = _rfWant;
        }
        if (!rebuild && !rfChange && pool.TargetCount != targets + 1)
            throw new AssertFailedException($"seed {seed}: the pool is on {pool.TargetCount} targets, not {targets + 1}");
        if (pool.GetProperties().GetValueOrDefault(Pool.JobProp, Pool.NoJob) != Pool.NoJob)
            throw new AssertFailedException($"seed {seed}: job {pool.GetProperty(Pool.JobProp)} still recorded ({pool.JobStatus?.State}: {pool.JobStatus?.Reason})");
        await CrashModel.VerifyAsync(pool, before, after, $"seed {seed}");
        var bad = ras.Events.FirstOrDefault(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable or RasIds.MigrationChunkLeft);
        if (bad != null)
            throw new AssertFailedException($"seed {seed}: unexpected RAS event {bad.Id}: {bad.Message}");
        long mapped = MigrationKit.MappedBytes(pool), used = pool.Shards.Where(s => !pool.IsExcluded(s.Index)).Sum(s => s.Allocator.UsedBytes);
        if (mapped != used)
            throw new AssertFailedException($"seed {seed}: the maps name {mapped} bytes, the allocators have {used} in use");
        // Chunks written after a drop follow its exclusion in memory; a crash before the checkpoint that
        // records it replays them with the target back in: off their place (rf copies on live targets,
        // data verified), until their next write or job moves them (docs/format.md, "A job ending across a drop").
        bool dropNotDurable = targetFails && (firstRas.WithId(RasIds.TargetDropped).Any() || middleRas.WithId(RasIds.TargetDropped).Any());
        if (MigrationKit.Misplaced(pool, pool.Placement) is > 0 and int n && !dropNotDurable)
        {
            // Which chunks, the pool's job state and every RAS event of the run: what a replay needs.
            var sb = new System.Text.StringBuilder();
            lock (pool.Meta.Sync)
                foreach (var img in pool.Meta.Images.Values)
                    foreach (var (index, map) in img.Chunks)
                    {
                        var want = new int[map.Replicas.Length];
                        pool.Placement.Targets(img.Id, index, pool.TargetCount, want);
                        if (!map.Replicas.Select(r => (int)r.Target).Order().SequenceEqual(want.Order()))
                            sb.AppendLine($"image {img.Id} chunk {index}: on {string.Join(",", map.Replicas.Select(r => r.Target))} want {string.Join(",", want)}");
                    }
            sb.AppendLine($"excluded {excluded} rf {pool.Rf} targets {pool.TargetCount} faulted {faulted} props {string.Join(" ", pool.GetProperties().Select(kv => kv.Key + "=" + kv.Value))} job {pool.JobStatus}");
            foreach (var (name, sink) in new[] { ("first", firstRas), ("middle", middleRas), ("last", ras) })
                foreach (var e in sink.Events)
                    sb.AppendLine($"{name}: {e.Id} {e.Message}");
            throw new AssertFailedException($"seed {seed}: {n} chunk(s) are not where the placement puts them\n{sb}");
        }
        await engine.DisposeAsync();
    }

    private async Task StartAsync(StorageEngine engine, Pool pool, int excluded)
    {
        if (rfChange)
            await pool.SetPropertyAsync("rf", _rfWant);
        else if (reintegrate)
            await engine.ReintegrateTargetAsync(excluded);
        else if (rebuild)
            await engine.ExcludeTargetAsync(excluded);
        else
            await pool.ExtendAsync(dryRun: false);
    }
}

[TestClass]
public sealed class TargetsCrashTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Seeded runs in CI (CrashSeeds says how to soak or replay a seed).</summary>
    private const int CiRuns = 300;

    private Task RunAsync(bool rebuild, bool reintegrate = false, bool rfChange = false) => RunCountedAsync(rebuild, reintegrate, rfChange);

    private Task<int> RunCountedAsync(bool rebuild, bool reintegrate = false, bool rfChange = false, Action<TargetsCrashWorkload>? done = null) =>
        CrashSeeds.RunAsync(CiRuns, async seed =>
        {
            var run = new TargetsCrashWorkload(seed, rebuild, reintegrate, rfChange, targetFails: done != null);
            await run.RunAsync();
            done?.Invoke(run);
            return run.Resumed;
        }, TestContext, resumedDivisor: 20);

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public Task Extend_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostPoolOnEveryTarget() => RunAsync(rebuild: false);

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public Task ExcludeAndRebuild_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostNothingLeftOnTheTarget() => RunAsync(rebuild: true);

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public Task Reintegrate_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostNoBadReplicaServedRfRestored() => RunAsync(rebuild: true, reintegrate: true);

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public Task RfChange_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostEveryChunkAtTheNewRf() => RunAsync(rebuild: false, rfChange: true);

    /// <summary>The reintegrating target's disk stops writing mid-way (drops on); crashes anywhere.</summary>
    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task ReintegrateTargetFails_RandomCrashesWithClientWrites_NoClientErrorNoAcknowledgedWriteLost()
    {
        int failed = 0, rejoining = 0, inJob = 0;
        int runs = CrashSeeds.FromEnvironment(CiRuns).Runs;
        await RunCountedAsync(rebuild: true, reintegrate: true, done: run =>
        {
            if (run.Failed)
                Interlocked.Increment(ref failed);
            if (run.DroppedRejoining)
                Interlocked.Increment(ref rejoining);
            if (run.DroppedInJob)
                Interlocked.Increment(ref inJob);
        });
        TestContext.WriteLine($"{failed} run(s) had the target fail a write before the crash; the pool dropped it while it rejoined in {rejoining}, after in {inJob}");
        if (runs >= 100)
        {
            Assert.IsGreaterThan(runs / 30, rejoining, "the target failed while it rejoined the log in some runs");
            Assert.IsGreaterThan(runs / 30, inJob, "the target failed during the job in some runs");
        }
    }
}
