using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Layout;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

public sealed partial class Pool : IUpgradePool
{
    private readonly Dictionary<string, int> _operations = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _upgradeStop = new();
    private Task? _upgradeTask;
    private UpgradeRun? _run;
    private volatile string? _exclusiveReason;
    private volatile string? _preparedReason;

    /// <summary>Operations that make a pool unstable for an upgrade (DAOS: rebuild, reintegration, extension).</summary>
    public static readonly IReadOnlyList<string> UnstableOperations = ["rebuild", "reintegration", "extension", "migration", "replication"];

    /// <summary>
    /// Marks an operation as running on this pool until the result is disposed. An upgrade
    /// refuses to start while any runs; rebuild, reintegration and extension arrive with later
    /// issues and register here (image migration does too).
    /// </summary>
    public IDisposable BeginOperation(string kind)
    {
        if (!UnstableOperations.Contains(kind))
            throw new ArgumentException($"unknown pool operation '{kind}'", nameof(kind));
        lock (_operations)
        {
            if (_upgradeTask is { IsCompleted: false } || Meta.UpgradeJob is { State: UpgradeJobState.InProgress })
                throw new PoolBusyException($"pool '{Label}' is upgrading ({UpgradeText()}); {kind} cannot start until the upgrade completes");
            _operations[kind] = _operations.GetValueOrDefault(kind) + 1;
        }
        return new OperationScope(this, kind);
    }

    private string UpgradeText() => Meta.UpgradeJob is { } j ? $"{j.From} -> {j.To}, job {j.Id}" : "job starting";

