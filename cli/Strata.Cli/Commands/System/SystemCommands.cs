using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.SystemGroup;

/// <summary>`strata system query | stop | events | prepare | barrier | reload-tls`.</summary>
public static class SystemCommands
{
    private static readonly Option<bool> NoWait = new("--no-wait") { Description = "Return once the engine accepted the request, without waiting for it to exit" };
    private static readonly Option<bool> Follow = new("--follow", "-f") { Description = "Keep streaming new events until interrupted" };
    private static readonly Option<string?> Since = new("--since") { Description = "Only events at or after this time (ISO 8601, or a duration like 10m, 2h)" };
    private static readonly Option<string?> Severity = new("--severity") { Description = "Only events at least this severe: ERROR, WARNING or NOTICE" };

    public static Command Create()
    {
        var query = new Command("query", "Show the engine: host, pid, version, API version, uptime, targets and pools");
        query.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var s = await client.GetAsync<SystemInfo>("system");
            if (json)
            {
                Cli.PrintJson(s);
                return 0;
            }
            new Table("Host", "Pid", "State", "Version", "API", "Uptime", "Targets", "Pools", "Socket")
                .Add(s.Host, s.Pid, s.State, s.EngineVersion, $"v{s.ApiMinVersion}..v{s.ApiVersion}", TimeSpan.FromSeconds(Math.Round(s.UptimeSeconds)), s.Targets, s.Pools, s.Socket)
                .Write(Console.Out);
            return 0;
        }));

        var stop = new Command("stop", "Stop the engine cleanly (closes every pool, flushes the targets) and wait for it to exit; names the NBD clients it disconnects");
        stop.Options.Add(NoWait);
        stop.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var attached = await AttachedClientsAsync(client);
            if (!json)
                Console.Out.WriteLine(attached.Count == 0 ? "stopping; no NBD clients are attached"
                    : $"stopping; {attached.Count} NBD client(s) will be disconnected: {string.Join(", ", attached)}");
            var s = await client.PostAsync<SystemInfo>("system/stop", new { });
            if (!parse.GetValue(NoWait))
                await WaitForExitAsync(s.Pid, client.SocketPath);
            if (json)
                Cli.PrintJson(s with { State = parse.GetValue(NoWait) ? "stopping" : "stopped" });
            else
                Console.Out.WriteLine(parse.GetValue(NoWait) ? $"engine (pid {s.Pid}) is stopping" : $"engine (pid {s.Pid}) stopped");
            return 0;
        }));

        var events = new Command("events", "Show RAS events from the engine's log; --follow streams new ones until interrupted (exit 3 with a message when the engine stops)");
        events.Options.Add(Follow);
        events.Options.Add(Since);
        events.Options.Add(Severity);
        events.SetAction((parse, ct) => Cli.RunAsync(parse, (client, json) => EventsAsync(client, json, parse.GetValue(Follow), parse.GetValue(Since), parse.GetValue(Severity), ct)));

        var cancel = new Option<bool>("--cancel") { Description = "Accept writes again" };
        var prepare = new Command("prepare", "Prepare for a software change: quiesce, checkpoint every shard and empty its log, refuse writes (Ozone's prepare)");
        prepare.Options.Add(cancel);
        prepare.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            bool c = parse.GetValue(cancel);
            var pools = await client.PostAsync<List<PreparedPoolDto>>("system/prepare", new SystemPrepareRequest(c));
            if (json)
            {
                Cli.PrintJson(pools);
                return 0;
            }
            var t = new Table("Pool", "Prepared", "Log bytes", "Problem");
            foreach (var p in pools)
                t.Add(p.Pool, p.Prepared ? "yes" : "no", p.LogBytes, p.Problem ?? "");
            t.Write(Console.Out);
            Console.Out.WriteLine(c ? "Prepare cancelled: pools accept writes again"
                : "Prepared: every log is empty and writes are refused; stop the engine and change the software, or run 'strata system prepare --cancel'");
            return pools.All(p => p.Prepared != c || p.Problem == null) ? 0 : ExitCodes.Failed;
        }));

        var reloadTls = new Command("reload-tls", "Load the NBD listeners' TLS certificates again from their files (after a renewal) without dropping connections; SIGHUP does the same");
        reloadTls.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var r = await client.PostAsync<TlsReloadResult>("system/reload-tls", new { });
            if (json)
                Cli.PrintJson(r);
            else
                foreach (var line in r.Listeners)
                    Console.Out.WriteLine("reloaded " + line);
            return 0;
        }));

        return Cli.Group("system", "The engine as a whole", query, stop, events, prepare, BarrierCommands.Create(), SwapCommands.Create(), reloadTls);
    }

    /// <summary>"client 3 (nbd, PEER) on tank/vols/disk0" for every client of every open pool.</summary>
    private static async Task<List<string>> AttachedClientsAsync(Api.EngineClient client)
    {
        var result = new List<string>();
        foreach (var p in await client.GetAsync<List<PoolListEntry>>("pools"))
        {
            if (p.State is not ("ready" or "readonly"))
                continue;
            try
            {
                foreach (var c in await client.GetAsync<List<PoolClientDto>>($"pools/{Cli.Esc(p.Label)}/clients"))
                    result.Add($"client {c.Id} ({c.Kind}, {c.Peer}) on {p.Label}/{c.Image}");
            }
            catch (CliException e) when (e.ExitCode == ExitCodes.NotFound)
            {
                // Destroyed since the listing.
            }
        }
        return result;
    }

    private static async Task WaitForExitAsync(int pid, string socket)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            bool alive;
            try
            {
                // Wait for the process itself: it closes the pools after the socket is gone.
                alive = Directory.Exists($"/proc/{pid}") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("strata-engine", StringComparison.Ordinal);
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                alive = File.Exists(socket);
            }
            if (!alive)
                return;
            await Task.Delay(100);
        }
        throw new CliException(ExitCodes.Failed, $"the engine (pid {pid}) accepted the stop request but has not exited after 60 s");
    }

    private static async Task<int> EventsAsync(Api.EngineClient client, bool json, bool follow, string? since, string? severity, CancellationToken ct)
    {
        var query = new List<string>();
        if (since != null)
            query.Add("since=" + Uri.EscapeDataString(ParseSince(since)));
        if (severity != null)
            query.Add("severity=" + Uri.EscapeDataString(severity.ToUpperInvariant()));
        if (follow)
            query.Add("follow=true");
        string path = "events" + (query.Count > 0 ? "?" + string.Join('&', query) : "");
        try
        {
            using var resp = await client.GetStreamAsync(path, ct);
            using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync(ct));
            if (!json && !follow)
                Console.Out.WriteLine($"{"Time",-32} {"Severity",-8} {"Id",-28} Message");
            while (await reader.ReadLineAsync(ct) is { } line)
            {
                if (line.Length == 0)
                    continue;
                if (json)
                {
                    Console.Out.WriteLine(line);
                }
                else
                {
                    var r = JsonSerializer.Deserialize<RasRecord>(line, Strata.Engine.Control.Api.Json)!;
                    string where = string.Join(' ', new[] { ("pool", r.Pool), ("cont", r.Cont), ("image", r.Image), ("target", r.Target?.ToString(CultureInfo.InvariantCulture)) }
                        .Where(x => x.Item2 != null).Select(x => $"{x.Item1}={x.Item2}"));
                    Console.Out.WriteLine($"{r.Timestamp,-32} {r.Severity,-8} {r.Id,-28} {r.Msg}{(where.Length > 0 ? "  [" + where + "]" : "")}");
                }
                Console.Out.Flush();
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            return 0;
        }
        catch (IOException) when (ct.IsCancellationRequested)
        {
            return 0;
        }
        catch (Exception e) when (follow && e is IOException or HttpRequestException)
        {
            // The connection broke mid-stream: the engine went away without ending the stream.
            throw new CliException(ExitCodes.Unreachable, $"the engine at {client.SocketPath} went away; no more events ({e.Message})");
        }
        // A followed stream ends only when the engine stops (it closes every stream on shutdown).
        if (follow && !ct.IsCancellationRequested)
            throw new CliException(ExitCodes.Unreachable, $"the engine at {client.SocketPath} stopped; no more events");
        return 0;
    }

    private static string ParseSince(string s)
    {
        if (s.Length > 1 && char.IsDigit(s[0]) && "smhd".Contains(s[^1]) && int.TryParse(s[..^1], out int n))
        {
            var d = s[^1] switch { 's' => TimeSpan.FromSeconds(n), 'm' => TimeSpan.FromMinutes(n), 'h' => TimeSpan.FromHours(n), _ => TimeSpan.FromDays(n) };
            return (DateTimeOffset.Now - d).ToString("o", CultureInfo.InvariantCulture);
        }
        if (!DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AssumeLocal, out var t))
            throw new CliException(ExitCodes.Usage, $"--since '{s}' is neither a time (2026-11-21T06:00:00Z) nor a duration (10m, 2h)");
        return t.ToString("o", CultureInfo.InvariantCulture);
    }
}
