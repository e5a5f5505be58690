using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Engine.Control;

// The control API's wire contract, shared as one source file by the engine and the
// strata CLI (the CLI does not reference the engine). Fields are only ever added;
// a breaking change bumps Api.Version and keeps the old routes for one version.

/// <summary>Versions and names both sides agree on.</summary>
public static class Api
{
    /// <summary>The API version this build speaks (route prefix /v{Version}).</summary>
    public const int Version = 1;

    /// <summary>The oldest client API version the engine still serves.</summary>
    public const int MinVersion = 1;

    /// <summary>Request header: the client's API version. Response header: the engine's.</summary>
    public const string VersionHeader = "Strata-Api-Version";

    /// <summary>Response header: the oldest API version the engine serves.</summary>
    public const string MinVersionHeader = "Strata-Api-Min-Version";

    /// <summary>Largest request body the engine accepts (DAOS caps control messages at 1 MiB too).</summary>
    public const int MaxBodyBytes = 1 << 20;

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // Operators read these lines (RAS log, --json): keep quotes and '+' readable.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Converters = { new JsonStringEnumConverter() },
    };
}

/// <summary>Stable error codes of the JSON error body; the CLI maps them to exit codes.</summary>
public static class ErrorCodes
{
    public const string NotFound = "not_found";
    public const string AlreadyExists = "already_exists";
    public const string Busy = "busy";
    public const string Invalid = "invalid_request";
    public const string NoSpace = "no_space";
    public const string ReadOnly = "read_only";
    public const string IncompatibleLayout = "incompatible_layout";
    public const string Corrupt = "corrupt_metadata";
    public const string DataIntegrity = "data_integrity";
    public const string VersionMismatch = "version_mismatch";
    public const string PermissionDenied = "permission_denied";
    public const string TooLarge = "request_too_large";
    public const string Internal = "internal_error";
    public const string Io = "io_error";
}

public sealed record ErrorBody(string Error, string Code);

/// <summary>`system reload-tls`: one line per NBD listener whose certificates were loaded again.</summary>
public sealed record TlsReloadResult(List<string> Listeners);

public sealed record SystemInfo(string Host, int Pid, int Uid, string EngineVersion, int ApiVersion, int ApiMinVersion,
    DateTimeOffset Started, double UptimeSeconds, string Socket, string? DataDir, string? ConfigFile, int Targets, int Pools, string State);

/// <summary>A target as `storage query` shows it. Health: ok, degraded or failed; HealthReason says why when not ok.</summary>
public sealed record TargetInfoDto(int Index, string Device, long CapacityBytes, int BlockSize, string Kind, long AllocatedBytes, int Pools, string Health,
    string? HealthReason = null, long FreeBytes = 0, TargetErrorsDto? Errors = null);

/// <summary>What a target's device has shown since the engine started.</summary>
public sealed record TargetErrorsDto(long ReadErrors, long WriteErrors, long ChecksumMismatches, long ReplicasRepaired);

public sealed record StorageInfo(IReadOnlyList<TargetInfoDto> Targets, long TotalBytes, long AllocatedBytes);

/// <summary>Layout absent (null) = the newest the engine supports; an older one keeps the pool openable by older releases; 0 is refused.</summary>
public sealed record PoolCreateRequest(string Label, long Size, int Rf = 1, uint? Layout = null);

public sealed record UpgradeRequest(uint? To = null, bool DryRun = false);

public sealed record SystemPrepareRequest(bool Cancel = false);

/// <summary>A pool after `system prepare`: bytes left in its log (0 = nothing to replay) and whether writes are refused.</summary>
public sealed record PreparedPoolDto(string Pool, long LogBytes, bool Prepared, string? Problem = null);

/// <summary>`system barrier freeze`: hold NBD requests and refuse metadata changes for at most TimeoutSeconds; Pool null = every pool.</summary>
public sealed record BarrierFreezeRequest(double TimeoutSeconds, string? Pool = null);

/// <summary>
/// `system barrier stat` (and the answer of freeze and thaw). State: thawed, freezing, frozen, thawing,
/// expired or failed (Lustre's names); Pool null = every pool; Reason: why it expired or failed.
/// </summary>
public sealed record BarrierStatusDto(string State, string? Pool, IReadOnlyList<string> Pools, DateTimeOffset? Since,
    DateTimeOffset? Expires, double? SecondsLeft, int Clients, int HeldRequests, string? Reason);

public sealed record LayoutFeatureDto(string Name, string Class, int Bit, string Kind, string Access, string Description);

public sealed record LayoutVersionDto(uint Version, string Summary, bool Supported, IReadOnlyList<LayoutFeatureDto> Features);

public sealed record LayoutCatalogDto(uint MinSupported, uint MaxSupported, IReadOnlyList<LayoutVersionDto> Versions, IReadOnlyDictionary<string, uint> Releases);

