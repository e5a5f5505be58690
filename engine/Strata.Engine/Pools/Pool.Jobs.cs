using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>A data-moving job of a pool other than an upgrade (extend), as `pool query` shows it.</summary>
public sealed record PoolJobStatus(string Kind, string State, long ItemsDone, long ItemsTotal, long BytesDone, long BytesTotal,
    double? BytesPerSecond, string? Current, string? Reason);

/// <summary>
/// Jobs that move chunks on the migration loop for the pool's targets rather than for its layout
/// (docs/operations.md, "Extending a pool"). The job is durable as two pool properties written
/// through the log: <c>job</c> (its kind, or none) and <c>job_cursor</c> (the loop's cursor), so
/// a crash, a kill or a clean close resumes it at the next open. One job at a time, never during
/// an upgrade (each registers as a pool operation, which an upgrade's preconditions refuse).
/// </summary>
public sealed partial class Pool
{
    internal const string JobProp = "job";
    internal const string JobCursorProp = "job_cursor";
    internal const string NoJob = "none";
    internal const string ExtendJob = "extend";

    private readonly CancellationTokenSource _jobStop = new();
    private Task? _jobTask;
    private JobRun? _jobRun;

    /// <summary>The running or last job since the pool opened, or null.</summary>
    public PoolJobStatus? JobStatus
    {
        get
        {
            var run = _jobRun;
            if (run == null)
                return null;
            double secs = run.Elapsed.TotalSeconds;
            long bytes = Interlocked.Read(ref run.BytesDone);
            return new PoolJobStatus(run.Kind, run.State, Interlocked.Read(ref run.ItemsDone), run.ItemsTotal, bytes, run.BytesTotal,
                secs > 0 ? bytes / secs : null, run.Current, run.Reason);
        }
    }

    /// <summary>The kind of the job that is running now, or null.</summary>
    public string? RunningJob => _jobTask is { IsCompleted: false } ? _jobRun?.Kind : null;

