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

    public static async Task<int> RunAsync(string? configFile, string? dataDir, string? socketDir, int? metricsPort)
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
            });
        });
        try
        {
            Directory.CreateDirectory(cfg.DataDir);
            ControlSocket.Prepare(cfg, adminGroup?.Gid, logger);
            pid = PidFile.Create(cfg.PidFile);
            var authorizer = new PeerAuthorizer(cfg, uid, adminGroup, logger, () => svc);
            // Bound before any target is opened: on a fresh data directory a refused listener must not leave formatted targets.
            nbd = BindNbd(cfg, authorizer, adminGroup?.Gid, logger, () => svc);
            svc = await EngineService.StartAsync(cfg, logger);
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
                k.ListenUnixSocket(cfg.SocketPath, lo =>
                {
                    lo.Protocols = HttpProtocols.Http1;
                    lo.Use(authorizer.Wrap);
                });
                if (cfg.PrometheusPort > 0)
                    k.ListenLocalhost(cfg.PrometheusPort, lo => lo.Protocols = HttpProtocols.Http1);
            });
            var app = builder.Build();
            // The NBD connections start going as soon as a stop is asked for, beside the control API's drain.
            app.Lifetime.ApplicationStopping.Register(() => nbd?.StopAsync());
            // Registered after the NBD stop, so it runs first: held requests go on and can be answered.
            var barrier = svc.Engine.Barrier;
            app.Lifetime.ApplicationStopping.Register(barrier.ThawForStop);
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
            ControlSocket.SecureSocketFile(cfg, adminGroup?.Gid);
            Log.Listening(logger, cfg.SocketPath, cfg.AdminGroup ?? "(none)");
            if (cfg.PrometheusPort > 0)
                Log.MetricsPort(logger, cfg.PrometheusPort);
            if (pid.Previous is { } prev)
            {
                // A clean stop removes the pid file: the engine that left it was killed, crashed or lost power.
                string prevPid = prev.Pid?.ToString(CultureInfo.InvariantCulture) ?? "unknown";
                Log.UncleanShutdown(logger, prevPid, prev.Since);
                svc.Emit(ControlRasIds.EngineUncleanShutdown, RasSeverity.Warning,
                    string.Create(CultureInfo.InvariantCulture, $"the previous engine (pid {prevPid}, started {prev.Since:O}) did not stop cleanly (killed, crashed or lost power); its pools were recovered from their logs"),
                    data: new Dictionary<string, string> { ["pid"] = prevPid, ["since"] = prev.Since.ToString("O", CultureInfo.InvariantCulture) });
            }
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
            // NBD clients go first (in-flight requests answered, or cut off after StopGrace), then the pools close.
            if (nbd != null)
            {
                await nbd.StopAsync();
                await nbd.DisposeAsync();
            }
            if (svc != null)
                await svc.DisposeAsync();
            pid?.Dispose();
        }
    }

    /// <summary>
    /// Binds the configured NBD listeners (after clearing stale sockets); once the engine is open it
    /// serves every image as pool/container/image. Unix socket callers pass the control socket's
    /// peer-credential check.
    /// </summary>
    private static NbdServer? BindNbd(ResolvedConfig cfg, PeerAuthorizer authorizer, uint? adminGid, ILogger logger, Func<EngineService?> service)
    {
        if (cfg.Nbd.Count == 0)
            return null;
        foreach (var a in cfg.Nbd)
            if (a.UnixPath is { } path)
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
        });
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
