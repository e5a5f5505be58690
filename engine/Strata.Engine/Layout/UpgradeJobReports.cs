namespace Strata.Engine.Layout;

/// <summary>One action of an upgrade plan (the host maps it to the API's UpgradePlanAction).</summary>
public sealed record UpgradeActionPlan(int Index, uint Version, string Feature, string Class, string Kind, string Access,
    long Items, long BytesToScan, long BytesToMove, string Description);

/// <summary>A precondition of an upgrade and whether it holds now.</summary>
public sealed record UpgradeCheck(string Name, bool Ok, string Detail);

/// <summary>What an upgrade would do (dry run) or was started to do.</summary>
public sealed record UpgradeJobPlan(string Pool, uint From, uint To, IReadOnlyList<UpgradeActionPlan> Actions,
    IReadOnlyList<UpgradeCheck> Preconditions, bool DryRun, ulong? JobId);

/// <summary>
/// An upgrade job's state and progress: actions done of total, items and bytes done of total,
/// rate and ETA, and the longest time I/O was paused by a quiesce step of this run.
/// </summary>
public sealed record UpgradeJobStatus(string Pool, uint LayoutVersion, string Status, uint? Target, ulong? JobId, string? Reason,
    int ActionsDone, int ActionsTotal, long ItemsDone, long ItemsTotal, long BytesDone, long BytesTotal,
    double? ItemsPerSecond, double? BytesPerSecond, double? EtaSeconds, string? CurrentAction, double? LongestPauseMs, bool Running);
