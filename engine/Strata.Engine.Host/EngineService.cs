using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Strata.Engine.Control;
using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>
/// Owns the devices, the StorageEngine, the RAS log and the metrics, and maps each
/// control API call to the storage API. Route handlers stay thin: they parse, call
/// one method here, and serialize; domain exceptions travel up to <see cref="ApiErrors"/>.
/// </summary>
public sealed class EngineService : IAsyncDisposable
{
    private List<IBlockDevice> _devices;
    private PollerGroup? _filePollers;
    private readonly ILogger _logger;
    private readonly TargetHealthSink _health;
    private int _disposed;

    /// <summary>Targets added with `storage add-target`, one URI a line, opened after the configured ones (docs/operations.md).</summary>
    internal static string AddedTargetsPath(string dataDir) => Path.Combine(dataDir, "targets.added");

    private static List<string> AddedTargets(string dataDir)
    {
        string path = AddedTargetsPath(dataDir);
        return File.Exists(path) ? File.ReadAllLines(path).Where(l => l.Length > 0).ToList() : [];
    }

    private EngineService(ResolvedConfig config, List<IBlockDevice> devices, PollerGroup? filePollers, StorageEngine engine, RasLog ras, TargetHealthSink health, ILogger logger)
    {
        Config = config;
        _devices = devices;
        _filePollers = filePollers;
        Engine = engine;
        Ras = ras;
        _health = health;
        _logger = logger;
        Metrics = new StrataMetrics(Space, () => Engine.ListPools().Count);
        Metrics.ObserveUpgrades(() => Engine.OpenPools().Select(p => p.GetUpgradeStatus()).Where(s => s.JobId != null).ToList());
        Metrics.ObservePools(() => Engine.OpenPools());
        Prometheus = new PrometheusExporter(StrataMetrics.MeterName);
        ras.Emitted += r =>
        {
            Metrics.RecordRas(r.Severity);
            if (r.Id == ControlRasIds.RasLogWriteFailed)
                Log.RasLogWriteFailed(_logger, r.Msg);
            else if (r.Id == ControlRasIds.RasLogWriteResumed)
                Log.RasLogWriteResumed(_logger, r.Msg);
        };
        ras.WriteFailed += Metrics.RecordRasUnwritten;
        ras.EventsLost += Metrics.RecordRasLost;
    }

    public ResolvedConfig Config { get; }

    /// <summary>The storage; replaced when a failed hot swap reopens it (<see cref="ReopenStorageAsync"/>).</summary>
    public StorageEngine Engine { get; private set; }

    public RasLog Ras { get; }

    public StrataMetrics Metrics { get; }

    public PrometheusExporter Prometheus { get; }

    public DateTimeOffset Started { get; } = DateTimeOffset.Now;

    /// <summary>The NBD server, when listeners are configured (image info shows its URIs).</summary>
    public NbdServer? Nbd { get; private set; }

    /// <summary>The hot swap's coordinator (`system swap`), once the control API runs.</summary>
    internal Swap.SwapCoordinator? Swap { get; set; }

    public Task<SwapResultDto> SwapAsync(SystemSwapRequest req) =>
        (Swap ?? throw new BusyException("the engine is still starting; swap once it runs")).SwapAsync(req);

    public void AttachNbd(NbdServer server)
    {
        Nbd = server;
        Metrics.ObserveNbd(() => server.InFlightBytes, () => server.PeakInFlightBytes, () => server.Buffers.NativeBytes);
    }

    /// <summary>
    /// Loads the NBD listeners' TLS certificates again (SIGHUP, `strata system reload-tls`): all or,
    /// when one is refused, none. Open connections are not touched. One line per listener reloaded.
    /// </summary>
    public IReadOnlyList<string> ReloadTls()
    {
        if (Nbd == null || Nbd.Listeners.All(l => l.TlsMode == NbdTlsMode.Off))
            throw new InvalidRequestException("no NBD listener has TLS on (tls: on or tls: require in the engine's configuration)");
        try
        {
            return Nbd.ReloadTls();
        }
        catch (NbdTlsException e)
        {
            Log.NbdTlsReloadFailed(_logger, e.Message);
            throw new InvalidRequestException($"certificates not reloaded, the previous ones stay in use: {e.Message}");
        }
    }

    // Every await on the storage API uses ForceYielding: devices complete I/O inline on their poller
    // thread (DeviceOptions.InlineCompletions), and the daemon's continuations (RAS fsync, JSON,
    // Kestrel writes) must not run there, let alone block it.

