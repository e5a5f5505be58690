namespace Strata.Engine.Layout;

/// <summary>
/// What an upgrade action sees of the pool it upgrades. Layout sits below the pool service:
/// Pools.Pool implements this and runs the job, and nothing in Layout names a Pools type
/// (docs/architecture.md; LayeringTests fails when it does). An action that needs more of
/// the pool adds a member here and implements it in Pool.
/// </summary>
public interface IUpgradePool
{
    string Label { get; }

    /// <summary>Whether the property is stored in the pool's metadata (not only a default).</summary>
    bool HasStoredProperty(string name);

    /// <summary>
    /// wal_v2: restarts the log in WAL v2 framing between two commit rounds and checkpoints every shard
    /// with everything committed before the call. Completes at the switch: the checkpoint is written
    /// before any later commit's round (they wait for it), so the caller may let clients back meanwhile.
    /// </summary>
    Task RestartLogInWalV2Async();
}

/// <summary>A metadata change an action proposes; the job writes it as the matching log record.</summary>
public abstract record ProposedChange;

/// <summary>Sets a pool property (the log's PoolSetProp record).</summary>
public sealed record SetPoolProperty(string Name, string Value) : ProposedChange;

/// <summary>What an action would scan or move, for `--dry-run`, progress totals and the free-space precondition.</summary>
public sealed record ActionEstimate(long Items, long BytesToScan, long BytesToMove, long FreeBytesNeeded)
{
    public static ActionEstimate None { get; } = new(0, 0, 0, 0);
}

/// <summary>
/// A feature's upgrade action. It must be idempotent: run any number of times, from
/// any cursor it saved, it leaves the pool the same. Quiesce and exclusive actions
/// propose metadata records that the job commits atomically with its cursor (and
/// the layout switch); online actions commit as they go and save their cursor.
/// </summary>
public interface IUpgradeAction
{
    ActionAccess Access { get; }

    ActionEstimate Estimate(IUpgradePool pool);

    Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct);
}

/// <summary>What an action sees of the job: the pool, where to propose or commit, where to report progress.</summary>
public sealed class UpgradeContext
{
    private readonly Func<ulong, Task> _saveCursor;
    private readonly Action<long, long> _progress;
    private readonly Action<string?>? _state;

    internal UpgradeContext(IUpgradePool pool, LayoutFeature feature, Func<ulong, Task> saveCursor, Action<long, long> progress, Action<string?>? state = null)
    {
        Pool = pool;
        Feature = feature;
        _saveCursor = saveCursor;
        _progress = progress;
        _state = state;
    }

    public IUpgradePool Pool { get; }

    public LayoutFeature Feature { get; }

    /// <summary>Records proposed by a quiesce or exclusive action, committed with the job's cursor in one log batch.</summary>
    internal List<ProposedChange> Proposed { get; } = new();

    public void Propose(ProposedChange change) => Proposed.Add(change);

    /// <summary>Online actions: makes the cursor durable (a crash resumes from it).</summary>
    public Task SaveCursorAsync(ulong cursor) => _saveCursor(cursor);

    /// <summary>Adds items and bytes done to the job's progress.</summary>
    public void ReportProgress(long items, long bytes) => _progress(items, bytes);

    /// <summary>What the action is doing beyond its name, shown with the current action ("paused: ..."); null clears it.</summary>
    public void ReportState(string? state) => _state?.Invoke(state);
}

/// <summary>
/// pool_props_v2: the pool properties `scrub` and `reclaim` appear with their defaults.
/// Idempotent: a property already present (a resumed or repeated run) is left alone.
/// </summary>
public sealed class PoolPropsV2Action : IUpgradeAction
{
    public static readonly PoolPropsV2Action Instance = new();

    public static readonly IReadOnlyList<(string Name, string Default, string[] Values)> Properties =
    [
        ("scrub", "off", ["off", "lazy", "timed"]),
        ("reclaim", "lazy", ["disabled", "lazy", "time"]),
    ];

    public ActionAccess Access => ActionAccess.Quiesce;

    public ActionEstimate Estimate(IUpgradePool pool) =>
        new(Properties.Count(p => !pool.HasStoredProperty(p.Name)), 0, 0, 0);

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        foreach (var (name, def, _) in Properties)
        {
            if (!ctx.Pool.HasStoredProperty(name))
            {
                ctx.Propose(new SetPoolProperty(name, def));
                ctx.ReportProgress(1, 0);
            }
        }
        return Task.CompletedTask;
    }
}

/// <summary>
/// container_compression: nothing on disk is rewritten. Containers record the layout
/// they were created at, so the switch to layout 2 alone makes `compression` settable
/// on containers created from then on; the action exists so the chain has a step
/// (and a cursor) per feature.
/// </summary>
public sealed class NoDataAction : IUpgradeAction
{
    public static readonly NoDataAction Instance = new();

    public ActionAccess Access => ActionAccess.Quiesce;

    public ActionEstimate Estimate(IUpgradePool pool) => ActionEstimate.None;

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct) => Task.CompletedTask;
}
