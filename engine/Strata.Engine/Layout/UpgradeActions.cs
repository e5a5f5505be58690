using Strata.Engine.Pools;

namespace Strata.Engine.Layout;

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

    ActionEstimate Estimate(Pool pool);

    Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct);
}

/// <summary>What an action sees of the job: the pool, where to propose or commit, where to report progress.</summary>
public sealed class UpgradeContext
{
    private readonly Func<ulong, Task> _saveCursor;
    private readonly Action<long, long> _progress;

    internal UpgradeContext(Pool pool, LayoutFeature feature, Func<ulong, Task> saveCursor, Action<long, long> progress)
    {
        Pool = pool;
        Feature = feature;
        _saveCursor = saveCursor;
        _progress = progress;
    }

    public Pool Pool { get; }

    public LayoutFeature Feature { get; }

    /// <summary>Records proposed by a quiesce or exclusive action, committed with the job's cursor in one log batch.</summary>
    internal List<MetaRecord> Proposed { get; } = new();

    public void Propose(MetaRecord record) => Proposed.Add(record);

    /// <summary>Online actions: makes the cursor durable (a crash resumes from it).</summary>
    public Task SaveCursorAsync(ulong cursor) => _saveCursor(cursor);

    /// <summary>Adds items and bytes done to the job's progress.</summary>
    public void ReportProgress(long items, long bytes) => _progress(items, bytes);
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

    public ActionEstimate Estimate(Pool pool) =>
        new(Properties.Count(p => !pool.HasStoredProperty(p.Name)), 0, 0, 0);

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        foreach (var (name, def, _) in Properties)
        {
            if (!ctx.Pool.HasStoredProperty(name))
            {
                ctx.Propose(MetaRecords.PoolSetProp(name, def));
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

    public ActionEstimate Estimate(Pool pool) => ActionEstimate.None;

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct) => Task.CompletedTask;
}
