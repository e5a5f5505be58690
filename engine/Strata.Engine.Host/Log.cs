using Microsoft.Extensions.Logging;

namespace Strata.Engine.Host;

/// <summary>The daemon's log messages; the event ids are stable (operators grep and alert on them).</summary>
internal static partial class Log
{
    [LoggerMessage(1000, LogLevel.Information, "strata-engine {Version} starting: pid {Pid}, uid {Uid}, data dir {DataDir}, config {Config}")]
    public static partial void Starting(ILogger logger, string version, int pid, uint uid, string dataDir, string config);

    [LoggerMessage(1001, LogLevel.Information, "formatted {Count} new target(s)")]
    public static partial void Formatted(ILogger logger, int count);

    [LoggerMessage(1002, LogLevel.Information, "opened {Count} target(s) with {Pools} pool(s)")]
    public static partial void Opened(ILogger logger, int count, int pools);

    [LoggerMessage(1003, LogLevel.Information, "control API listening on {Socket} (admin group {Group})")]
    public static partial void Listening(ILogger logger, string socket, string group);

    [LoggerMessage(1004, LogLevel.Information, "Prometheus metrics on http://127.0.0.1:{Port}/metrics")]
    public static partial void MetricsPort(ILogger logger, int port);

    [LoggerMessage(1005, LogLevel.Information, "stopping: flushing and closing pools")]
    public static partial void Stopping(ILogger logger);

    [LoggerMessage(1006, LogLevel.Information, "stopped cleanly")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(1007, LogLevel.Warning, "removed a stale socket at {Socket} (nothing was listening)")]
    public static partial void StaleSocketRemoved(ILogger logger, string socket);

    // 1008 (NBD listeners ignored) was retired when the NBD server arrived; ids are never reused.

    [LoggerMessage(1009, LogLevel.Information, "NBD listening on {Address}")]
    public static partial void NbdListening(ILogger logger, string address);

    [LoggerMessage(1010, LogLevel.Warning, "RAS log write failed: {Message}")]
    public static partial void RasLogWriteFailed(ILogger logger, string message);

    [LoggerMessage(1011, LogLevel.Warning, "RAS log written again: {Message}")]
    public static partial void RasLogWriteResumed(ILogger logger, string message);

    [LoggerMessage(1012, LogLevel.Error, "{Count} RAS event(s) could not be written to {Path} before the engine stopped; they are lost")]
    public static partial void RasLogUnwrittenAtStop(ILogger logger, int count, string path);

    [LoggerMessage(1013, LogLevel.Warning, "pool {Pool} could not be opened: {Reason}")]
    public static partial void PoolOpenFailed(ILogger logger, string pool, string reason);

    [LoggerMessage(1014, LogLevel.Warning, "the previous engine (pid {Pid}, started {Since:O}) did not stop cleanly; its pools are recovered from their logs")]
    public static partial void UncleanShutdown(ILogger logger, string pid, DateTime since);

    [LoggerMessage(1015, LogLevel.Information, "pool {Pool} opened in {TotalMs:F0} ms: headers {HeadersMs:F0}, checkpoints read {CheckpointMs:F0}, log read and replayed {LogMs:F0} ({LogBytes} bytes, {Records} records, {Rewritten} extents of deferred writes rewritten), state {StateMs:F0}, checkpoint written {WriteMs:F0}")]
    public static partial void PoolOpened(ILogger logger, string pool, double totalMs, double headersMs, double checkpointMs, double logMs, long logBytes, int records,
        int rewritten, double stateMs, double writeMs);

    [LoggerMessage(1016, LogLevel.Information, "storage opened in {TotalMs:F0} ms: targets {TargetsMs:F0}, superblocks {EngineMs:F0}, pools {PoolsMs:F0}, migrations {MigrationsMs:F0}")]
    public static partial void StorageOpened(ILogger logger, double totalMs, double targetsMs, double engineMs, double poolsMs, double migrationsMs);

    [LoggerMessage(1100, LogLevel.Warning, "rejected control caller pid {Pid} uid {Uid} gid {Gid}: not root, the engine's uid {EngineUid}, or a member of group {Group}")]
    public static partial void CallerRejected(ILogger logger, int pid, uint uid, uint gid, uint engineUid, string group);

    [LoggerMessage(1101, LogLevel.Warning, "rejected a control connection without peer credentials")]
    public static partial void NoPeerCredentials(ILogger logger);

    [LoggerMessage(1200, LogLevel.Error, "control request {Method} {Path} failed unexpectedly")]
    public static partial void RequestFailed(ILogger logger, Exception e, string method, string path);

    [LoggerMessage(1400, LogLevel.Information, "NBD connection {Connection} from {Peer} opened export {Export} (structured replies: {Structured})")]
    public static partial void NbdExportOpened(ILogger logger, long connection, string peer, string export, bool structured);

    [LoggerMessage(1401, LogLevel.Information, "NBD connection {Connection} from {Peer} closed: {Why}")]
    public static partial void NbdConnectionClosed(ILogger logger, long connection, string peer, string why);