/// <summary>
/// A pool in `pool list`. TotalBytes, UsedBytes, FreeBytes and Rf are named as in PoolQueryDto and
/// present while the pool is open; SizeBytes (= TotalBytes) stays for API v1 clients.
/// </summary>
public sealed record PoolListEntry(string Label, Guid Id, uint LayoutVersion, uint SupportedLayoutVersion, string? UpgradeNeeded,
    long SizeBytes, int Targets, string State, long? TotalBytes = null, long? UsedBytes = null, long? FreeBytes = null, int? Rf = null);

public sealed record TargetSpaceDto(int Target, string Device, long TotalBytes, long UsedBytes, long FreeBytes);

/// <summary>
/// A pool in `pool query`. State is named and valued as in PoolListEntry (ready, readonly, closed);
/// Status (Ready, ReadOnly) stays for API v1 clients.
/// </summary>
public sealed record PoolQueryDto(string Label, Guid Id, uint LayoutVersion, uint SupportedLayoutVersion, string? UpgradeNeeded,
    string Status, string? ReadOnlyReason, int Rf, int Containers, int Images, long TotalBytes, long UsedBytes, long FreeBytes,
    IReadOnlyList<TargetSpaceDto> Targets, string? Warning, UpgradeStatus? Upgrade = null, string? State = null, PoolJobDto? Job = null,
    PoolRedundancyDto? Redundancy = null, IReadOnlyList<string>? Running = null, PoolReintegrationStatusDto? Reintegration = null);

/// <summary>
/// A pool's running or last reintegration: Target (null for a job resumed at the open), State checking,
/// rejoining, moving, completed, failed or stopped; while checking, the replicas and bytes on the target
/// read and verified so far of the total; Reason for a failed or stopped one.
/// </summary>
public sealed record PoolReintegrationStatusDto(int? Target, string State, long ReplicasChecked, long ReplicasTotal, long BytesChecked, long BytesTotal, string? Reason);

/// <summary>A pool's redundancy: Health ok, degraded or rebuilding; chunks and bytes at one copy; lost chunks (every copy on excluded targets) and their images.</summary>
public sealed record PoolRedundancyDto(IReadOnlyList<int> ExcludedTargets, string Health, long ChunksAtOneCopy, long BytesAtOneCopy,
    long LostChunks, long LostBytes, IReadOnlyList<string> LostImages);

public sealed record ExcludeTargetRequest(bool Force = false);

/// <summary>What excluding a target left each pool with, and whether its rebuild started (or why not).</summary>
public sealed record PoolExclusionDto(string Pool, int Target, PoolRedundancyDto Redundancy, bool RebuildStarted, string? RebuildRefused);

/// <summary>What reintegrating a target found in one pool: replicas on it, how many verified (kept) and did not (copied anew), lost chunks readable again.</summary>
public sealed record PoolReintegrationDto(string Pool, int Target, long Replicas, long Valid, long Invalid, long InvalidBytes, long Recovered,
    PoolRedundancyDto Redundancy, bool JobStarted);

/// <summary>A pool's data-moving job other than an upgrade (extend): State running, completed, failed or stopped.</summary>
public sealed record PoolJobDto(string Kind, string State, long ItemsDone, long ItemsTotal, long BytesDone, long BytesTotal,
    double? BytesPerSecond, string? Current, string? Reason);

/// <summary>`storage add-target`: the device URI, as in the engine's configuration (file:PATH?create=1&amp;size=4G, nvme-...).</summary>
public sealed record AddTargetRequest(string Uri);

public sealed record ExtendRequest(bool DryRun = false);

/// <summary>What `pool extend` moves: of Replicas chunk replicas, MovingReplicas (MovingBytes) go to other targets.</summary>
public sealed record ExtendPlanDto(string Pool, int FromTargets, int ToTargets, int Placement, long Chunks, long Replicas,
    long MovingChunks, long MovingReplicas, long MovingBytes, double MovingFraction, bool DryRun);

/// <summary>A property; Source (pool properties): "default", "set" (at creation or by set-prop, to a value other than the default) or "-" (computed, read-only).</summary>
public sealed record PropertyDto(string Name, string Value, string? Source = null);

public sealed record SetPropertyRequest(string Value);

public sealed record ContainerCreateRequest(string Label);

public sealed record ContainerDto(uint Id, string Label, int Images, IReadOnlyDictionary<string, string> Properties);

public sealed record ImageCreateRequest(string Label, long Size, int ChunkSize = 0);

/// <summary>A new image size; a shrink that drops mapped data needs AllowShrink.</summary>
public sealed record ImageResizeRequest(long Size, bool AllowShrink = false);

/// <summary>
/// An image; `image info` also fills Nbd (one URI per NBD listener), Clients (who holds it open),
/// Alias (the name of a migrated source that resolves to it) and Migration (when either end of one).
/// </summary>
public sealed record ImageDto(uint Id, string Pool, string Container, string Label, long Size, int ChunkSize, long MappedBytes,
    IReadOnlyList<string>? Nbd = null, IReadOnlyList<PoolClientDto>? Clients = null, string? Alias = null, MigrationStatusDto? Migration = null);

