using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using System.Runtime.InteropServices;
using Strata.Engine.Control;
using Strata.Engine.Host.Swap;
using Strata.Engine.Nbd;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>
/// `strata-engine run`: prepares the socket directory and pid file, opens the targets, serves the
/// control API on the Unix socket until SIGTERM/SIGINT or `strata system stop`, then closes every
/// pool and flushes the targets. Exit codes: 0 clean stop, 1 refused to start, 2 usage.
/// </summary>
internal static class Daemon
{
    /// <summary>
    /// On a stop request the control API's requests and the NBD connections get this long, at the
    /// same time, to finish; then the pools close. Together they stay within the 10 s that
    /// docs/operations.md promises, whatever clients do.
    /// </summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(5);

    public static async Task<int> RunAsync(string? configFile, string? dataDir, string? socketDir, int? metricsPort, bool takeover = false)
    {
        // SIGTERM/SIGINT are handled here for the whole run: before the web host exists (while the
        // pools open), while it runs (its ConsoleLifetime answers first), and after it is gone (while
        // NBD connections finish and the pools close), when the runtime's default would end the
        // process with 143 and skip the clean stop.
        using var stopRequested = new CancellationTokenSource();
        void OnSignal(PosixSignalContext c)
        {
            c.Cancel = true;
            try
            {
                stopRequested.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
        using var sigTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var sigInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        var ct = stopRequested.Token;

        using var loggerFactory = LoggerFactory.Create(ConfigureLogging);
        var logger = loggerFactory.CreateLogger("Strata.Engine");
        ResolvedConfig cfg;
        (uint Gid, string[] Members)? adminGroup = null;
        try
        {
            var raw = configFile != null ? HostConfig.Load(configFile) : new HostConfig();
            if (socketDir != null)
                raw.Control.SocketDir = Path.GetFullPath(socketDir);
            if (metricsPort != null)
                raw.Metrics.PrometheusPort = metricsPort.Value;
            cfg = raw.Resolve(dataDir, configFile);
            if (cfg.AdminGroup != null)
                adminGroup = Unix.FindGroup(cfg.AdminGroup) ?? throw new ConfigException($"admin group '{cfg.AdminGroup}' does not exist (/etc/group)");
        }
        catch (Exception e) when (e is ConfigException or IOException or UnauthorizedAccessException)
        {
            await Console.Error.WriteLineAsync($"strata-engine: {e.Message}");
            return 1;
        }
        uint uid = Unix.GetEuid();
        Log.Starting(logger, EngineService.Version, Environment.ProcessId, uid, cfg.DataDir, cfg.ConfigFile ?? "(embedded default)");

        EngineService? svc = null;
        NbdServer? nbd = null;
        PidFile? pid = null;
        Takeover? tk = null;
        SwapCoordinator? swap = null;
        bool controlBound = false;
        // SIGHUP reloads the NBD listeners' TLS certificates (as `strata system reload-tls` does;
        // connections stay). Registered from the start: the default action would end the engine.
        using var sigHup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c =>
        {
            c.Cancel = true;
            if (svc?.Nbd is null)
                return;
            _ = Task.Run(() =>
            {
                try
                {
                    svc.ReloadTls();
                }
                catch (InvalidRequestException)
                {
                    // Logged (1409) by ReloadTls, or no listener has TLS: nothing to reload.
                }
                catch (Exception e)
                {
                    // Anything else (a file read failing mid-rename, a crypto error not mapped) would vanish in this task: say it.
                    Log.NbdTlsReloadFailed(logger, $"{e.GetType().Name}: {e.Message}");
                }
            });
        });
        try
        {
            Directory.CreateDirectory(cfg.DataDir);
            int controlFd;
            var authorizer = new PeerAuthorizer(cfg, uid, adminGroup, logger, () => svc);
            if (takeover)
            {
                // Hot swap, the new process: the running engine hands over its sockets (Swap/Takeover.cs).
                // The storage code runs once first, so the open during the clients' pause need not compile it.
                await SwapWarmup.RunAsync(cfg, logger);
                tk = Takeover.Connect(cfg);
                controlFd = tk.ControlFd;
                nbd = BindNbd(cfg, authorizer, adminGroup?.Gid, logger, () => svc, tk.Listeners);
                if (await TakeOverAsync(tk, cfg, nbd, logger, s => svc = s) is { } refused)
                {
                    await Console.Error.WriteLineAsync($"strata-engine: --takeover failed, the running engine serves on: {refused}");
                    return 1;
                }
                tk.ReadyAndWaitGo();
                pid = PidFile.Create(cfg.PidFile, replacing: tk.OldPid);
            }
            else
            {
                ControlSocket.Prepare(cfg, adminGroup?.Gid, logger);
                pid = PidFile.Create(cfg.PidFile);
                // Bound before any target is opened: on a fresh data directory a refused listener must not leave formatted targets.
                nbd = BindNbd(cfg, authorizer, adminGroup?.Gid, logger, () => svc);
                controlFd = ControlSocket.Bind(cfg.SocketPath);
                controlBound = true;
                svc = await EngineService.StartAsync(cfg, logger);
            }
            ArgumentNullException.ThrowIfNull(svc);
            if (nbd != null)
            {
                nbd.Serve(new NbdExportCatalog(svc.Engine, svc.OpenImageIoAsync));
                svc.AttachNbd(nbd);
            }

            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ApplicationName = "strata-engine", ContentRootPath = cfg.DataDir });
            builder.Logging.ClearProviders();
            ConfigureLogging(builder.Logging);
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = StopGrace);
            // A query string that does not bind (offset=abc, a missing length) throws, so ApiErrors answers
            // with the one-line JSON error instead of a bare 400 (the default outside Development).
            builder.Services.Configure<RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.AddServerHeader = false;
                k.Limits.MaxRequestBodySize = Api.MaxBodyBytes;
                k.Limits.RequestHeadersTimeout = cfg.HeaderTimeout;
                k.Limits.KeepAliveTimeout = TimeSpan.FromMinutes(2);
                k.Limits.MaxConcurrentConnections = cfg.MaxConnections;
                k.Limits.MaxConcurrentUpgradedConnections = 0;
                k.Limits.MaxRequestHeadersTotalSize = 32 * 1024;
                k.Limits.MaxRequestHeaderCount = 50;
                k.Limits.MaxRequestLineSize = 8 * 1024;
                // Bound by the daemon (or handed over by the engine it replaced), so a hot swap can hand it on.
                k.ListenHandle((ulong)controlFd, lo =>
                {
                    lo.Protocols = HttpProtocols.Http1;
                    lo.Use(authorizer.Wrap);
                });
                if (cfg.PrometheusPort > 0)
                    k.ListenLocalhost(cfg.PrometheusPort, lo => lo.Protocols = HttpProtocols.Http1);
            });
            var app = builder.Build();
            var runArgs = new List<string> { "run", "--data-dir", cfg.DataDir, "--socket-dir", cfg.SocketDir };
            if (configFile != null)
                runArgs.AddRange(["--config", Path.GetFullPath(configFile)]);
            if (metricsPort != null)
                runArgs.AddRange(["--metrics-port", metricsPort.Value.ToString(CultureInfo.InvariantCulture)]);
            swap = new SwapCoordinator(cfg, svc, nbd, controlFd, runArgs, uid, logger);
            svc.Swap = swap;
            // The NBD connections start going as soon as a stop is asked for, beside the control API's drain
            // (not after a hot swap: they belong to the new engine).
            app.Lifetime.ApplicationStopping.Register(() =>
            {
                if (!swap.HandedOver)
                    nbd?.StopAsync();
            });
            // Registered after the NBD stop, so it runs first: held requests go on and can be answered.
            app.Lifetime.ApplicationStopping.Register(() => svc.Engine.Barrier.ThawForStop());
            app.Use(async (ctx, next) =>
            {
                // The loopback TCP listener serves the Prometheus scrape only: it has no peer credentials.
                if (ctx.Connection.LocalIpAddress != null && ctx.Request.Path != "/metrics")
                {
                    ctx.Response.StatusCode = StatusCodes.Status404NotFound;
                    return;
                }
                svc.Metrics.RecordRequest();
                ctx.Response.Headers[Api.VersionHeader] = Api.Version.ToString();
                ctx.Response.Headers[Api.MinVersionHeader] = Api.MinVersion.ToString();
                if (ctx.Request.Headers.TryGetValue(Api.VersionHeader, out var v) && int.TryParse(v, out int client)
                    && (client < Api.MinVersion || client > Api.Version))
                {
                    string what = client > Api.Version
                        ? $"this strata CLI speaks control API v{client}, but the engine serves v{Api.MinVersion}..v{Api.Version}: upgrade strata-engine or use an older strata"
                        : $"this strata CLI speaks control API v{client}, but the engine serves v{Api.MinVersion}..v{Api.Version}: upgrade the strata CLI";
                    await ApiErrors.Write(ctx, StatusCodes.Status400BadRequest, ErrorCodes.VersionMismatch, what);
                    return;
                }
                await next(ctx);
            });
            app.Use((ctx, next) => ApiErrors.Middleware(ctx, next, logger));
            ControlApi.Map(app, svc);
            app.MapFallback((HttpContext ctx) => ApiErrors.Write(ctx, StatusCodes.Status404NotFound, ErrorCodes.NotFound,
                $"no control API route {ctx.Request.Method} {ctx.Request.Path} (engine API v{Api.Version})"));

            if (ct.IsCancellationRequested)
                return 0; // stopped while the pools opened
            await app.StartAsync(ct);
            if (!takeover)
                ControlSocket.SecureSocketFile(cfg, adminGroup?.Gid);
            swap.Listen();
            Log.Listening(logger, cfg.SocketPath, cfg.AdminGroup ?? "(none)");
            if (cfg.PrometheusPort > 0)
                Log.MetricsPort(logger, cfg.PrometheusPort);
            if (tk != null)
            {
                double thawMs = tk.OpenMs;
                int adopted = tk.Connections.Count;
                Log.SwapTookOver(logger, tk.OldPid, tk.Listeners.Count, adopted, thawMs);
                svc.Emit(ControlRasIds.EngineSwapped, RasSeverity.Notice,
                    string.Create(CultureInfo.InvariantCulture, $"engine {EngineService.Version} (pid {Environment.ProcessId}) took over from pid {tk.OldPid}: {tk.Listeners.Count} NBD listener(s), {adopted} connection(s); serving {thawMs:F1} ms after the hand-off"),
                    data: new Dictionary<string, string>
                    {
                        ["pid"] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture), ["oldPid"] = tk.OldPid.ToString(CultureInfo.InvariantCulture),
                        ["connections"] = adopted.ToString(CultureInfo.InvariantCulture), ["sinceHandoffMs"] = thawMs.ToString("F1", CultureInfo.InvariantCulture),
                    });
                tk.Dispose();
            }
            else if (pid.Previous is { } prev)
            {
                // A clean stop removes the pid file: the engine that left it was killed, crashed or lost power.
                string prevPid = prev.Pid?.ToString(CultureInfo.InvariantCulture) ?? "unknown";
                Log.UncleanShutdown(logger, prevPid, prev.Since);
                svc.Emit(ControlRasIds.EngineUncleanShutdown, RasSeverity.Warning,
                    string.Create(CultureInfo.InvariantCulture, $"the previous engine (pid {prevPid}, started {prev.Since:O}) did not stop cleanly (killed, crashed or lost power); its pools were recovered from their logs"),
                    data: new Dictionary<string, string> { ["pid"] = prevPid, ["since"] = prev.Since.ToString("O", CultureInfo.InvariantCulture) });
            }
            if (tk == null)
                svc.Emit(ControlRasIds.EngineStarted, RasSeverity.Notice, $"engine started on {cfg.Targets.Count} target(s), socket {cfg.SocketPath}",
                    data: new Dictionary<string, string> { ["socket"] = cfg.SocketPath, ["pid"] = Environment.ProcessId.ToString() });
            await app.WaitForShutdownAsync(ct);
            await app.DisposeAsync();
            return 0;
        }
        catch (Exception e) when (e is ConfigException or StoreException or IOException or UnauthorizedAccessException
            or DllNotFoundException or System.Net.Sockets.SocketException)
        {
            await Console.Error.WriteLineAsync($"strata-engine: {e.Message}");
            return 1;
        }
        finally
        {
            if (swap is { HandedOver: true })
            {
                // Hot swap: the control API has stopped here; the new engine gets the go and owns everything.
                swap.Finish();
                svc?.DisposeHandedOver();
                pid?.KeepForSuccessor();
            }
            else
            {
                swap?.Close();
                // NBD clients go first (in-flight requests answered, or cut off after StopGrace), then the pools close.
                if (nbd != null)
                {
                    await nbd.StopAsync();
                    await nbd.DisposeAsync();
                }
                if (svc != null)
                    await svc.DisposeAsync();
                tk?.Dispose();
                if (controlBound || (takeover && svc != null))
                    ControlSocket.Remove(cfg.SocketPath);
                pid?.Dispose();
            }
        }
    }

    /// <summary>
    /// The new process of a hot swap: opens the storage, checks that every pool the old engine had
    /// open is open here, and adopts the NBD connections. Null when it may take over; else why not
    /// (the old engine is told, and takes everything back).
    /// </summary>
    private static async Task<string?> TakeOverAsync(Takeover tk, ResolvedConfig cfg, NbdServer? nbd, ILogger logger, Action<EngineService> started)
    {
        EngineService svc;
        try
        {
            svc = await EngineService.StartAsync(cfg, logger);
        }
        catch (Exception e) when (e is ConfigException or StoreException or IOException or UnauthorizedAccessException or DllNotFoundException)
        {
            tk.Fail($"the storage did not open: {e.Message}");
            return e.Message;
        }
        started(svc);
        string? why = null;
        var open = svc.Engine.ListPools().ToDictionary(p => p.Label, p => p.State);
        string? refused = Takeover.Fault is { } f && f.StartsWith("refuse-pool:", StringComparison.Ordinal) ? f["refuse-pool:".Length..] : null;
        foreach (var label in tk.Pools)
        {
            if (label == refused)
                why = $"pool '{label}' refused by this engine (test fault {Takeover.FaultVariable})";
            else if (!open.TryGetValue(label, out var state) || state is not ("ready" or "readonly"))
                why = $"pool '{label}' did not open in the new engine ({state ?? "not found"})";
            if (why != null)
                break;
        }
        if (why == null && nbd != null)
        {
            var catalog = new NbdExportCatalog(svc.Engine, svc.OpenImageIoAsync);
            for (int i = 0; i < tk.Connections.Count && why == null; i++)
            {
                if (Takeover.Fault == "crash-after-half" && i == tk.Connections.Count / 2)
                    System.Diagnostics.Process.GetCurrentProcess().Kill(); // SIGKILL: a real crash, mid-adoption
                why = await nbd.AdoptAsync(catalog, tk.Connections[i].Socket, tk.Connections[i].State);
            }
        }
        if (why == null && Takeover.Fault is { } hold && hold.StartsWith("hold-until:", StringComparison.Ordinal))
        {
            // Test fault: stay in the middle of the hand-off (storage open, connections adopted, not ready) until the file exists.
            string file = hold["hold-until:".Length..];
            for (int i = 0; i < 6000 && !File.Exists(file); i++)
                await Task.Delay(50);
        }
        if (why == null)
            return null;
        // The storage closes before the old engine is told: it reopens the same devices.
        await svc.CloseStorageAsync();
        svc.DisposeHandedOver();
        tk.Fail(why);
        return why;
    }

    /// <summary>
    /// Binds the configured NBD listeners (after clearing stale sockets); once the engine is open it
    /// serves every image as pool/container/image. Unix socket callers pass the control socket's
    /// peer-credential check.
    /// </summary>
    private static NbdServer? BindNbd(ResolvedConfig cfg, PeerAuthorizer authorizer, uint? adminGid, ILogger logger, Func<EngineService?> service,
        IReadOnlyDictionary<string, System.Net.Sockets.Socket>? inherited = null)
    {
        if (cfg.Nbd.Count == 0)
            return null;
        foreach (var a in cfg.Nbd)
            if (a.UnixPath is { } path && inherited?.ContainsKey(a.Spec) != true)
                ControlSocket.PreparePath(path, $"another process is listening on NBD socket {path}", logger);
        return NbdServer.Bind(cfg.Nbd, new NbdServerOptions
        {
            Log = new NbdLog(logger, service),
            WriteCache = cfg.NbdWriteCache,
            MaxInFlightBytes = cfg.NbdConnectionInFlightBytes,
            MaxInFlightBytesTotal = cfg.NbdInFlightBytes,
            StopGrace = StopGrace,
            AuthorizeUnixPeer = authorizer.Refusal,
            UnixSocketBound = path => ControlSocket.SecureNbdSocket(path, cfg.AdminGroup, adminGid),
        }, inherited);
    }

    private static void ConfigureLogging(ILoggingBuilder b)
    {
        b.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
            o.IncludeScopes = false;
        });
        b.SetMinimumLevel(LogLevel.Information);
        b.AddFilter("Microsoft", LogLevel.Warning);
    }
}
