namespace Strata.Engine.Control;

/// <summary>Stable RAS event ids raised by the daemon and its control API; never rename one that has shipped.</summary>
public static class ControlRasIds
{
    public const string EngineStarted = "engine_started";
    public const string EngineStopped = "engine_stopped";
    public const string EngineUncleanShutdown = "engine_unclean_shutdown";
    /// <summary>A new engine process took over from the old one (hot swap), raised by the new one.</summary>
    public const string EngineSwapped = "engine_swapped";
    /// <summary>A hot swap failed and the old engine took everything back, raised by the old one.</summary>
    public const string SwapFailed = "swap_failed";
    public const string EngineFormatted = "engine_formatted";
    public const string PoolCreated = "pool_created";
    public const string PoolDestroyed = "pool_destroyed";
    public const string SystemPrepared = "system_prepared";
    public const string SystemPrepareCancelled = "system_prepare_cancelled";
    public const string PoolPropertySet = "pool_prop_set";
    public const string ContainerCreated = "container_created";
    public const string ContainerDestroyed = "container_destroyed";
    public const string ImageCreated = "image_created";
    public const string ImageRemoved = "image_removed";
    public const string ImageResized = "image_resized";
    public const string CallerRejected = "control_caller_rejected";
    public const string PoolOpenFailed = "pool_open_failed";
    public const string RasLogWriteFailed = "ras_log_write_failed";
    public const string RasLogWriteResumed = "ras_log_write_resumed";
}