/// <summary>A data-path client of a pool (an NBD connection): what it holds open and who it is.</summary>
public sealed record PoolClientDto(long Id, string Kind, string Image, string Peer, DateTimeOffset Since);

public sealed record WriteResult(long Offset, int Bytes);

/// <summary>A RAS event as the durable log stores it and the API streams it (DAOS's fields).</summary>
public sealed record RasRecord
{
    public long Seq { get; init; }
    public string Id { get; init; } = "";
    /// <summary>ISO 8601 with microseconds and zone, e.g. 2026-11-21T06:40:01.123456+00:00.</summary>
    public string Timestamp { get; init; } = "";
    public string Host { get; init; } = "";
    /// <summary>STATE_CHANGE or INFO_ONLY.</summary>
    public string Type { get; init; } = "";
    /// <summary>ERROR, WARNING or NOTICE.</summary>
    public string Severity { get; init; } = "";
    public string Msg { get; init; } = "";
    public int Pid { get; init; }
    public int Tid { get; init; }
    public string? Pool { get; init; }
    public string? Cont { get; init; }
    public string? Image { get; init; }
    public int? Target { get; init; }
    public string? Device { get; init; }
    public long? Offset { get; init; }
    public IReadOnlyDictionary<string, string>? Data { get; init; }
}

/// <summary>One action of an upgrade plan, as `pool upgrade --dry-run` lists it.</summary>
public sealed record UpgradePlanAction(int Index, uint Version, string Feature, string Class, string Kind, string Access,
    long Items, long BytesToScan, long BytesToMove, string Description);

/// <summary>A precondition and whether it holds now.</summary>
public sealed record UpgradePrecondition(string Name, bool Ok, string Detail);

/// <summary>What an upgrade would do (dry run) or was started to do.</summary>
public sealed record UpgradePlan(string Pool, uint From, uint To, IReadOnlyList<UpgradePlanAction> Actions,
    IReadOnlyList<UpgradePrecondition> Preconditions, bool DryRun, ulong? JobId);

/// <summary>
/// An upgrade's status and progress (the pool properties upgrade_status, upgrade_target and
/// upgrade_progress): actions done of total, items and bytes done of total, rate and ETA,
/// and the longest time I/O was paused by a quiesce step of this run.
/// </summary>
public sealed record UpgradeStatus(string Pool, uint LayoutVersion, string Status, uint? Target, ulong? JobId, string? Reason,
    int ActionsDone, int ActionsTotal, long ItemsDone, long ItemsTotal, long BytesDone, long BytesTotal,
    double? ItemsPerSecond, double? BytesPerSecond, double? EtaSeconds, string? CurrentAction, double? LongestPauseMs, bool Running);

/// <summary>
/// `system swap`: replace the engine's process by Binary (a strata-engine) while NBD clients stay
/// connected. TimeoutSeconds bounds the new process's start and hand-off; MaxLayout (hidden) runs it
/// as an older release; Fault (hidden, tests) makes it fail on purpose (exit-at-start, crash-after-half,
/// refuse-pool:NAME).
/// </summary>
public sealed record SystemSwapRequest(string Binary, double TimeoutSeconds = 60, uint? MaxLayout = null, string? Fault = null);

/// <summary>A completed swap: who took over, what moved, and where the pause went (milliseconds, as the old engine saw them).</summary>
public sealed record SwapResultDto(int OldPid, int NewPid, string NewVersion, uint NewMaxLayout, int Listeners, int Connections,
    double FreezeMs, double CheckpointMs, double HandoffMs, double OpenMs, double TotalMs);

/// <summary>
/// `image migrate prepare SRC DST`: both "pool/container/image"; ChunkSize 0 keeps the source's where
/// the destination pool allows it. ImportOnly: Source is empty and SourceSpec names the outside source
/// ({"type":"raw","path":...} or {"type":"nbd","uri":...}).
/// </summary>
public sealed record MigrationPrepareRequest(string? Source, string Destination, int ChunkSize = 0, bool ImportOnly = false, string? SourceSpec = null, int Rf = 0);

/// <summary>`image migrate execute|commit|abort|remove-alias IMAGE`: either end's "pool/container/image".</summary>
public sealed record MigrationRequest(string Image);

/// <summary>A migration as `image migrate status` shows it (Summary: "executing (32% complete)").</summary>
public sealed record MigrationStatusDto(string Source, string Destination, string State, string Summary, int PercentComplete,
    long ChunksDone, long Chunks, long BytesCopied, double RateBytesPerSecond, double? EtaSeconds, string? Error);

/// <summary>An image and the migrated source name that resolves to it (null: none).</summary>
public sealed record MigrationAliasDto(string Image, string? Alias);
