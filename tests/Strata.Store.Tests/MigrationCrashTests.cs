using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Seeded crashes inside a data-moving upgrade action while a client writes, trims, resizes and
/// removes: format two or three CrashDisks, create a pool (rf 1 or 2) with images, start the job,
/// run client operations until the power fails at a random device command (in a quarter of the
/// runs after an injected EIO), bring the disks back with a random subset of unflushed writes
/// (one torn), sometimes crash again while the reopened pool resumes the job, reopen, let the job
/// finish, and check against the model: no acknowledged write lost, never wrong bytes, every extent
/// the map names in use and nothing else, the job completed.
/// </summary>
internal sealed class MigrationCrashWorkload(int seed, Func<MigrationOptions, IUpgradeAction> actionFor, uint to, Func<IUpgradeAction, LayoutCatalog>? catalogFor = null)
{
    private readonly PoolCreateOptions _options = new() { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024, LayoutVersion = to - 1 };
    private readonly JobClient _client = new(new Random(seed));
    private Random Rng => _client.Random;
    private CrashModel _model = new();

    /// <summary>Whether the job was seen resumed by a reopen (it was mid-way at the crash).</summary>
    public bool Resumed { get; private set; }

    /// <summary>Chunks not where the action's placement puts them (checked to be 0 at the end when set).</summary>
    public Func<Pool, int>? Misplaced { get; init; }

    public async Task RunAsync()
    {
        var options = new MigrationOptions { CursorEvery = Rng.Next(1, 9), InFlightPerTarget = Rng.Next(1, 5), WindowPerSlot = Rng.Next(1, 9), ResultsPerPlace = Rng.Next(1, 5) };
        var action = actionFor(options);
        var cat = (catalogFor ?? MigrationKit.Catalog)(action);
        // The injected EIO tests how the job meets a failed write (the pool read-only, then resumed);
        // a target leaving the pool after one is CrashTests' and TargetDropTests' subject.
        var engineOptions = new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan, DropTargetOnWriteError = false, Catalog = cat };
        var power = new CrashSwitch();
        int targets = Rng.Next(2, 4);
        var disks = Enumerable.Range(0, targets).Select(i => new CrashDisk($"m{i}", 4L << 20, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks, engineOptions);
        _model.Rf = Rng.Next(2) == 0 ? "2" : "1";
        var pool = await engine.CreatePoolAsync("p", targets * (1L << 20), int.Parse(_model.Rf), _options);
        await pool.CreateContainerAsync("c");
        await _client.SeedImagesAsync(pool, _model);

        int crashAfter = Rng.Next(1, 400);
        power.Reset(crashAfter, Rng.Next(4) == 0 ? Rng.Next(1, crashAfter + 1) : 0, new Random(Rng.Next()));
        CrashModel before = _model, after = _model;
        try
        {
            await pool.UpgradeAsync(to, dryRun: false);
            var job = pool.WaitForUpgradeAsync();
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
        power.CutPower();
        bool faulted = power.Faulted;

        power = new CrashSwitch();
        disks = disks.Select(d => d.AfterCrash(Rng, power)).ToArray();
        if (Rng.Next(3) == 0)
        {
            // Power fails again during recovery, which resumes the job inside the loop.
            power.Reset(Rng.Next(1, 200));
            try
            {
                var e = await StorageEngine.OpenAsync(disks, engineOptions);
                var p = await e.OpenPoolAsync("p");
                await p.WaitForUpgradeAsync();
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
        Resumed = ras.WithId(RasIds.PoolUpgradeResumed).Any();
        await pool.WaitForUpgradeAsync();
        var status = pool.GetUpgradeStatus();
        if (status.Status is "not started" or "failed")
        {
            // Not recorded before the crash, or failed by the injected device error (a chunk left
            // where it was, or the pool read-only under it): the same call runs it again.
            if (status.Status == "failed" && !faulted)
                throw new AssertFailedException($"seed {seed}: the job failed without an injected fault: {status.Reason}");
            await pool.UpgradeAsync(to, dryRun: false);
            await pool.WaitForUpgradeAsync();
            status = pool.GetUpgradeStatus();
        }
        if (status.Status != "completed" || pool.LayoutVersion != to)
            throw new AssertFailedException($"seed {seed}: job {status.Status} ({status.Reason}), layout {pool.LayoutVersion}");
        await CrashModel.VerifyAsync(pool, before, after, $"seed {seed}");
        var bad = ras.Events.FirstOrDefault(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable or RasIds.MigrationChunkLeft);
        if (bad != null)
            throw new AssertFailedException($"seed {seed}: unexpected RAS event {bad.Id}: {bad.Message}");
        long mapped = MigrationKit.MappedBytes(pool), used = MigrationKit.UsedBytes(pool);
        if (mapped != used)
            throw new AssertFailedException($"seed {seed}: the maps name {mapped} bytes, the allocators have {used} in use");
        if (Misplaced?.Invoke(pool) is > 0 and int n)
            throw new AssertFailedException($"seed {seed}: {n} chunk(s) are not where the new placement puts them");
        await engine.DisposeAsync();
    }
}

[TestClass]
public sealed class MigrationCrashTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Seeded crash runs of one action: 500 in CI (CrashSeeds says how to soak or replay a seed).</summary>
    internal static Task<int> RunAsync(Func<int, MigrationCrashWorkload> workload, TestContext context) =>
        CrashSeeds.RunAsync(500, async seed =>
        {
            var run = workload(seed);
            await run.RunAsync();
            return run.Resumed;
        }, context, resumedDivisor: 10);

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task MoveLoop_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostJobCompletes()
    {
        await RunAsync(seed => new MigrationCrashWorkload(seed, o => MigrationKit.RotateAction(o), 3), TestContext);
    }

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task PlacementV2_RandomCrashesWithClientWrites_NoAcknowledgedWriteLostEveryChunkPlacedV2()
    {
        await RunAsync(seed => new MigrationCrashWorkload(seed,
            o => new MigrationAction(pool => new PlacementMove(PlacementV2.Instance, pool.TargetCount), o), 4,
            action => PlacementV2Tests.UpTo4(action))
        {
            Misplaced = pool => MigrationKit.Misplaced(pool, PlacementV2.Instance),
        }, TestContext);
    }
}