    /// <summary>Waits until the running job (if any) stops: completed, failed, or stopped by a close.</summary>
    public async Task WaitForJobAsync(CancellationToken ct = default)
    {
        var t = _jobTask;
        if (t != null)
            await t.WaitAsync(ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    private string? DurableJob()
    {
        lock (Meta.Sync)
            return Meta.Props.TryGetValue(JobProp, out var j) && j != NoJob ? j : null;
    }

    /// <summary>At open: a job the log says is unfinished starts again from its saved cursor.</summary>
    internal void ResumeJobIfNeeded()
    {
        if (State != PoolStatus.Ready)
            return;
        // Excluded targets still holding replicas that have a copy elsewhere, and no job: a rebuild that
        // could not start when the target was excluded (an upgrade ran) starts now.
        string? kind = DurableJob() ?? (ExcludedTargets.Count > 0 && Degradation().Health == "degraded" && HasRebuildWork() ? RebuildJob : null);
        if (kind == null)
            return;
        ulong cursor;
        lock (Meta.Sync)
            cursor = Meta.Props.TryGetValue(JobCursorProp, out var c) && ulong.TryParse(c, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : 0;
        IDisposable op;
        try
        {
            op = BeginOperation(OperationOf(kind));
        }
        catch (PoolBusyException)
        {
            return;
        }
        Ras.Emit(new RasEvent(RasOf(kind, JobPhase.Resumed), RasSeverity.Notice, RasType.StateChange,
            $"pool '{Label}' {kind} resumed (cursor {cursor})", Pool: Label));
        if (kind == ReintegrateJob)
            _reintegration = new ReintegrationRun(null, "moving");
        StartJob(kind, op, cursor);
    }

    /// <summary>
    /// Every operation running on the pool now, by name (`pool query`, GET /v1/pools/P): the
    /// registered ones (extension, rebuild, reintegration, replication, migration) and an upgrade.
    /// </summary>
    public IReadOnlyList<string> RunningOperations
    {
        get
        {
            var list = new List<string>();
            lock (_operations)
            {
                list.AddRange(_operations.Keys.Order(StringComparer.Ordinal));
                if (_upgradeTask is { IsCompleted: false })
                    list.Add("upgrade");
            }
            return list;
        }
    }

    private static string OperationOf(string kind) => kind switch
    {
        ExtendJob => "extension",
        RebuildJob => "rebuild",
        ReintegrateJob => "reintegration",
        ReplicateJob => "replication",
        _ => throw new CorruptMetadataException($"pool job '{kind}' is unknown to this engine"),
    };

    /// <summary>Refuses a second job while one runs, naming it.</summary>
    private void ThrowIfJobRunning()
    {
        if (_jobTask is { IsCompleted: false } && _jobRun is { } run)
            throw new PoolBusyException($"pool '{Label}' is running {run.Kind} ({Interlocked.Read(ref run.ItemsDone)}/{run.ItemsTotal} chunks); retry when it completes");
    }

    private void StartJob(string kind, IDisposable operation, ulong cursor)
    {
        var run = new JobRun(kind, CancellationTokenSource.CreateLinkedTokenSource(_jobStop.Token));
        _jobRun = run;
        _jobTask = Task.Run(() => RunJobAsync(run, operation, cursor, run.Stop.Token));
        if (kind == RebuildJob)
            Ras.Emit(new RasEvent(RasIds.PoolRebuildStarted, RasSeverity.Notice, RasType.StateChange,
                $"pool '{Label}' rebuild started: the replicas on excluded target(s) {string.Join(", ", ExcludedTargets)} are copied to the others", Pool: Label));
        else if (kind == ReintegrateJob)
            Ras.Emit(new RasEvent(RasIds.PoolReintegrateStarted, RasSeverity.Notice, RasType.StateChange,
                $"pool '{Label}' reintegration started: chunks move back where placement puts them and get {Rf} copies", Pool: Label));
    }

    private enum JobPhase { Resumed, Completed, Failed }

    private static string RasOf(string kind, JobPhase phase) => (kind, phase) switch
    {
        (RebuildJob, JobPhase.Resumed) => RasIds.PoolRebuildResumed,
        (RebuildJob, JobPhase.Completed) => RasIds.PoolRebuildCompleted,
        (RebuildJob, JobPhase.Failed) => RasIds.PoolRebuildFailed,
        (ReintegrateJob, JobPhase.Resumed) => RasIds.PoolReintegrateResumed,
        (ReintegrateJob, JobPhase.Completed) => RasIds.PoolReintegrateCompleted,
        (ReintegrateJob, JobPhase.Failed) => RasIds.PoolReintegrateFailed,
        (ReplicateJob, JobPhase.Resumed) => RasIds.PoolRfChangeResumed,
        (ReplicateJob, JobPhase.Completed) => RasIds.PoolRfChangeCompleted,
        (ReplicateJob, JobPhase.Failed) => RasIds.PoolRfChangeFailed,
        (_, JobPhase.Resumed) => RasIds.PoolExtendResumed,
        (_, JobPhase.Completed) => RasIds.PoolExtendCompleted,
        _ => RasIds.PoolExtendFailed,
    };

    /// <summary>Stops the running job, if any (it stays recorded until a job replaces it); returns once it stopped.</summary>
    private async Task StopRunningJobAsync()
    {
        var run = _jobRun;
        var t = _jobTask;
        if (run == null || t == null || t.IsCompleted)
            return;
        await run.Stop.CancelAsync().ConfigureAwait(false);
        await t.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    private async Task StopJobRunnerAsync()
    {
        await _jobStop.CancelAsync().ConfigureAwait(false);
        var t = _jobTask;
        if (t != null)
            await t.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>What the job does to each chunk: an extension moves chunks to where placement puts them on every target.</summary>
    private IChunkTransform TransformOf(string kind) => kind switch
    {
        ExtendJob => new PlacementMove(Placement, TargetCount),
        // With excluded targets Placement leaves them out; a chunk with no copy left is not moved (it is lost).
        RebuildJob => new SurvivorMove(this, new PlacementMove(Placement, TargetCount)),
        // Back where placement puts chunks with the target in, and chunks a bad replica was dropped from get rf copies again.
        ReintegrateJob => new SurvivorMove(this, new PlacementMove(Placement, TargetCount, n => Math.Max(n, Math.Min(Rf, LiveTargets)))),
        // Every chunk gets the new count of copies: added ones copied from a verified one, extra ones freed.
        ReplicateJob => new SurvivorMove(this, new PlacementMove(Placement, TargetCount, _ => Math.Min(RfNext(), LiveTargets))),
        _ => throw new InvalidOperationException($"no transform for job '{kind}'"),
    };

    private async Task RunJobAsync(JobRun run, IDisposable operation, ulong cursor, CancellationToken stop)
    {
        long drops = Log.DropCount;
        try
        {
            // Writes that chose their targets and copy count before the change that started this job
            // (the new target, rf, an exclusion or its lift) finish first: each entered the gate before
            // it, so once they have left their chunks are mapped, and the passes below see them. A chunk
            // not mapped yet when the passes go by would otherwise keep its writer's placement for good.
            // New writes are not held; they place the new way.
            await Gate.EarlierLeftAsync().WaitAsync(stop).ConfigureAwait(false);
            var transform = TransformOf(run.Kind);
            var (chunks, bytes, _) = MigrationAction.Plan(this, transform);
            run.ItemsTotal = chunks;
            run.BytesTotal = bytes;
            var feature = new LayoutFeature(run.Kind, LayoutVersion, FeatureClass.Compat, 0, ActionKind.DataMovement, run.Kind, null);
            // The cursor and the end are committed after a flush (PoolLog.CommitAfterFlushAsync): the loop
            // judged chunks by the maps it saw, and a writeback record among them (a client write that put
            // a chunk where placement wants it, so the loop left it) is dropped at replay if its data did
            // not reach the disk; a cursor or an end durable before it would skip that chunk for good.
            var ctx = new UpgradeContext(this, feature,
                c => Log.CommitAfterFlushAsync([MetaRecords.PoolSetProp(JobCursorProp, c.ToString(CultureInfo.InvariantCulture))]),
                (items, b) =>
                {
                    Interlocked.Add(ref run.ItemsDone, items);
                    Interlocked.Add(ref run.BytesDone, b);
                },
                s => run.Current = s);
            var loop = new MigrationLoop(ctx, transform);
            var result = await loop.RunAsync(cursor, stop).ConfigureAwait(false);
            if (result.Left == 0)
                result = await loop.RunAsync(0, stop, sweep: true).ConfigureAwait(false);
            // A target dropped while the job ran (PoolLog.TryDropShard), or before with its exclusion not
            // durable yet, steered moves by that exclusion: a crash before its checkpoint would find the
            // target in and the job done with chunks off their place (the round ending the job may be
            // durable before that checkpoint). The job does not end; the exclusion's rebuild
            // (ExcludeTargetAsync) replaces it.
            if (Log.DropCount != drops || Log.DropPending)
                throw new TargetDroppedException(Log.LastDrop);
            if (result.Left > 0)
                throw new StoreException(Interop.Errno.EIO,
                    $"{result.Left} chunk(s) could not be moved and kept their location (first: {result.FirstLeft}); run 'strata pool extend {Label}' or reopen the pool to retry them");
            // An rf increase becomes true in the batch that ends its job: every chunk has the copies now.
            await Log.CommitAfterFlushAsync(run.Kind == ReplicateJob
                ? [MetaRecords.PoolSetProp("rf", RfNext().ToString(CultureInfo.InvariantCulture)), MetaRecords.PoolSetProp(JobProp, NoJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]
                : [MetaRecords.PoolSetProp(JobProp, NoJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]).ConfigureAwait(false);
            run.Finish("completed", null);
            Ras.Emit(new RasEvent(RasOf(run.Kind, JobPhase.Completed), RasSeverity.Notice, RasType.StateChange,
                $"pool '{Label}' {run.Kind} completed: {Interlocked.Read(ref run.ItemsDone)} chunk(s) visited, {Interlocked.Read(ref run.BytesDone)} bytes moved in {run.Elapsed.TotalSeconds:F1} s",
                Pool: Label));
        }
        catch (Exception e) when (e is TargetDroppedException || (e is OperationCanceledException && stop.IsCancellationRequested))
        {
            if (run.Kind == ReintegrateJob && _reintegration?.FailingBecause is { } failing)
            {
                // A target failed a write (PoolLog.TryDropShard, Pool.OnShardDropping): the job stops; the
                // pool excludes the target and rebuilds. `storage reintegrate-target` may be asked again.
                Failed(run, $"{failing.Reason}; it is excluded and the pool rebuilds", failing.Target);
            }
            else if (e is TargetDroppedException d)
            {
                // Stays recorded; the rebuild that excludes the target replaces it (or the next open resumes it).
                run.Finish("stopped", $"{d.Message}; the rebuild that excludes it takes over");
            }
            else
            {
                // The pool is closing (or another job replaces this one): the job stays recorded and resumes at the next open.
                run.Finish("stopped", "the pool closed or another job replaced it");
            }
        }
        catch (Exception e) when (e is StoreException or IOException)
        {
            // The job stays recorded: `pool extend` (or the next open) runs it again.
            Failed(run, e.Message, null);
        }
        finally
        {
            if (run.Kind == ReintegrateJob && _reintegration is { } r && r.Active)
                r.Set(run.State, run.Reason);
            operation.Dispose();
        }
    }

    private void Failed(JobRun run, string reason, int? target)
    {
        run.Finish("failed", reason);
        Ras.Emit(new RasEvent(RasOf(run.Kind, JobPhase.Failed), RasSeverity.Error, RasType.StateChange,
            $"pool '{Label}' {run.Kind} failed: {reason}", Pool: Label, Target: target, Device: target is int t ? Shards[t].Device.Name : null));
    }

    /// <summary>A target left the pool after a failed write while the job ran: the job stops without ending.</summary>
    private sealed class TargetDroppedException(string message) : Exception(message);

    private sealed class JobRun(string kind, CancellationTokenSource stop)
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();

        public CancellationTokenSource Stop { get; } = stop;

        public string Kind { get; } = kind;
        public long ItemsTotal;
        public long BytesTotal;
        public long ItemsDone;
        public long BytesDone;
        public volatile string? Current;
        public volatile string State = "running";
        public volatile string? Reason;

        public TimeSpan Elapsed => _clock.Elapsed;

        public void Finish(string state, string? reason)
        {
            _clock.Stop();
            Reason = reason;
            Current = null;
            State = state;
        }
    }
}