    /// <summary>Opens (or, for target files this call created, formats) the targets and opens every pool.</summary>
    public static async Task<EngineService> StartAsync(ResolvedConfig cfg, ILogger logger)
    {
        var ras = new RasLog(cfg.RasPath, cfg.RasMaxBytes, cfg.RasKeep);
        try
        {
            // The storage core's events pass through the health sink on their way to the log.
            var health = new TargetHealthSink(ras);
            var (devices, filePollers, engine) = await OpenStorageAsync(cfg, ras, health, logger).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            return new EngineService(cfg, devices, filePollers, engine, ras, health, logger);
        }
        catch
        {
            ras.Dispose();
            throw;
        }
    }

    /// <summary>Opens (or, for target files this call created, formats) the targets and opens every pool.</summary>
    private static async Task<(List<IBlockDevice>, PollerGroup?, StorageEngine)> OpenStorageAsync(ResolvedConfig cfg, RasLog ras, TargetHealthSink health, ILogger logger)
    {
        long started = Stopwatch.GetTimestamp();
        var devices = new List<IBlockDevice>();
        // File targets share one polling thread: a busy poller per target would keep as many
        // cores spinning (on 2 cores, two targets halved 4 KiB write throughput; PollerGroup).
        var uris = cfg.Targets.Concat(AddedTargets(cfg.DataDir).Where(u => !cfg.Targets.Contains(u))).ToList();
        var filePollers = uris.Any(u => !SpdkEnvironment.IsNvmeUri(u)) ? new PollerGroup(threads: 1) : null;
        var fileOptions = new DeviceOptions { Group = filePollers };
        try
        {
            bool allNew = true;
            // The shim starts the SPDK environment on the first nvme-* open, with these options;
            // the pollers of NVMe targets run on the cores of its core_mask, as SPDK's reactors would.
            if (uris.Any(SpdkEnvironment.IsNvmeUri))
                SpdkEnvironment.Configure(cfg.Spdk);
            var nvmeOptions = new DeviceOptions { PollerCpus = cfg.Spdk.CoreMaskCpus() };
            foreach (var uri in uris)
            {
                string? file = NativeBlockDevice.FilePathOf(uri);
                if (file != null)
                {
                    Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                    allNew &= !File.Exists(file);
                }
                else
                {
                    allNew = false;
                }
                devices.Add(SpdkEnvironment.IsNvmeUri(uri) ? NativeBlockDevice.Open(uri, nvmeOptions) : NativeBlockDevice.Open(uri, fileOptions));
            }
            var options = new StorageEngineOptions
            {
                Ras = health,
                Catalog = EngineRelease.Catalog,
                UpgradeStepDelay = EngineRelease.UpgradeStepDelay,
                UpgradeHoldAtStep = EngineRelease.UpgradeHoldAtStep,
                ExcludeAfterErrors = StorageEngineOptions.DefaultExcludeAfterErrors,
            };
            long targetsOpen = Stopwatch.GetTimestamp();
            StorageEngine engine;
            if (allNew)
            {
                engine = await StorageEngine.FormatAsync(devices, options).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
                Log.Formatted(logger, devices.Count);
                ras.Emit(new RasEvent(ControlRasIds.EngineFormatted, RasSeverity.Notice, RasType.StateChange,
                    $"formatted {devices.Count} new target(s)"), null, null);
            }
            else
            {
                engine = await StorageEngine.OpenAsync(devices, options).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            }
            health.Attach(engine.Targets);
            long engineOpen = Stopwatch.GetTimestamp();
            foreach (var p in engine.ListPools())
            {
                try
                {
                    var pool = await engine.OpenPoolAsync(p.Label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
                    if (pool.OpenTimings is { } t)
                        Log.PoolOpened(logger, pool.Label, t.TotalMs, t.HeadersMs, t.CheckpointReadMs, t.LogMs, t.LogBytesRead, t.Records, t.DeferredExtentsRewritten, t.StateMs, t.CheckpointWriteMs);
                }
                catch (StoreException e)
                {
                    // The pool stays listed with its state; the storage layer raised the RAS event.
                    Log.PoolOpenFailed(logger, p.Label, e.Message);
                }
                catch (IOException e)
                {
                    Log.PoolOpenFailed(logger, p.Label, e.Message);
                    // A device error (e.g. a failed checkpoint flush) must not keep the engine down: the pool
                    // stays listed, the event names the device, and `storage query` shows its target failed.
                    health.Emit(new RasEvent(ControlRasIds.PoolOpenFailed, RasSeverity.Error, RasType.StateChange,
                        $"pool '{p.Label}' could not be opened: {e.Message}", Pool: p.Label, Device: (e as Interop.DeviceException)?.Device));
                }
            }
            long poolsOpen = Stopwatch.GetTimestamp();
            // Migrations pick up where they were (both of their pools are open now).
            try
            {
                await engine.ResumeMigrationsAsync().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            }
            catch (Exception e) when (e is StoreException or IOException)
            {
                health.Emit(new RasEvent(ImageMigrationRasIds.Failed, RasSeverity.Error, RasType.StateChange,
                    $"image migrations could not be resumed: {e.Message}; 'strata image migrate status' shows what was picked up"));
            }
            Log.Opened(logger, devices.Count, engine.ListPools().Count);
            long done = Stopwatch.GetTimestamp();
            Log.StorageOpened(logger, Stopwatch.GetElapsedTime(started, done).TotalMilliseconds, Stopwatch.GetElapsedTime(started, targetsOpen).TotalMilliseconds,
                Stopwatch.GetElapsedTime(targetsOpen, engineOpen).TotalMilliseconds, Stopwatch.GetElapsedTime(engineOpen, poolsOpen).TotalMilliseconds,
                Stopwatch.GetElapsedTime(poolsOpen, done).TotalMilliseconds);
            return (devices, filePollers, engine);
        }
        catch
        {
            foreach (var d in devices)
                await d.DisposeAsync();
            filePollers?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Hot swap: closes every pool (each checkpoints: a new engine replays nothing) and flushes and
    /// closes the targets, so the new engine process can open them. The RAS log stays open.
    /// </summary>
    public async Task CloseStorageAsync()
    {
        // Decided before the pools close: which targets an open pool still uses. A failed flush of any
        // other (a dead device the pools excluded) is logged and the close goes on.
        var inUse = Enumerable.Range(0, _devices.Count).Select(Engine.TargetInUse).ToArray();
        await Engine.DisposeAsync().AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        for (int i = 0; i < _devices.Count; i++)
        {
            var d = _devices[i];
            try
            {
                await d.FlushAsync().AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            }
            catch (IOException e) when (!inUse[i])
            {
                Log.UnusedTargetFlushFailed(_logger, i, e.Message);
            }
            await d.DisposeAsync().AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        }
        _devices = [];
        _filePollers?.Dispose();
        _filePollers = null;
    }

    /// <summary>Hot swap failed: opens the targets and pools again, as at start.</summary>
    public async Task ReopenStorageAsync()
    {
        var (devices, pollers, engine) = await OpenStorageAsync(Config, Ras, _health, _logger).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        (_devices, _filePollers, Engine) = (devices, pollers, engine);
    }

    /// <summary>Hot swap done: the new engine owns the storage; this one only closes its RAS log and metrics.</summary>
    public void DisposeHandedOver()
    {
        Interlocked.Exchange(ref _disposed, 1);
        Prometheus.Dispose();
        Metrics.Dispose();
        Ras.Dispose();
    }

    public void Emit(string id, RasSeverity severity, string message, string? pool = null, string? container = null, string? image = null,
        IReadOnlyDictionary<string, string>? data = null) =>
        Ras.Emit(new RasEvent(id, severity, RasType.StateChange, message, Pool: pool, Image: image), container, data);

    // ---- system and storage ----

    /// <summary>The build's version, the same string `strata --version` prints (both assemblies carry the informational version of one build).</summary>
    public static readonly string Version =
        System.Reflection.CustomAttributeExtensions.GetCustomAttribute<System.Reflection.AssemblyInformationalVersionAttribute>(typeof(EngineService).Assembly)?.InformationalVersion ?? "0";

    private bool _prepared;

    /// <summary>`system prepare` left pools checkpointed and refusing writes and metadata changes (until --cancel).</summary>
    public bool Prepared => Volatile.Read(ref _prepared);

    public SystemInfo SystemInfo(string state) => new(
        Environment.MachineName, Environment.ProcessId, (int)Unix.GetEuid(),
        Version, Api.Version, Api.MinVersion,
        Started, (DateTimeOffset.Now - Started).TotalSeconds, Config.SocketPath, Config.DataDir, Config.ConfigFile,
        Engine.Targets.Count, Engine.ListPools().Count, state);

    public StorageInfo Storage()
    {
        var pools = Engine.ListPools();
        var targets = Engine.Targets.Select(t =>
        {
            var (health, reason, errors) = _health.Health(t, pools);
            long allocated = t.AllocatedBytes, capacity = t.Device.Geometry.Capacity;
            return new TargetInfoDto(t.Index, t.Device.Name, capacity, t.Device.Geometry.LogicalBlockSize,
                t.Device.Geometry.Kind.ToString().ToLowerInvariant(), allocated, pools.Count, health, reason,
                Math.Max(0, capacity - TargetSuperblock.ReservedBytes - allocated), errors);
        }).ToList();
        return new StorageInfo(targets, targets.Sum(t => t.CapacityBytes), targets.Sum(t => t.AllocatedBytes));
    }

    /// <summary>
    /// `storage add-target`: opens the device, formats it as the next target and records its URI in the
    /// data directory (after the target is written, before the older targets count it), so a restart opens it.
    /// </summary>
    public async Task<TargetInfoDto> AddTargetAsync(AddTargetRequest req)
    {
        if (string.IsNullOrWhiteSpace(req.Uri))
            throw new InvalidRequestException("a target URI is needed, e.g. file:/var/lib/strata/target2.img?create=1&size=4G");
        if (Config.Targets.Contains(req.Uri) || AddedTargets(Config.DataDir).Contains(req.Uri))
            throw new BusyException($"target '{req.Uri}' is already one of the engine's targets");
        IBlockDevice device;
        try
        {
            device = SpdkEnvironment.IsNvmeUri(req.Uri)
                ? NativeBlockDevice.Open(req.Uri, new DeviceOptions { PollerCpus = Config.Spdk.CoreMaskCpus() })
                : NativeBlockDevice.Open(req.Uri, new DeviceOptions { Group = _filePollers });
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new InvalidRequestException($"cannot open target '{req.Uri}': {e.Message}");
        }
        try
        {
            var target = await Engine.AddTargetAsync(device, async () =>
            {
                string path = AddedTargetsPath(Config.DataDir);
                await File.AppendAllLinesAsync(path, [req.Uri]).ConfigureAwait(false);
                using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
                f.Flush(flushToDisk: true);
            }).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            lock (_devices)
                _devices.Add(device);
            _health.Attach(Engine.Targets);
            Log.TargetAdded(_logger, target.Index, req.Uri);
            return Storage().Targets.First(t => t.Index == target.Index);
        }
        catch
        {
            await device.DisposeAsync();
            throw;
        }
    }

    public async Task<ExtendPlanDto> ExtendAsync(string label, ExtendRequest req)
    {
        var pool = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var p = await pool.ExtendAsync(req.DryRun).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        if (p.Started)
            Log.ExtendStarted(_logger, label, p.FromTargets, p.ToTargets, p.MovingReplicas);
        return new ExtendPlanDto(p.Pool, p.FromTargets, p.ToTargets, p.Placement, p.Chunks, p.Replicas, p.MovingChunks, p.MovingReplicas,
            p.MovingBytes, p.MovingFraction, req.DryRun);
    }

    private (long, long, long) Space()
    {
        var s = Storage();
        long used = 0;
        foreach (var p in Engine.ListPools())
        {
            try
            {
                // Metrics threads only (never a poller): wait briefly for the engine lock, else skip the pool this round.
                if (p.State is not ("ready" or "readonly"))
                    continue;
                var open = Engine.OpenPoolAsync(p.Label);
                if (open.Wait(TimeSpan.FromMilliseconds(200)))
                    used += open.Result.Query().UsedBytes;
            }
            catch (Exception e) when (e is StoreException or ObjectDisposedException or AggregateException)
            {
            }
        }
        return (s.TotalBytes, s.AllocatedBytes, used);
    }

    // ---- pools ----

    /// <summary>`pool list`: every pool; an open one also with its space and rf (named as in `pool query`).</summary>
    public async Task<IReadOnlyList<PoolListEntry>> ListPoolsAsync()
    {
        var result = new List<PoolListEntry>();
        foreach (var p in Engine.ListPools())
        {
            var e = new PoolListEntry(p.Label, p.Id, p.LayoutVersion, Engine.Catalog.MaxSupported,
                UpgradeNeeded(p.LayoutVersion), p.DataBytesPerTarget * p.Targets, p.Targets, p.State);
            if (p.State is "ready" or "readonly")
            {
                try
                {
                    var q = (await Engine.OpenPoolAsync(p.Label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).Query();
                    e = e with
                    {
                        TotalBytes = q.TotalBytes, UsedBytes = q.UsedBytes, FreeBytes = q.FreeBytes, Rf = q.Rf,
                    };
                }
                catch (Exception ex) when (ex is StoreException or ObjectDisposedException)
                {
                    // Destroyed, renamed or closed since the listing: listed without its space.
                }
            }
            result.Add(e);
        }
        return result;
    }

    private string? UpgradeNeeded(uint v) => v != 0 && v < Engine.Catalog.MaxSupported ? $"{v}->{Engine.Catalog.MaxSupported}" : null;

    public async Task<PoolQueryDto> CreatePoolAsync(PoolCreateRequest req)
    {
        // Absent means the newest; an explicit 0 is a mistake, not a request for the newest.
        if (req.Layout == 0)
            throw new InvalidRequestException($"layout version 0 does not exist (this engine supports {LayoutCatalog.MinSupported}..{Engine.Catalog.MaxSupported}); leave it out for the newest");
        var pool = await Engine.CreatePoolAsync(req.Label, req.Size, req.Rf, PoolCreateOptions.Default with { LayoutVersion = req.Layout ?? 0 })
            .ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        Emit(ControlRasIds.PoolCreated, RasSeverity.Notice, $"pool '{req.Label}' created ({req.Size} bytes, rf {req.Rf})", pool: req.Label,
            data: new Dictionary<string, string> { ["size"] = req.Size.ToString(), ["rf"] = req.Rf.ToString(), ["uuid"] = pool.Id.ToString() });
        return ToDto(pool.Query(), ToDto(pool.GetUpgradeStatus()));
    }

    public async Task<PoolQueryDto> QueryPoolAsync(string label)
    {
        var pool = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        return ToDto(pool.Query(), ToDto(pool.GetUpgradeStatus()));
    }

    private PoolQueryDto ToDto(PoolQueryResult q, UpgradeStatus upgrade)
    {
        var up = UpgradeNeeded(q.LayoutVersion);
        uint max = Engine.Catalog.MaxSupported;
        return new PoolQueryDto(q.Label, q.Id, q.LayoutVersion, max, up, q.Status.ToString(), q.ReadOnlyReason,
            q.Rf, q.Containers, q.Images, q.TotalBytes, q.UsedBytes, q.FreeBytes,
            q.Targets.Select(t => new TargetSpaceDto(t.Target, t.Device, t.TotalBytes, t.UsedBytes, t.FreeBytes)).ToList(),
            up == null ? null : $"Pool layout out of date ({q.LayoutVersion} < {max}) -- see 'strata pool upgrade' for details.", upgrade,
            q.Status.ToString().ToLowerInvariant(), q.Job is { } j ? new PoolJobDto(j.Kind, j.State, j.ItemsDone, j.ItemsTotal, j.BytesDone, j.BytesTotal, j.BytesPerSecond, j.Current, j.Reason) : null,
            q.Redundancy is { } r ? ToDto(r) : null, q.Running,
            q.Reintegration is { } i ? new PoolReintegrationStatusDto(i.Target, i.State, i.ReplicasChecked, i.ReplicasTotal, i.BytesChecked, i.BytesTotal, i.Reason) : null);
    }

    private static PoolRedundancyDto ToDto(PoolDegradation r) =>
        new(r.Excluded, r.Health, r.ChunksAtOneCopy, r.BytesAtOneCopy, r.LostChunks, r.LostBytes, r.LostImages);

    /// <summary>`storage exclude-target N [--force]`.</summary>
    public async Task<List<PoolExclusionDto>> ExcludeTargetAsync(int index, ExcludeTargetRequest req) =>
        (await Engine.ExcludeTargetAsync(index, req.Force).ConfigureAwait(ConfigureAwaitOptions.ForceYielding))
            .Select(e => new PoolExclusionDto(e.Pool, e.Target, ToDto(e.Degradation), e.RebuildStarted, e.RebuildRefused)).ToList();

    /// <summary>`storage reintegrate-target N`.</summary>
    public async Task<List<PoolReintegrationDto>> ReintegrateTargetAsync(int index) =>
        (await Engine.ReintegrateTargetAsync(index).ConfigureAwait(ConfigureAwaitOptions.ForceYielding))
            .Select(e => new PoolReintegrationDto(e.Pool, e.Target, e.Replicas, e.Valid, e.Invalid, e.InvalidBytes, e.Recovered, ToDto(e.Degradation), e.JobStarted)).ToList();

    // ---- layout versions and upgrades ----

    public LayoutCatalogDto Catalog()
    {
        var cat = Engine.Catalog;
        return new LayoutCatalogDto(LayoutCatalog.MinSupported, cat.MaxSupported,
            cat.Versions.Select(v => new LayoutVersionDto(v.Version, v.Summary, v.Supported,
                v.Features.Select(f => new LayoutFeatureDto(f.Name, CatalogNames.Of(f.Class), f.Bit, CatalogNames.Of(f.Kind), CatalogNames.Of(f.Access), f.Description)).ToList())).ToList(),
            cat.Releases.ToDictionary(r => r.Name, r => r.MaxLayout));
    }

    public async Task<UpgradePlan> UpgradeAsync(string label, UpgradeRequest req)
    {
        var pool = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var plan = await pool.UpgradeAsync(req.To, req.DryRun).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        if (!req.DryRun)
            Log.UpgradeStarted(_logger, label, plan.From, plan.To, plan.JobId ?? 0);
        return new UpgradePlan(plan.Pool, plan.From, plan.To,
            plan.Actions.Select(a => new UpgradePlanAction(a.Index, a.Version, a.Feature, a.Class, a.Kind, a.Access, a.Items, a.BytesToScan, a.BytesToMove, a.Description)).ToList(),
            plan.Preconditions.Select(c => new UpgradePrecondition(c.Name, c.Ok, c.Detail)).ToList(), plan.DryRun, plan.JobId);
    }

    public async Task<UpgradeStatus> UpgradeStatusAsync(string label) =>
        ToDto((await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).GetUpgradeStatus());

    private static UpgradeStatus ToDto(UpgradeJobStatus s) =>
        new(s.Pool, s.LayoutVersion, s.Status, s.Target, s.JobId, s.Reason, s.ActionsDone, s.ActionsTotal, s.ItemsDone, s.ItemsTotal,
            s.BytesDone, s.BytesTotal, s.ItemsPerSecond, s.BytesPerSecond, s.EtaSeconds, s.CurrentAction, s.LongestPauseMs, s.Running);

    // ---- barrier ----

    public BarrierStatusDto BarrierStatus() => ToDto(Engine.Barrier.Status());

    public async Task<BarrierStatusDto> FreezeAsync(BarrierFreezeRequest req)
    {
        if (!double.IsFinite(req.TimeoutSeconds))
            throw new InvalidRequestException("barrier timeout must be a number of seconds");
        // Bounded before the conversion (TimeSpan overflows near 1e12 s); the barrier refuses anything past its maximum.
        var timeout = TimeSpan.FromSeconds(Math.Clamp(req.TimeoutSeconds, -1e9, 1e9));
        return ToDto(await Engine.Barrier.FreezeAsync(timeout, req.Pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
    }

    public async Task<BarrierStatusDto> ThawAsync() => ToDto(await Engine.Barrier.ThawAsync().ConfigureAwait(ConfigureAwaitOptions.ForceYielding));

    private static BarrierStatusDto ToDto(BarrierStatus s) =>
        new(EngineBarrier.Name(s.State), s.Pool, s.Pools, s.Since, s.Expires, s.SecondsLeft, s.Clients, s.HeldRequests, s.Reason);

    /// <summary>`system prepare`: every open pool drains, refuses writes and empties its log; cancel reopens writes.</summary>
    public async Task<IReadOnlyList<PreparedPoolDto>> PrepareAsync(bool cancel)
    {
        var result = new List<PreparedPoolDto>();
        foreach (var p in Engine.ListPools())
        {
            Pool pool;
            try
            {
                pool = await Engine.OpenPoolAsync(p.Label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            }
            catch (StoreException e)
            {
                result.Add(new PreparedPoolDto(p.Label, 0, false, e.Message));
                continue;
            }
            if (cancel)
            {
                pool.CancelPrepare();
                result.Add(new PreparedPoolDto(p.Label, pool.LogBytes, false));
                continue;
            }
            if (pool.State != PoolStatus.Ready)
            {
                result.Add(new PreparedPoolDto(p.Label, pool.LogBytes, pool.Prepared, pool.ReadOnlyReason));
                continue;
            }
            long used = await pool.PrepareAsync().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            result.Add(new PreparedPoolDto(p.Label, used, true));
        }
        Volatile.Write(ref _prepared, !cancel && result.Any(r => r.Prepared));
        Emit(cancel ? ControlRasIds.SystemPrepareCancelled : ControlRasIds.SystemPrepared, RasSeverity.Notice,
            cancel ? "system prepare cancelled: pools accept writes again"
                   : $"system prepared for a software change: {result.Count(r => r.Prepared)} pool(s) checkpointed with empty logs, writes refused");
        return result;
    }

    /// <summary>
    /// `pool destroy`: an open pool (the engine keeps them open) is destroyed when no data-path
    /// client holds it; otherwise it is refused naming the clients, unless force, which revokes them first.
    /// </summary>
    public async Task DestroyPoolAsync(string label, bool force)
    {
        // Before clients are revoked: a migration's pools stay, and so do its clients.
        Engine.ThrowIfPoolMigrating(label);
        if (Engine.ListPools().FirstOrDefault(p => p.Label == label) is { State: "ready" or "readonly" })
        {
            var open = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            var clients = open.ListClients();
            if (clients.Count > 0 && !force)
                throw new BusyException($"pool '{label}' has {clients.Count} NBD client(s) attached: {DescribeClients(label, clients)}; " +
                                        $"'strata pool destroy {label} --force' disconnects them and destroys the pool");
            // Clients (NBD connections) are told and go first.
            await open.RevokeClientsAsync($"pool '{label}' is being destroyed").ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            force = true;
        }
        await Engine.DestroyPoolAsync(label, force).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        Emit(ControlRasIds.PoolDestroyed, RasSeverity.Notice, $"pool '{label}' destroyed", pool: label);
    }

    /// <summary>"client 3 (nbd, 127.0.0.1:40312) on tank/vols/disk0, ..." for messages.</summary>
    public static string DescribeClients(string pool, IReadOnlyList<PoolClientInfo> clients) =>
        string.Join(", ", clients.Take(8).Select(c => $"client {c.Id} ({c.Kind}, {c.Peer}) on {pool}/{c.Image}")) +
        (clients.Count > 8 ? $" and {clients.Count - 8} more" : "");

    public async Task<IReadOnlyList<PropertyDto>> GetPoolPropsAsync(string label, string? name)
    {
        var pool = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var all = pool.GetPropertyValues().Select(p => new PropertyDto(p.Name, p.Value, SourceName(p.Source))).ToList();
        return name == null ? all
            : [all.FirstOrDefault(p => p.Name == name) ?? throw new NotFoundException($"pool '{label}' has no property '{name}'")];
    }

    private static string SourceName(PoolPropertySource s) => s switch
    {
        PoolPropertySource.Default => "default",
        PoolPropertySource.Set => "set",
        _ => "-",
    };

    public async Task SetPoolPropAsync(string label, string name, string value)
    {
        var pool = await Engine.OpenPoolAsync(label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await pool.SetPropertyAsync(name, value).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        Emit(ControlRasIds.PoolPropertySet, RasSeverity.Notice, $"pool '{label}' property {name} set to '{value}'", pool: label,
            data: new Dictionary<string, string> { [name] = value });
    }

    // ---- containers ----

    public async Task<IReadOnlyList<ContainerDto>> ListContainersAsync(string pool) =>
        (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).ListContainers().Select(ToDto).ToList();

    private static ContainerDto ToDto(ContainerInfo c) => new(c.Id, c.Label, c.Images, c.Properties);

    public async Task<ContainerDto> CreateContainerAsync(string pool, string label)
    {
        var c = await (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).CreateContainerAsync(label);
        Emit(ControlRasIds.ContainerCreated, RasSeverity.Notice, $"container '{label}' created in pool '{pool}'", pool: pool, container: label);
        return ToDto(c);
    }

    public async Task DestroyContainerAsync(string pool, string label)
    {
        await (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).DestroyContainerAsync(label);
        Emit(ControlRasIds.ContainerDestroyed, RasSeverity.Notice, $"container '{label}' destroyed in pool '{pool}'", pool: pool, container: label);
    }

    public async Task<IReadOnlyList<PropertyDto>> GetContainerPropsAsync(string pool, string cont, string? name)
    {
        var p = await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        if (name != null)
            return [new PropertyDto(name, p.GetContainerProperty(cont, name))];
        var c = p.ListContainers().FirstOrDefault(x => x.Label == cont) ?? throw new NotFoundException($"pool {UserText.Quote(pool)} has no container {UserText.Quote(cont)}");
        return c.Properties.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new PropertyDto(kv.Key, kv.Value)).ToList();
    }

    public async Task SetContainerPropAsync(string pool, string cont, string name, string value) =>
        await (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).SetContainerPropertyAsync(cont, name, value);

    // ---- images ----

    public async Task<IReadOnlyList<ImageDto>> ListImagesAsync(string pool, string cont) =>
        (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).ListImages(cont).Select(i => ToDto(pool, i)).ToList();

    private static ImageDto ToDto(string pool, ImageInfo i) => new(i.Id, pool, i.Container, i.Label, i.Size, i.ChunkSize, i.MappedBytes);

    public async Task<ImageDto> CreateImageAsync(string pool, string cont, ImageCreateRequest req)
    {
        var p = await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await p.CreateImageAsync(cont, req.Label, req.Size, req.ChunkSize).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        Emit(ControlRasIds.ImageCreated, RasSeverity.Notice, $"image '{req.Label}' created in pool '{pool}' container '{cont}' ({req.Size} bytes)",
            pool: pool, container: cont, image: req.Label);
        return await ImageInfoAsync(pool, cont, req.Label);
    }

    public async Task<ImageDto> ImageInfoAsync(string pool, string cont, string image)
    {
        var p = await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var i = p.ListImages(cont).FirstOrDefault(x => x.Label == image)
            ?? throw new NotFoundException($"pool {UserText.Quote(pool)} container {UserText.Quote(cont)} has no image {UserText.Quote(image)}");
        string key = $"{cont}/{image}";
        return ToDto(pool, i) with
        {
            Nbd = Nbd?.UrisFor($"{pool}/{cont}/{image}") ?? [],
            Clients = p.ListClients().Where(c => c.Image == key).Select(ToDto).ToList(),
            Alias = Engine.AliasOf(pool, cont, image),
            Migration = Engine.MigrationStatusOrNull($"{pool}/{cont}/{image}") is { } m ? ToDto(m) : null,
        };
    }

    // ---- image migration (docs/migration.md, "Image migration") ----

    private static MigrationStatusDto ToDto(Migration.ImageMigrationStatus s) => new(s.Source, s.Destination, s.State, s.Summary,
        s.PercentComplete, s.ChunksDone, s.Chunks, s.BytesCopied, s.RateBytesPerSecond, s.EtaSeconds, s.Error);

    public IReadOnlyList<MigrationStatusDto> ListMigrations() => Engine.ListMigrations().Select(ToDto).ToList();

    public MigrationStatusDto MigrationStatus(string image) => ToDto(Engine.MigrationStatus(image));

    public async Task<MigrationStatusDto> PrepareMigrationAsync(MigrationPrepareRequest req)
    {
        if (req.ImportOnly)
        {
            if (string.IsNullOrEmpty(req.SourceSpec) || !string.IsNullOrEmpty(req.Source))
                throw new InvalidRequestException("an import (--import-only) takes a source spec (--source-spec JSON) and the destination only");
            return ToDto(await Engine.PrepareImportAsync(req.SourceSpec, req.Destination, req.ChunkSize, req.Rf).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
        }
        if (string.IsNullOrEmpty(req.Source) || req.SourceSpec != null)
            throw new InvalidRequestException("prepare takes a source image and a destination image (a source spec only with --import-only)");
        return ToDto(await Engine.PrepareMigrationAsync(req.Source, req.Destination, req.ChunkSize, req.Rf).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
    }

    public async Task<MigrationAliasDto> RemoveAliasAsync(string image)
    {
        await Engine.RemoveAliasAsync(image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        return new MigrationAliasDto(image, null);
    }

    /// <summary>execute, commit, abort.</summary>
    public async Task<MigrationStatusDto> MigrationVerbAsync(string verb, string image)
    {
        switch (verb)
        {
            case "execute":
                return ToDto(await Engine.ExecuteMigrationAsync(image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
            case "commit":
                return ToDto(await Engine.CommitMigrationAsync(image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
            case "abort":
                return ToDto(await Engine.AbortMigrationAsync(image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding));
            default:
                throw new InvalidRequestException($"unknown migration action {UserText.Quote(verb)}; one of execute, commit, abort");
        }
    }

    public async Task<IReadOnlyList<PoolClientDto>> ListPoolClientsAsync(string pool) =>
        (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).ListClients().Select(ToDto).ToList();

    private static PoolClientDto ToDto(PoolClientInfo c) => new(c.Id, c.Kind, c.Image, c.Peer, c.Since);

    public async Task<ImageDto> ResizeImageAsync(string pool, string cont, string image, ImageResizeRequest req)
    {
        var img = (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).OpenImage(cont, image);
        long old = img.Size, size = req.Size;
        await img.ResizeAsync(size, req.AllowShrink).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        Emit(ControlRasIds.ImageResized, RasSeverity.Notice, $"image '{image}' resized from {old} to {size} bytes", pool: pool, container: cont, image: image);
        return await ImageInfoAsync(pool, cont, image);
    }

    public async Task RemoveImageAsync(string pool, string cont, string image)
    {
        await (await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).RemoveImageAsync(cont, image);
        Emit(ControlRasIds.ImageRemoved, RasSeverity.Notice, $"image '{image}' removed from pool '{pool}' container '{cont}'", pool: pool, container: cont, image: image);
    }

    /// <summary>
    /// The one way a data path opens an image: the control API's image write/read and the NBD
    /// server. The wrapper records the I/O metrics, so every path is counted alike.
    /// </summary>
    public async Task<IImageIo> OpenImageIoAsync(string pool, string cont, string image) =>
        new MeteredImage((await Engine.OpenPoolAsync(pool).ConfigureAwait(ConfigureAwaitOptions.ForceYielding)).OpenImage(cont, image), Metrics);

    public async Task WriteAsync(string pool, string cont, string image, long offset, ReadOnlyMemory<byte> data) =>
        await (await OpenImageIoAsync(pool, cont, image)).WriteAsync(offset, data);

    public async Task<byte[]> ReadAsync(string pool, string cont, string image, long offset, int length)
    {
        var img = await OpenImageIoAsync(pool, cont, image);
        var buf = new byte[length];
        await img.ReadAsync(offset, buf);
        return buf;
    }

    // ---- shutdown ----

    /// <summary>Closes every pool (its log is drained; everything acknowledged is durable), flushes and closes the targets.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        Log.Stopping(_logger);
        try
        {
            await Engine.DisposeAsync().AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            foreach (var d in _devices)
            {
                try
                {
                    await d.FlushAsync();
                }
                catch (IOException e)
                {
                    Log.StopFailed(_logger, e);
                }
                await d.DisposeAsync();
            }
            _filePollers?.Dispose();
            Emit(ControlRasIds.EngineStopped, RasSeverity.Notice, "engine stopped cleanly");
        }
        finally
        {
            Prometheus.Dispose();
            Metrics.Dispose();
            Ras.Dispose();
            if (Ras.UnwrittenAtStop > 0)
                Log.RasLogUnwrittenAtStop(_logger, Ras.UnwrittenAtStop, Ras.FilePath);
        }
        Log.Stopped(_logger);
    }
}
