using System.Collections.Concurrent;

namespace Strata.Engine.Store;

/// <summary>Severity of a RAS event (DAOS's levels).</summary>
public enum RasSeverity { Error, Warning, Notice }

/// <summary>Whether the event reports a state change or is informational (DAOS's types).</summary>
public enum RasType { StateChange, InfoOnly }

/// <summary>
/// A reliability/availability/serviceability event: a stable id operators and
/// tests match on, plus where it happened. The durable JSON-lines log is the daemon's.
/// </summary>
public sealed record RasEvent(
    string Id,
    RasSeverity Severity,
    RasType Type,
    string Message,
    string? Pool = null,
    string? Image = null,
    int? Target = null,
    string? Device = null,
    long? Offset = null)
{
    public DateTimeOffset Timestamp { get; init; } = DateTimeOffset.UtcNow;
}

/// <summary>Stable RAS event ids; never rename one that has shipped.</summary>
public static class RasIds
{
    public const string DataChecksumMismatch = "data_checksum_mismatch";
    public const string ReplicaRepaired = "replica_repaired";
    public const string DataUnrecoverable = "data_unrecoverable";
    public const string HeaderCopyBad = "header_copy_bad";
    public const string PoolHeaderDamaged = "pool_header_damaged";
    public const string CheckpointBad = "checkpoint_bad";
    public const string PoolReadOnly = "pool_read_only";
    public const string DataWriteFailed = "data_write_failed";
    public const string DataReadFailed = "data_read_failed";
    public const string PoolLayoutIncompatible = "pool_durable_format_incompatible";
    public const string PoolCreateRolledBack = "pool_create_rolled_back";
    public const string PoolUpgradeStarted = "pool_upgrade_started";
    public const string PoolUpgradeResumed = "pool_upgrade_resumed";
    public const string PoolUpgradeCompleted = "pool_upgrade_completed";
    public const string PoolUpgradeFailed = "pool_upgrade_failed";
    public const string LogTailWriteDropped = "log_tail_write_dropped";
    public const string BarrierFrozen = "barrier_frozen";
    public const string BarrierThawed = "barrier_thawed";
    public const string BarrierExpired = "barrier_expired";
    public const string BarrierFailed = "barrier_failed";
    public const string MigrationPaused = "migration_paused";
    public const string MigrationResumed = "migration_resumed";
    public const string MigrationChunkLeft = "migration_chunk_left";
    public const string TargetAdded = "target_added";
    public const string PoolExtendStarted = "pool_extend_started";
    public const string PoolExtendResumed = "pool_extend_resumed";
    public const string PoolExtendCompleted = "pool_extend_completed";
    public const string PoolExtendFailed = "pool_extend_failed";
    public const string TargetExcluded = "target_excluded";
    public const string TargetAutoExcluded = "target_auto_excluded";
    public const string TargetDropped = "target_dropped";
    public const string TargetUnreadable = "target_unreadable";
    public const string PoolDataLost = "pool_data_lost";
    public const string PoolRebuildStarted = "pool_rebuild_started";
    public const string PoolRebuildResumed = "pool_rebuild_resumed";
    public const string PoolRebuildCompleted = "pool_rebuild_completed";
    public const string PoolRebuildFailed = "pool_rebuild_failed";
    public const string TargetReintegrated = "target_reintegrated";
    public const string PoolReintegrateStarted = "pool_reintegrate_started";
    public const string PoolReintegrateResumed = "pool_reintegrate_resumed";
    public const string PoolReintegrateCompleted = "pool_reintegrate_completed";
    public const string PoolReintegrateFailed = "pool_reintegrate_failed";
    public const string PoolRfChangeStarted = "pool_rf_change_started";
    public const string PoolRfChangeResumed = "pool_rf_change_resumed";
    public const string PoolRfChangeCompleted = "pool_rf_change_completed";
    public const string PoolRfChangeFailed = "pool_rf_change_failed";
}

/// <summary>Where RAS events go.</summary>
public interface IRasSink
{
    void Emit(RasEvent e);
}

/// <summary>Keeps events in memory (tests, and until the daemon's durable log exists).</summary>
public sealed class InMemoryRasSink : IRasSink
{
    private readonly ConcurrentQueue<RasEvent> _events = new();

    public void Emit(RasEvent e) => _events.Enqueue(e);

    public IReadOnlyList<RasEvent> Events => _events.ToArray();

    public IEnumerable<RasEvent> WithId(string id) => _events.Where(e => e.Id == id);
}

/// <summary>Drops events (when the caller does not care).</summary>
public sealed class NullRasSink : IRasSink
{
    public static readonly NullRasSink Instance = new();

    public void Emit(RasEvent e) { }
}