    [LoggerMessage(1402, LogLevel.Warning, "NBD client {Peer} refused: {Reason}")]
    public static partial void NbdClientRefused(ILogger logger, string peer, string reason);

    [LoggerMessage(1403, LogLevel.Warning, "NBD connection {Connection} from {Peer} broke the protocol: {What}; closing it")]
    public static partial void NbdProtocolViolation(ILogger logger, long connection, string peer, string what);

    [LoggerMessage(1404, LogLevel.Error, "NBD connection {Connection} from {Peer} hit an unexpected error")]
    public static partial void NbdUnexpectedError(ILogger logger, Exception e, long connection, string peer);

    [LoggerMessage(1405, LogLevel.Warning, "NBD connection {Connection} from {Peer} abandoned: {Why}; closing it without its replies")]
    public static partial void NbdConnectionAbandoned(ILogger logger, long connection, string peer, string why);

    [LoggerMessage(1406, LogLevel.Warning, "NBD connection {Connection} from {Peer} refused over TLS: {Reason}")]
    public static partial void NbdTlsRefused(ILogger logger, long connection, string peer, string reason);

    [LoggerMessage(1407, LogLevel.Warning, "NBD listener {Listener}: server certificate '{Subject}' expires on {NotAfter:yyyy-MM-dd HH:mm} UTC, in {Days:F1} days; renew it and run `strata system reload-tls` (or send SIGHUP)")]
    public static partial void NbdTlsCertificateExpiring(ILogger logger, string listener, string subject, DateTime notAfter, double days);

    [LoggerMessage(1408, LogLevel.Information, "NBD TLS certificates reloaded: {What}")]
    public static partial void NbdTlsReloaded(ILogger logger, string what);

    [LoggerMessage(1409, LogLevel.Error, "NBD TLS certificates not reloaded (the previous ones stay in use): {Reason}")]
    public static partial void NbdTlsReloadFailed(ILogger logger, string reason);

    [LoggerMessage(1300, LogLevel.Error, "error while stopping")]
    public static partial void StopFailed(ILogger logger, Exception e);

    // 1400 was also given to this message by mistake (it is NBD's "connection opened"); it moved to 1500.
    [LoggerMessage(1500, LogLevel.Information, "pool {Pool}: upgrade {From} -> {To} recorded as job {Job}")]
    public static partial void UpgradeStarted(ILogger logger, string pool, uint from, uint to, ulong job);

    // 1600-1609: the hot swap (docs/operations.md, "Hot swap") and closing the storage for it or a stop.
    [LoggerMessage(1600, LogLevel.Information, "hot swap: handing over to pid {Pid} ({Version}, layouts up to {MaxLayout}): {Listeners} listener(s), {Connections} NBD connection(s)")]
    public static partial void SwapHandingOver(ILogger logger, int pid, string version, uint maxLayout, int listeners, int connections);

    [LoggerMessage(1601, LogLevel.Information, "hot swap: pid {Pid} took over (freeze {FreezeMs:F1} ms, checkpoint {CheckpointMs:F1} ms, hand-off {HandoffMs:F1} ms, open {OpenMs:F1} ms); this engine exits")]
    public static partial void SwapHandedOver(ILogger logger, int pid, double freezeMs, double checkpointMs, double handoffMs, double openMs);

    [LoggerMessage(1602, LogLevel.Warning, "hot swap failed, this engine took everything back and serves on: {Reason}")]
    public static partial void SwapFailed(ILogger logger, string reason);

    [LoggerMessage(1603, LogLevel.Information, "hot swap: took over from pid {Pid}: {Listeners} listener(s), {Connections} NBD connection(s) adopted; thawed after {ThawMs:F1} ms")]
    public static partial void SwapTookOver(ILogger logger, int pid, int listeners, int connections, double thawMs);

    [LoggerMessage(1604, LogLevel.Warning, "hot swap refused: {Reason}")]
    public static partial void SwapRefused(ILogger logger, string reason);

    [LoggerMessage(1605, LogLevel.Information, "hot swap: ran the storage code once before the hand-off in {Ms:F0} ms ({JitMs:F0} ms compiling {Methods} methods)")]
    public static partial void SwapWarmedUp(ILogger logger, double ms, double jitMs, long methods);

    [LoggerMessage(1606, LogLevel.Warning, "hot swap: the run of the storage code before the hand-off failed, the open will be slower: {Reason}")]
    public static partial void SwapWarmupFailed(ILogger logger, string reason);

    [LoggerMessage(1607, LogLevel.Warning, "closing the storage: target {Index}'s flush failed ({Reason}); no open pool uses the target (every pool excludes it), so nothing is lost")]
    public static partial void UnusedTargetFlushFailed(ILogger logger, int index, string reason);

    [LoggerMessage(1700, LogLevel.Information, "target {Index} added: {Uri}")]
    public static partial void TargetAdded(ILogger logger, int index, string uri);

    [LoggerMessage(1701, LogLevel.Information, "pool {Pool}: extend from {From} to {To} targets started ({Replicas} chunk replicas move)")]
    public static partial void ExtendStarted(ILogger logger, string pool, int from, int to, long replicas);
}
