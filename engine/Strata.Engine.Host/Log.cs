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

    [LoggerMessage(1008, LogLevel.Warning, "NBD listeners are configured ({Listeners}) but this build has no NBD server yet; ignoring them")]
    public static partial void NbdIgnored(ILogger logger, string listeners);

    [LoggerMessage(1100, LogLevel.Warning, "rejected control caller pid {Pid} uid {Uid} gid {Gid}: not root, the engine's uid {EngineUid}, or a member of group {Group}")]
    public static partial void CallerRejected(ILogger logger, int pid, uint uid, uint gid, uint engineUid, string group);

    [LoggerMessage(1101, LogLevel.Warning, "rejected a control connection without peer credentials")]
    public static partial void NoPeerCredentials(ILogger logger);

    [LoggerMessage(1200, LogLevel.Error, "control request {Method} {Path} failed unexpectedly")]
    public static partial void RequestFailed(ILogger logger, Exception e, string method, string path);

    [LoggerMessage(1300, LogLevel.Error, "error while stopping")]
    public static partial void StopFailed(ILogger logger, Exception e);

    [LoggerMessage(1400, LogLevel.Information, "pool {Pool}: upgrade {From} -> {To} recorded as job {Job}")]
    public static partial void UpgradeStarted(ILogger logger, string pool, uint from, uint to, ulong job);
}