    private sealed class OperationScope(Pool pool, string kind) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) != 0)
                return;
            lock (pool._operations)
                if (--pool._operations[kind] == 0)
                    pool._operations.Remove(kind);
        }
    }

    bool IUpgradePool.HasStoredProperty(string name) => HasStoredProperty(name);

    Task IUpgradePool.RestartLogInWalV2Async() => Log.SwitchFormatAsync(WalFormatV2.Format);

    internal bool HasStoredProperty(string name)
    {
        lock (Meta.Sync)
            return Meta.Props.ContainsKey(name);
    }

    /// <summary>A job that may have written what older software cannot read: running, or failed in an action that is not metadata-only.</summary>
    private bool UpgradeMayHaveWrittenNewFormat()
    {
        var j = Meta.UpgradeJob;
        if (j == null || j.State is UpgradeJobState.Completed or UpgradeJobState.NotStarted)
            return false;
        if (j.State == UpgradeJobState.InProgress)
            return true;
        if (j.To > Catalog.MaxSupported)
            return true;
        var chain = Catalog.Chain(j.From, j.To);
        return j.Action < chain.Count && chain[(int)j.Action].Kind != ActionKind.MetadataOnly;
    }

    private static string StatusText(UpgradeJobState s) => s switch
    {
        UpgradeJobState.InProgress => "in progress",
        UpgradeJobState.Completed => "completed",
        UpgradeJobState.Failed => "failed",
        _ => "not started",
    };

    /// <summary>Current upgrade status and progress.</summary>
    public UpgradeJobStatus GetUpgradeStatus()
    {
        UpgradeJobMeta? job;
        uint layout;
        lock (Meta.Sync)
        {
            job = Meta.UpgradeJob;
            layout = Meta.Layout?.Version ?? Header.LayoutVersion;
        }
        var run = _run;
        bool running = _upgradeTask is { IsCompleted: false };
        if (job == null)
            return new UpgradeJobStatus(Label, layout, "not started", null, null, null, 0, 0, 0, 0, 0, 0, null, null, null, null, null, false);
        int total = job.To <= Catalog.MaxSupported ? Catalog.Chain(job.From, job.To).Count : 0;
        int done = job.State == UpgradeJobState.Completed ? total : (int)Math.Min(job.Action, (uint)total);
        if (run != null && run.JobId == job.Id)
        {
            double secs = run.Elapsed.TotalSeconds;
            long items = Interlocked.Read(ref run.ItemsDone), bytes = Interlocked.Read(ref run.BytesDone);
            double? ips = secs > 0 ? items / secs : null;
            double? bps = secs > 0 ? bytes / secs : null;
            double? eta = job.State != UpgradeJobState.InProgress ? 0
                : run.BytesTotal > 0 && bps > 0 ? (run.BytesTotal - bytes) / bps
                : run.ItemsTotal > 0 && ips > 0 ? (run.ItemsTotal - items) / ips
                : null;
            return new UpgradeJobStatus(Label, layout, StatusText(job.State), job.To, job.Id, job.Reason, done, total,
                items, run.ItemsTotal, bytes, run.BytesTotal, ips, bps, eta, run.Current, run.LongestPauseMs, running);
        }
        return new UpgradeJobStatus(Label, layout, StatusText(job.State), job.To, job.Id, job.Reason, done, total,
            0, 0, 0, 0, null, null, null, null, null, running);
    }

    /// <summary>
    /// Plans an upgrade to <paramref name="to"/> (default: the newest this engine supports) and, unless
    /// this is a dry run, records the job in the log and starts it in the background. Returns as soon as
    /// the job is durable; status is asynchronous (<see cref="GetUpgradeStatus"/>). A failed job is
    /// retried by calling this again: a new job starts from the layout the pool reached.
    /// </summary>
    public async Task<UpgradeJobPlan> UpgradeAsync(uint? to, bool dryRun)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        UpgradeJobPlan plan;
        ulong id;
        try
        {
            plan = Plan(to);
            if (dryRun)
                return plan;
            var failed = plan.Preconditions.FirstOrDefault(p => !p.Ok);
            if (failed != null)
            {
                string all = string.Join("; ", plan.Preconditions.Where(p => !p.Ok).Select(p => p.Detail));
                throw failed.Name switch
                {
                    "free space" => new NoSpaceException(all),
                    "compatibility" or "writable" => new InvalidRequestException(all),
                    _ => new BusyException(all),
                };
            }
            lock (Meta.Sync)
                id = (Meta.UpgradeJob?.Id ?? 0) + 1;
            await Log.CommitAsync(MetaRecords.UpgradeJobBegin(id, plan.From, plan.To)).ConfigureAwait(false);
            // Before any action writes what older software cannot read, every shard header carries
            // incompat bit 62 (a checkpoint writes it while a job is in progress), so an older
            // release refuses the pool rather than replaying records or extents it does not know.
            await Log.CheckpointAsync().ConfigureAwait(false);
        }
        finally
        {
            MetaLock.Release();
        }
        Ras.Emit(new RasEvent(RasIds.PoolUpgradeStarted, RasSeverity.Notice, RasType.StateChange,
            $"pool '{Label}' upgrade {plan.From} -> {plan.To} started (job {id}, {plan.Actions.Count} action(s))", Pool: Label));
        StartUpgradeRunner();
        return plan with { JobId = id };
    }

    /// <summary>The action the job runs for a feature (Migration.UpgradeActionBindings).</summary>
    private IUpgradeAction? ActionOf(LayoutFeature f) => _engine.Options.Actions.For(f);

    private UpgradeJobPlan Plan(uint? requested)
    {
        var cat = Catalog;
        uint from = LayoutVersion;
        uint to = requested ?? cat.MaxSupported;
        if (to > (uint)cat.Versions.Count)
            throw new InvalidRequestException($"layout version {to} does not exist (the catalog has 1..{cat.Versions.Count}); see 'strata pool upgrade --list'");
        if (to > cat.MaxSupported)
            throw new InvalidRequestException($"layout version {to} ({string.Join(", ", cat[to].Features.Select(f => f.Name))}) is not supported by this engine, which supports layouts {LayoutCatalog.MinSupported}..{cat.MaxSupported}; see 'strata pool upgrade --list'");
        if (to == from)
            throw new InvalidRequestException($"pool '{Label}' is already at layout version {from}; nothing to upgrade");
        if (to < from)
            throw new InvalidRequestException($"pool '{Label}' is at layout version {from}; a pool is never downgraded (requested {to})");
        var actions = new List<UpgradeActionPlan>();
        int index = 0;
        long moveBytes = 0;
        foreach (var f in cat.Chain(from, to))
        {
            var est = ActionOf(f)?.Estimate(this) ?? ActionEstimate.None;
            moveBytes += est.FreeBytesNeeded;
            actions.Add(new UpgradeActionPlan(index++, f.Version, f.Name, CatalogNames.Of(f.Class), CatalogNames.Of(f.Kind), CatalogNames.Of(f.Access), est.Items, est.BytesToScan, est.BytesToMove, f.Description));
        }
        var pre = new List<UpgradeCheck>();
        string? ro = _readOnlyReason ?? _preparedReason;
        string? frozen = _barrierReason;
        pre.Add(new("writable", ro == null && frozen == null, ro != null ? $"pool '{Label}' is read-only: {ro}"
            : frozen != null ? $"pool '{Label}' {frozen}" : "the pool is writable"));
        bool running = _upgradeTask is { IsCompleted: false };
        UpgradeJobMeta? job;
        lock (Meta.Sync)
            job = Meta.UpgradeJob;
        bool jobOpen = running || job?.State == UpgradeJobState.InProgress;
        pre.Add(new("no other upgrade", !jobOpen, !jobOpen ? "no upgrade is running"
            : $"pool '{Label}' is already upgrading ({job?.From} -> {job?.To}, job {job?.Id}); see 'strata pool get-prop {Label} upgrade_status'"));
        string[] busy;
        lock (_operations)
            busy = _operations.Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        // An exclusive step refuses image I/O: a migration's mirrored writes into this pool would fail.
        if (HasActiveMigrations)
            busy = [.. busy, "an image migration"];
        pre.Add(new("no rebuild, reintegration, extension or migration", busy.Length == 0, busy.Length == 0
            ? "no rebuild, reintegration, extension, replication or migration is in progress"
            : $"pool '{Label}' has {string.Join(" and ", busy)} in progress; an upgrade needs a stable pool; retry when it completes"));
        string compat;
        lock (Meta.Sync)
            compat = Meta.Props.GetValueOrDefault("compatibility", "off");
        uint? limit = cat.CompatibilityLimit(compat);
        bool compatOk = limit == null || to <= limit;
        pre.Add(new("compatibility", compatOk, compatOk
            ? $"compatibility={compat} allows layout {to}"
            : $"pool '{Label}' has compatibility={compat}, which allows layouts up to {limit}; upgrading to {to} would make it unreadable to that release; change the property first ('strata pool set-prop {Label} compatibility off')"));
        long free = Shards.Min(s => s.Allocator.FreeBytes);
        bool spaceOk = moveBytes == 0 || moveBytes <= free;
        pre.Add(new("free space", spaceOk, moveBytes == 0
            ? "no action moves data"
            : spaceOk ? $"data movement needs {moveBytes} bytes per target; the fullest target has {free} free"
            : $"no space left in pool '{Label}' for the upgrade: data movement needs {moveBytes} bytes per target, the fullest target has {free} free"));
        return new UpgradeJobPlan(Label, from, to, actions, pre, DryRun: true, JobId: null);
    }

    /// <summary>Starts the job runner when the pool was opened with a job in progress (crash, kill or clean stop mid-job).</summary>
    internal void ResumeUpgradeIfNeeded()
    {
        UpgradeJobMeta? job;
        lock (Meta.Sync)
            job = Meta.UpgradeJob;
        if (job is not { State: UpgradeJobState.InProgress } || State != PoolStatus.Ready)
            return;
        Ras.Emit(new RasEvent(RasIds.PoolUpgradeResumed, RasSeverity.Notice, RasType.StateChange,
            $"pool '{Label}' upgrade {job.From} -> {job.To} (job {job.Id}) resumed at action {job.Action}", Pool: Label));
        StartUpgradeRunner(resumed: true);
    }

    /// <param name="resumed">
    /// The job was replayed in progress by this open: every client write of this process began with the job
    /// at its current action, so that action needs no drain of earlier writes (RunUnquiescedAsync).
    /// </param>
    private void StartUpgradeRunner(bool resumed = false)
    {
        lock (_operations)
            _upgradeTask = Task.Run(() => RunJobAsync(resumed, _upgradeStop.Token));
    }

    private async Task StopUpgradeRunnerAsync()
    {
        await _upgradeStop.CancelAsync().ConfigureAwait(false);
        var t = _upgradeTask;
        if (t != null)
            await t.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>Waits until the running job (if any) stops: completed, failed, or stopped by a close.</summary>
    public async Task WaitForUpgradeAsync(CancellationToken ct = default)
    {
        var t = _upgradeTask;
        if (t != null)
            await t.WaitAsync(ct).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>
    /// Runs the job's remaining actions in catalog order. Consecutive quiesce actions of one version
    /// commit in one log batch with the job's cursor and, after a version's last action, the layout
    /// switch (record 35), while metadata changes wait (image I/O continues: nothing it does depends on
    /// a metadata-only feature): that batch is the only time the pool is partly unavailable. Every step is idempotent, so a crash anywhere resumes by re-running the
    /// step whose cursor was not yet durable.
    /// </summary>
    private async Task RunJobAsync(bool resumed, CancellationToken stop)
    {
        UpgradeJobMeta job;
        lock (Meta.Sync)
            job = Meta.UpgradeJob!;
        var cat = Catalog;
        var chain = cat.Chain(job.From, job.To);
        var run = new UpgradeRun(job.Id);
        foreach (var f in chain.Skip((int)job.Action))
        {
            var est = ActionOf(f)?.Estimate(this) ?? ActionEstimate.None;
            run.ItemsTotal += est.Items;
            run.BytesTotal += est.BytesToScan + est.BytesToMove;
        }
        _run = run;
        int index = 0;
        try
        {
            for (uint v = job.From + 1; v <= job.To; v++)
            {
                var window = new List<(int Index, LayoutFeature Feature)>();
                foreach (var f in cat[v].Features)
                {
                    int i = index++;
                    if (i < job.Action)
                        continue;
                    ulong cursor = i == job.Action ? job.Cursor : 0;
                    if (f.Access == ActionAccess.Quiesce)
                    {
                        window.Add((i, f));
                        continue;
                    }
                    await CommitQuiescedAsync(job, window, null, run, stop).ConfigureAwait(false);
                    window.Clear();
                    await RunUnquiescedAsync(job, i, f, cursor, run, drain: !(resumed && i == job.Action), stop).ConfigureAwait(false);
                }
                await CommitQuiescedAsync(job, window, v, run, stop).ConfigureAwait(false);
            }
            run.Current = null;
            await StepDelayAsync(run, stop).ConfigureAwait(false);
            await Log.CommitAsync(MetaRecords.UpgradeJobEnd(job.Id, UpgradeJobState.Completed, null)).ConfigureAwait(false);
            // The checkpoint rewrites every header with the new layout and without bit 62.
            await Log.CheckpointAsync().ConfigureAwait(false);
            run.Stop();
            Ras.Emit(new RasEvent(RasIds.PoolUpgradeCompleted, RasSeverity.Notice, RasType.StateChange,
                $"pool '{Label}' upgraded {job.From} -> {job.To} (job {job.Id}); {PauseText(run.LongestPauseMs)}", Pool: Label));
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // The pool is closing: the job stays in progress and resumes at the next open.
            run.Stop();
        }
        catch (Exception e) when (State == PoolStatus.Ready && e is not ObjectDisposedException)
        {
            run.Stop();
            string reason = e.Message;
            try
            {
                await Log.CommitAsync(MetaRecords.UpgradeJobEnd(job.Id, UpgradeJobState.Failed, reason)).ConfigureAwait(false);
                await Log.CheckpointAsync().ConfigureAwait(false);
            }
            catch (StoreException)
            {
                // The pool went read-only; the job stays in progress and resumes at the next open.
            }
            Ras.Emit(new RasEvent(RasIds.PoolUpgradeFailed, RasSeverity.Error, RasType.StateChange,
                $"pool '{Label}' upgrade {job.From} -> {job.To} (job {job.Id}) failed: {reason}; run 'strata pool upgrade {Label}' to retry", Pool: Label));
        }
        catch (Exception)
        {
            // The pool went read-only or closed under the job: it resumes at the next open.
            run.Stop();
        }
    }

    private async Task CommitQuiescedAsync(UpgradeJobMeta job, List<(int Index, LayoutFeature Feature)> window, uint? switchTo,
        UpgradeRun run, CancellationToken stop)
    {
        bool needSwitch = switchTo is { } v && LayoutVersion < v;
        if (window.Count == 0 && !needSwitch)
            return;
        await StepDelayAsync(run, stop).ConfigureAwait(false);
        stop.ThrowIfCancellationRequested();
        await MetaLock.WaitAsync(stop).ConfigureAwait(false);
        try
        {
            // Metadata changes wait on MetaLock for this one log batch; image I/O goes on (nothing it
            // does depends on a metadata-only feature), so this is the whole unavailability window.
            long start = Stopwatch.GetTimestamp();
            var records = new List<MetaRecord>();
            foreach (var (i, f) in window)
            {
                run.Current = f.Name;
                var ctx = NewContext(job, i, f, run);
                if (ActionOf(f) is { } action)
                    await action.RunAsync(ctx, i == job.Action ? job.Cursor : 0, stop).ConfigureAwait(false);
                records.AddRange(ctx.Proposed.Select(ToRecord));
                records.Add(MetaRecords.UpgradeJobCursor(job.Id, (uint)i + 1, 0));
            }
            if (needSwitch)
            {
                var (c, r, inc) = Catalog.FeatureWords(switchTo!.Value);
                records.Add(MetaRecords.LayoutSet(switchTo.Value, c, r, inc));
            }
            await Log.CommitAsync([.. records]).ConfigureAwait(false);
            run.RecordPause(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>Online and exclusive actions: they commit as they go and save their own cursor.</summary>
    /// <param name="drain">Whether client writes of this process may have judged their form before the job reached this action.</param>
    private async Task RunUnquiescedAsync(UpgradeJobMeta job, int index, LayoutFeature f, ulong cursor, UpgradeRun run, bool drain, CancellationToken stop)
    {
        await StepDelayAsync(run, stop).ConfigureAwait(false);
        stop.ThrowIfCancellationRequested();
        run.Current = f.Name;
        var ctx = NewContext(job, index, f, run);
        if (f.Access == ActionAccess.Online)
        {
            if (drain)
                await DrainEarlierWritesAsync(run, stop).ConfigureAwait(false);
            if (ActionOf(f) is { } action)
                await action.RunAsync(ctx, cursor, stop).ConfigureAwait(false);
            await Log.CommitAfterFlushAsync([.. ctx.Proposed.Select(ToRecord), MetaRecords.UpgradeJobCursor(job.Id, (uint)index + 1, 0)]).ConfigureAwait(false);
            return;
        }
        // Exclusive: drain metadata changes and refuse new ones; close the gate so that image I/O in
        // flight finishes and new I/O is held there (as a barrier holds it), never failed: clients stay
        // connected and see a pause, which runs from the closing to the reopening.
        string reason = $"pool is upgrading ({LayoutVersion} -> {f.Version}); retry when it completes";
        await MetaLock.WaitAsync(stop).ConfigureAwait(false);
        long start = Stopwatch.GetTimestamp();
        PoolGate.Closure closure;
        try
        {
            // The reason only once the gate is closed: image I/O that entered before the closing
            // finishes (the closing waits for it) rather than being refused by the check it makes
            // inside. Metadata changes take MetaLock and check the reason under it: none starts now.
            closure = await Gate.CloseAsync(stop).ConfigureAwait(false);
            _exclusiveReason = reason;
        }
        finally
        {
            MetaLock.Release();
        }
        bool reopened = false;
        try
        {
            if (ActionOf(f) is { } action)
                await action.RunAsync(ctx, cursor, stop).ConfigureAwait(false);
            if (ctx.Proposed.Count == 0)
            {
                // Nothing for clients to wait for: they come back before the cursor's round. A crash
                // before it is durable runs the (idempotent) action again.
                Reopen(closure, start, run);
                reopened = true;
            }
            await Log.CommitAsync([.. ctx.Proposed.Select(ToRecord), MetaRecords.UpgradeJobCursor(job.Id, (uint)index + 1, 0)]).ConfigureAwait(false);
        }
        finally
        {
            if (!reopened)
                Reopen(closure, start, run);
        }
    }

    /// <summary>
    /// Before an online action's passes: client writes judge their form (Pool.WritesBlockTables) and place
    /// (Pool.Placement) from the job's action, under their chunk's lock, and the passes hold every mapped
    /// chunk, so a write to a mapped chunk is either seen by them or writes the new way. A write to a chunk
    /// not mapped yet that judged before the job reached this action is not: the passes skip that chunk,
    /// and if the write commits after both it keeps the old form for good. The gate closes once so that the
    /// image operations inside (every such write among them) finish; new ones wait, as for an exclusive
    /// action, and judge with the job at this action when it reopens. A pause of the writes in flight
    /// (a commit round), counted in the job's longest pause.
    /// </summary>
    private async Task DrainEarlierWritesAsync(UpgradeRun run, CancellationToken stop)
    {
        await MetaLock.WaitAsync(stop).ConfigureAwait(false);
        long start = Stopwatch.GetTimestamp();
        try
        {
            using (await Gate.CloseAsync(stop).ConfigureAwait(false))
            {
            }
        }
        finally
        {
            MetaLock.Release();
        }
        run.RecordPause(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
    }

    /// <summary>The log record of a change an action proposed.</summary>
    private static MetaRecord ToRecord(ProposedChange change) => change switch
    {
        SetPoolProperty p => MetaRecords.PoolSetProp(p.Name, p.Value),
        _ => throw new NotSupportedException($"no log record for the proposed change {change.GetType().Name}"),
    };

    /// <summary>Ends an exclusive window: held I/O goes on, metadata changes are accepted again; its length is the job's pause.</summary>
    private void Reopen(PoolGate.Closure closure, long start, UpgradeRun run)
    {
        _exclusiveReason = null;
        closure.Dispose();
        double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        run.RecordPause(ms);
        LastExclusivePauseMs = ms;
    }

    /// <summary>How long the last exclusive action of this process held image I/O (ms; null: none ran).</summary>
    internal double? LastExclusivePauseMs { get; private set; }

    private UpgradeContext NewContext(UpgradeJobMeta job, int index, LayoutFeature f, UpgradeRun run) =>
        new(this, f,
            cursor => Log.CommitAfterFlushAsync([MetaRecords.UpgradeJobCursor(job.Id, (uint)index, cursor)]),
            (items, bytes) =>
            {
                Interlocked.Add(ref run.ItemsDone, items);
                Interlocked.Add(ref run.BytesDone, bytes);
            },
            state => run.Current = state == null ? f.Name : $"{f.Name} ({state})");

    // A run resumed after its quiesced commit pauses nothing: say so rather than print "longest pause  ms".
    private static string PauseText(double? longestPauseMs) => longestPauseMs is { } ms
        ? string.Create(CultureInfo.InvariantCulture, $"longest pause {ms:0.###} ms")
        : "no pause in this run (the quiesced commit was done before a restart)";

    /// <summary>Test hooks: slow each step, or hold the job before its Nth step of this run until the pool closes.</summary>
    private Task StepDelayAsync(UpgradeRun run, CancellationToken stop)
    {
        if (++run.Steps == _engine.Options.UpgradeHoldAtStep)
            return Task.Delay(Timeout.Infinite, stop);
        return _engine.Options.UpgradeStepDelay > TimeSpan.Zero ? Task.Delay(_engine.Options.UpgradeStepDelay, stop) : Task.CompletedTask;
    }

    /// <summary>
    /// `system prepare`: drains I/O and metadata changes, refuses writes from now on, and
    /// checkpoints so the log holds no record: a different software version started on these
    /// devices replays nothing this one wrote. Cancel reopens writes.
    /// </summary>
    public async Task<long> PrepareAsync()
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotLoggable();
            ThrowIfFrozen();
            if (_upgradeTask is { IsCompleted: false })
                throw new BusyException($"pool '{Label}' is upgrading; prepare after the upgrade completes");
            using (await Gate.CloseAsync().ConfigureAwait(false))
            {
                _preparedReason = "the engine is prepared for a software change; run 'strata system prepare --cancel' to accept writes again";
                await Log.CheckpointAsync().ConfigureAwait(false);
            }
            return Log.Used;
        }
        finally
        {
            MetaLock.Release();
        }
    }

    public void CancelPrepare() => _preparedReason = null;

    public bool Prepared => _preparedReason != null;

    /// <summary>Bytes of log records a reopen would replay now.</summary>
    public long LogBytes => Log.Used;

    /// <summary>In-memory progress of the job running in this process.</summary>
    private sealed class UpgradeRun(ulong jobId)
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private double _longestPause;

        public ulong JobId { get; } = jobId;
        public int Steps;
        public long ItemsTotal;
        public long BytesTotal;
        public long ItemsDone;
        public long BytesDone;

        public volatile string? Current;

        public TimeSpan Elapsed => _clock.Elapsed;

        public double? LongestPauseMs => _longestPause > 0 ? _longestPause : null;

        public void RecordPause(double ms)
        {
            if (ms > _longestPause)
                _longestPause = ms;
        }

        public void Stop() => _clock.Stop();
    }
}
