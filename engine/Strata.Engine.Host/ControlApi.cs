using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Strata.Engine.Control;
using Strata.Engine.Pools;

namespace Strata.Engine.Host;

/// <summary>The versioned routes of the control API (/v1/...). Each handler is one call into <see cref="EngineService"/>.</summary>
internal static class ControlApi
{
    public static void Map(WebApplication app, EngineService svc)
    {
        var lifetime = app.Services.GetRequiredService<IHostApplicationLifetime>();
        var v1 = app.MapGroup("/v1");

        v1.MapGet("/system", () => Ok(svc.SystemInfo(lifetime.ApplicationStopping.IsCancellationRequested ? "stopping" : svc.Prepared ? "prepared"
            : svc.Engine.Barrier.State == BarrierState.Frozen ? "frozen" : "running")));
        v1.MapPost("/system/stop", (HttpContext ctx) =>
        {
            ctx.Response.OnCompleted(() =>
            {
                lifetime.StopApplication();
                return Task.CompletedTask;
            });
            return Results.Json(svc.SystemInfo("stopping"), Api.Json, statusCode: StatusCodes.Status202Accepted);
        });
        v1.MapPost("/system/swap", async (HttpContext ctx, CancellationToken _) =>
        {
            var result = await svc.SwapAsync(await Body<SystemSwapRequest>(ctx));
            // Handed over: this engine's control API stops once the answer is out; then the new engine gets the go.
            ctx.Response.OnCompleted(() =>
            {
                lifetime.StopApplication();
                return Task.CompletedTask;
            });
            return Ok(result);
        });
        v1.MapPost("/system/reload-tls", () => Ok(new TlsReloadResult(svc.ReloadTls().ToList())));
        v1.MapGet("/storage", () => Ok(svc.Storage()));
        v1.MapPost("/storage/targets", async (HttpContext ctx, CancellationToken _) => Ok(await svc.AddTargetAsync(await Body<AddTargetRequest>(ctx))));
        v1.MapPost("/storage/targets/{index:int}/exclude", async (HttpContext ctx, int index) => Ok(await svc.ExcludeTargetAsync(index, await Body<ExcludeTargetRequest>(ctx))));
        v1.MapPost("/storage/targets/{index:int}/reintegrate", async (int index) => Ok(await svc.ReintegrateTargetAsync(index)));

        v1.MapGet("/pools", async () => Ok(await svc.ListPoolsAsync()));
        v1.MapPost("/pools", async (HttpContext ctx, CancellationToken _) => Created(await svc.CreatePoolAsync(await Body<PoolCreateRequest>(ctx))));
        v1.MapGet("/pools/{pool}", async (string pool) => Ok(await svc.QueryPoolAsync(pool)));
        v1.MapDelete("/pools/{pool}", async (string pool, bool? force) =>
        {
            await svc.DestroyPoolAsync(pool, force ?? false);
            return Results.NoContent();
        });
        v1.MapGet("/pools/{pool}/clients", async (string pool) => Ok(await svc.ListPoolClientsAsync(pool)));
        v1.MapGet("/pools/{pool}/props", async (string pool, string? name) => Ok(await svc.GetPoolPropsAsync(pool, name)));
        v1.MapPut("/pools/{pool}/props/{name}", async (HttpContext ctx, string pool, string name) =>
        {
            string value = (await Body<SetPropertyRequest>(ctx)).Value;
            await svc.SetPoolPropAsync(pool, name, value);
            return Ok(await svc.GetPoolPropsAsync(name == "label" ? value : pool, name));
        });

        v1.MapGet("/layout", () => Ok(svc.Catalog()));
        v1.MapPost("/pools/{pool}/upgrade", async (HttpContext ctx, string pool) =>
        {
            var req = await Body<UpgradeRequest>(ctx);
            var plan = await svc.UpgradeAsync(pool, req);
            return req.DryRun ? Ok(plan) : Results.Json(plan, Api.Json, statusCode: StatusCodes.Status202Accepted);
        });
        v1.MapGet("/pools/{pool}/upgrade", async (string pool) => Ok(await svc.UpgradeStatusAsync(pool)));
        v1.MapPost("/pools/{pool}/extend", async (HttpContext ctx, string pool) =>
        {
            var req = await Body<ExtendRequest>(ctx);
            var plan = await svc.ExtendAsync(pool, req);
            return req.DryRun ? Ok(plan) : Results.Json(plan, Api.Json, statusCode: StatusCodes.Status202Accepted);
        });
        v1.MapGet("/system/barrier", () => Ok(svc.BarrierStatus()));
        v1.MapPost("/system/barrier/freeze", async (HttpContext ctx, CancellationToken _) => Ok(await svc.FreezeAsync(await Body<BarrierFreezeRequest>(ctx))));
        v1.MapPost("/system/barrier/thaw", async () => Ok(await svc.ThawAsync()));
        v1.MapPost("/system/prepare", async (HttpContext ctx, CancellationToken _) => Ok(await svc.PrepareAsync((await Body<SystemPrepareRequest>(ctx)).Cancel)));
        v1.MapGet("/pools/{pool}/containers", async (string pool) => Ok(await svc.ListContainersAsync(pool)));
        v1.MapPost("/pools/{pool}/containers", async (HttpContext ctx, string pool) =>
            Created(await svc.CreateContainerAsync(pool, (await Body<ContainerCreateRequest>(ctx)).Label)));
        v1.MapDelete("/pools/{pool}/containers/{cont}", async (string pool, string cont) =>
        {
            await svc.DestroyContainerAsync(pool, cont);
            return Results.NoContent();
        });
        v1.MapGet("/pools/{pool}/containers/{cont}/props", async (string pool, string cont, string? name) =>
            Ok(await svc.GetContainerPropsAsync(pool, cont, name)));
        v1.MapPut("/pools/{pool}/containers/{cont}/props/{name}", async (HttpContext ctx, string pool, string cont, string name) =>
        {
            string value = (await Body<SetPropertyRequest>(ctx)).Value;
            await svc.SetContainerPropAsync(pool, cont, name, value);
            return Ok(await svc.GetContainerPropsAsync(pool, name == "label" ? value : cont, name));
        });

        const string images = "/pools/{pool}/containers/{cont}/images";
        v1.MapGet(images, async (string pool, string cont) => Ok(await svc.ListImagesAsync(pool, cont)));
        v1.MapPost(images, async (HttpContext ctx, string pool, string cont) =>
            Created(await svc.CreateImageAsync(pool, cont, await Body<ImageCreateRequest>(ctx))));
        v1.MapGet(images + "/{image}", async (string pool, string cont, string image) => Ok(await svc.ImageInfoAsync(pool, cont, image)));
        v1.MapPost(images + "/{image}/resize", async (HttpContext ctx, string pool, string cont, string image) =>
            Ok(await svc.ResizeImageAsync(pool, cont, image, await Body<ImageResizeRequest>(ctx))));
        v1.MapDelete(images + "/{image}", async (string pool, string cont, string image) =>
        {
            await svc.RemoveImageAsync(pool, cont, image);
            return Results.NoContent();
        });
        v1.MapPut(images + "/{image}/data", async (HttpContext ctx, string pool, string cont, string image, long offset) =>
        {
            var data = await ReadBodyAsync(ctx);
            await svc.WriteAsync(pool, cont, image, offset, data);
            return Ok(new WriteResult(offset, data.Length));
        });
        v1.MapGet(images + "/{image}/data", async (string pool, string cont, string image, long offset, int length) =>
        {
            if (length is < 0 or > Api.MaxBodyBytes)
                throw new ApiRequestException($"length {length} must be between 0 and {Api.MaxBodyBytes}; read larger ranges in pieces");
            return Results.Bytes(await svc.ReadAsync(pool, cont, image, offset, length), "application/octet-stream");
        });

        v1.MapGet("/migrations", () => Ok(svc.ListMigrations()));
        v1.MapPost("/migrations", async (HttpContext ctx, CancellationToken _) => Created(await svc.PrepareMigrationAsync(await Body<MigrationPrepareRequest>(ctx))));
        v1.MapGet("/migrations/status", (string image) => Ok(svc.MigrationStatus(image)));
        v1.MapPost("/migrations/remove-alias", async (HttpContext ctx, CancellationToken _) => Ok(await svc.RemoveAliasAsync((await Body<MigrationRequest>(ctx)).Image)));
        v1.MapPost("/migrations/{verb}", async (HttpContext ctx, string verb) => Ok(await svc.MigrationVerbAsync(verb, (await Body<MigrationRequest>(ctx)).Image)));

        v1.MapGet("/events", (HttpContext ctx, string? since, string? severity, bool? follow) =>
            EventsAsync(ctx, svc, lifetime, since, severity, follow ?? false));

        app.MapGet("/metrics", async (CancellationToken ct) => Results.Text(await svc.Prometheus.ScrapeAsync(ct), PrometheusExporter.ContentType));
        v1.MapGet("/metrics", async (CancellationToken ct) => Results.Text(await svc.Prometheus.ScrapeAsync(ct), PrometheusExporter.ContentType));
    }

    private static IResult Ok<T>(T value) => Results.Json(value, Api.Json);

    private static IResult Created<T>(T value) => Results.Json(value, Api.Json, statusCode: StatusCodes.Status201Created);

    private static async Task<T> Body<T>(HttpContext ctx)
    {
        if (ctx.Request.HasJsonContentType() is false)
            throw new ApiRequestException("the request body must be JSON (Content-Type: application/json)");
        return await ctx.Request.ReadFromJsonAsync<T>(Api.Json, ctx.RequestAborted)
            ?? throw new ApiRequestException("the request body is empty");
    }

    private static async Task<byte[]> ReadBodyAsync(HttpContext ctx)
    {
        // Kestrel enforces MaxRequestBodySize while we read; a declared length over it fails before any byte is read.
        using var ms = new MemoryStream();
        await ctx.Request.Body.CopyToAsync(ms, ctx.RequestAborted);
        return ms.ToArray();
    }

    /// <summary>NDJSON: the matching events in the log, then (with follow) new ones as they are raised.</summary>
    private static async Task EventsAsync(HttpContext ctx, EngineService svc, IHostApplicationLifetime lifetime, string? since, string? severity, bool follow)
    {
        DateTimeOffset? sinceTime = null;
        if (since != null)
        {
            if (!DateTimeOffset.TryParse(since, CultureInfo.InvariantCulture, DateTimeStyles.AssumeLocal, out var t))
                throw new ApiRequestException($"since '{since}' is not a timestamp (use ISO 8601, e.g. 2026-11-21T06:00:00Z)");
            sinceTime = t;
        }
        if (severity != null && RasLog.SeverityRank(severity) > 2)
            throw new ApiRequestException($"severity '{severity}' is not one of ERROR, WARNING, NOTICE");
        // Subscribe before reading the log, so nothing raised in between is lost; the sequence number removes duplicates.
        using var sub = follow ? svc.Ras.Subscribe() : null;
        ctx.Response.ContentType = "application/x-ndjson";
        long last = 0;
        foreach (var r in await svc.Ras.ReadAllAsync(sinceTime, severity))
        {
            await WriteLineAsync(ctx, r);
            last = r.Seq;
        }
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        if (sub == null)
            return;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, lifetime.ApplicationStopping);
        try
        {
            await foreach (var r in sub.Reader.ReadAllAsync(cts.Token))
            {
                if (r.Seq <= last || !RasLog.Matches(r, sinceTime, severity))
                    continue;
                await WriteLineAsync(ctx, r);
                await ctx.Response.Body.FlushAsync(cts.Token);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static async Task WriteLineAsync(HttpContext ctx, RasRecord r)
    {
        await JsonSerializer.SerializeAsync(ctx.Response.Body, r, Api.Json, ctx.RequestAborted);
        await ctx.Response.Body.WriteAsync("\n"u8.ToArray(), ctx.RequestAborted);
    }
}
