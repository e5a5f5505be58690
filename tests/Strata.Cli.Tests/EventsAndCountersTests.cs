using System.Diagnostics;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>RAS events (log, filters, --follow) and live counters through EventPipe.</summary>
[TestClass]
public sealed class EventsAndCountersTests
{
    private static string _dir = "";
    private static EngineProcess _engine = null!;
    private static StrataCli _cli = null!;

    [ClassInitialize]
    public static async Task StartAsync(TestContext _)
    {
        _dir = Bin.NewTempDir("events");
        _engine = await EngineProcess.StartAsync(Path.Combine(_dir, "data"));
        _cli = new StrataCli(_engine.Socket);
    }

    [ClassCleanup]
    public static async Task StopAsync()
    {
        await _engine.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private static List<RasRecord> ParseLines(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();

    [TestMethod]
    public async Task Events_Log_HasDaosFieldsAndFilters()
    {
        await _cli.OkAsync("pool", "create", "evlog", "--size", "64M");
        var all = ParseLines(await _cli.OkAsync("system", "events", "--json"));
        var created = all.Last(e => e.Id == ControlRasIds.PoolCreated && e.Pool == "evlog");
        Assert.AreEqual("NOTICE", created.Severity);
        Assert.AreEqual("STATE_CHANGE", created.Type);
        Assert.AreEqual(_engine.Pid, created.Pid);
        Assert.IsFalse(string.IsNullOrEmpty(created.Host));
        Assert.MatchesRegex(new System.Text.RegularExpressions.Regex(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$"), created.Timestamp);
        Assert.IsTrue(all.Any(e => e.Id == ControlRasIds.EngineStarted));
        // The durable log holds the same event.
        StringAssert.Contains(File.ReadAllText(Path.Combine(_engine.DataDir, "ras", "events.jsonl")), "\"pool\":\"evlog\"");
        Assert.IsEmpty(ParseLines(await _cli.OkAsync("system", "events", "--json", "--severity", "ERROR")));
        Assert.IsEmpty(ParseLines(await _cli.OkAsync("system", "events", "--json", "--since", DateTimeOffset.Now.AddHours(1).ToString("o"))));
        StringAssert.Contains(await _cli.OkAsync("system", "events"), "pool_created");
        await _cli.FailsAsync(2, "system", "events", "--severity", "LOUD");
        await _cli.OkAsync("pool", "destroy", "evlog", "--force");
    }

    [TestMethod]
    public async Task EngineRestart_AfterKill9_RaisesUncleanShutdown_AfterCleanStopNone()
    {
        string data = Path.Combine(_dir, "unclean");
        int killed;
        string written;
        await using (var first = await EngineProcess.StartAsync(data))
        {
            var cli = new StrataCli(first.Socket);
            await cli.OkAsync("pool", "create", "uc", "--size", "64M");
            await cli.OkAsync("cont", "create", "uc", "c");
            await cli.OkAsync("image", "create", "uc/c/i", "--size", "1M");
            written = Sha(await cli.OkAsync("image", "write", "uc/c/i", "--pattern", "0x5a", "--length", "65536"));
            killed = first.Pid;
            Bin.Signal(killed, 9);
            await first.WaitForExitAsync(TimeSpan.FromSeconds(30));
        }

        await using (var second = await EngineProcess.StartAsync(data))
        {
            var cli = new StrataCli(second.Socket);
            var events = await EventsThroughStartAsync(second);
            var unclean = events.Single(x => x.Id == ControlRasIds.EngineUncleanShutdown);
            Assert.AreEqual("WARNING", unclean.Severity);
            Assert.AreEqual(killed.ToString(System.Globalization.CultureInfo.InvariantCulture), unclean.Data!["pid"]);
            StringAssert.Contains(unclean.Msg, $"the previous engine (pid {killed}, started ");
            Assert.IsLessThan(events.Last(x => x.Id == ControlRasIds.EngineStarted).Seq, unclean.Seq, "raised before this engine's engine_started");
            Assert.AreEqual(written, Sha(await cli.OkAsync("image", "read", "uc/c/i", "--length", "65536")), "the acknowledged write survived the kill");
            await cli.OkAsync("system", "stop");
            await second.WaitForExitAsync(TimeSpan.FromSeconds(30));
            StringAssert.Contains(second.Log, "[1014]");
        }

        await using (var third = await EngineProcess.StartAsync(data))
        {
            var events = await EventsThroughStartAsync(third);
            Assert.AreEqual(1, events.Count(x => x.Id == ControlRasIds.EngineUncleanShutdown), "after a clean stop there is no new one");
        }
    }

    private static string Sha(string cliOutput) =>
        System.Text.RegularExpressions.Regex.Match(cliOutput, "[0-9a-f]{64}").Value is { Length: 64 } sha ? sha : throw new AssertFailedException("no sha256 in: " + cliOutput);

    /// <summary>The RAS log up to and including this engine's engine_started (read with --follow, so none is missed).</summary>
    private static Task<List<RasRecord>> EventsThroughStartAsync(EngineProcess engine) =>
        new StrataCli(engine.Socket).EventsUntilAsync(e => e.Id == ControlRasIds.EngineStarted && e.Pid == engine.Pid, TimeSpan.FromSeconds(30));

    [TestMethod]
    public async Task EventsFollow_SeesAnEventRaisedAfterItStarted()
    {
        // From a day back: the engine's own engine_started is printed first, which shows the follower
        // has read the history; an event raised after that can only reach it by following.
        var psi = Proc.Dotnet(Bin.Cli, ["--socket", _engine.Socket, "system", "events", "--follow", "--json", "--since", "1d"]);
        using var follower = Process.Start(psi)!;
        var lines = new List<string>();
        var started = new TaskCompletionSource();
        var seen = new TaskCompletionSource();
        follower.OutputDataReceived += (_, e) =>
        {
            if (e.Data == null)
                return;
            lock (lines)
                lines.Add(e.Data);
            started.TrySetResult();
            if (e.Data.Contains("\"pool\":\"followed\"", StringComparison.Ordinal))
                seen.TrySetResult();
        };
        follower.BeginOutputReadLine();
        try
        {
            await started.Task.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.IsFalse(seen.Task.IsCompleted, "the event is not raised yet");
            Assert.IsFalse(follower.HasExited, "the follower exited early");
            await _cli.OkAsync("pool", "create", "followed", "--size", "64M");
            try
            {
                await seen.Task.WaitAsync(TimeSpan.FromSeconds(30));
            }
            catch (TimeoutException)
            {
                lock (lines)
                    Assert.Fail("--follow did not print the new event; got: " + string.Join("\n", lines));
            }
            var e = ParseLines(string.Join("\n", lines)).First(x => x.Pool == "followed");
            Assert.AreEqual(ControlRasIds.PoolCreated, e.Id);
        }
        finally
        {
            follower.Kill(entireProcessTree: true);
            await follower.WaitForExitAsync();
            await _cli.RunAsync("pool", "destroy", "followed", "--force");
        }
    }

    [TestMethod]
    public async Task EngineCounters_ShowIoCountersMoving()
    {
        await _cli.OkAsync("pool", "create", "ctr", "--size", "64M");
        await _cli.OkAsync("cont", "create", "ctr", "c");
        await _cli.OkAsync("image", "create", "ctr", "c", "i", "--size", "16M");
        var counters = Proc.RunAsync(Proc.Dotnet(Bin.Cli, ["--socket", _engine.Socket, "engine", "counters", "--json", "--duration", "9", "--interval", "1"]), TimeSpan.FromSeconds(60));
        var writer = Task.Run(async () =>
        {
            // Until the sampler ends (not a fixed time), over the API directly: a CLI process per write
            // took seconds on a loaded machine, so few or none landed between two samples.
            using var http = _engine.Http();
            var block = new byte[262144];
            for (int i = 0; !counters.IsCompleted; i++)
            {
                Array.Fill(block, (byte)i);
                var put = await http.PutAsync($"v1/pools/ctr/containers/c/images/i/data?offset={(i % 32) * 262144}", new ByteArrayContent(block));
                Assert.IsTrue(put.IsSuccessStatusCode, await put.Content.ReadAsStringAsync());
            }
        });
        var r = await counters;
        await writer;
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        var samples = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        var writes = samples.Where(s => s.GetProperty("instrument").GetString() == "strata.io.bytes" && s.GetProperty("tags").GetString()!.Contains("op=write"))
            .Select(s => s.TryGetProperty("value", out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : s.GetProperty("rate").GetDouble()).ToList();
        Assert.IsNotEmpty(writes, "no strata.io.bytes{op=write} sample:\n" + r.Stdout + r.Stderr);
        Assert.IsGreaterThan(0.0, writes.Max(), r.Stdout);
        if (writes.Count >= 2)
            Assert.IsGreaterThan(writes.Min(), writes.Max(), "the write byte counter did not move:\n" + r.Stdout);
        await _cli.OkAsync("pool", "destroy", "ctr", "--force");
    }

    [TestMethod]
    public async Task RasLog_RotatesBySize_AndKeepsSequence()
    {
        string dir = Path.Combine(_dir, "rot");
        string cfg = Path.Combine(_dir, "rot.yaml");
        File.WriteAllText(cfg, "ras:\n  max_bytes: 8192\n  keep: 2\n");
        await using var engine = await EngineProcess.StartAsync(dir, "--config", cfg);
        using var http = engine.Http();
        var create = await http.PostAsync("v1/pools", System.Net.Http.Json.JsonContent.Create(new PoolCreateRequest("rot", 64 << 20), options: Api.Json));
        Assert.IsTrue(create.IsSuccessStatusCode, await create.Content.ReadAsStringAsync());
        for (int i = 0; i < 40; i++)
        {
            var r = await http.PostAsync("v1/pools/rot/containers", System.Net.Http.Json.JsonContent.Create(new ContainerCreateRequest($"c{i}"), options: Api.Json));
            Assert.IsTrue(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync());
        }
        // Events reach the file in batches after the calls return; `system events` first writes every
        // event raised before it (RasLog.ReadAllAsync), so the files are complete once it answered.
        var events = ParseLines(await new StrataCli(engine.Socket).OkAsync("system", "events", "--json"));
        string log = Path.Combine(dir, "ras", "events.jsonl");
        Assert.IsTrue(File.Exists(log + ".1"), "the RAS log was not rotated");
        Assert.IsFalse(File.Exists(log + ".3"), "only 'keep' rotated files are kept");
        Assert.IsLessThanOrEqualTo(8192L, new FileInfo(log).Length);
        var seqs = events.Select(e => e.Seq).ToList();
        CollectionAssert.AreEqual(seqs.OrderBy(x => x).ToList(), seqs, "events come back in order");
        Assert.AreEqual(seqs.Count, seqs.Distinct().Count());
        Assert.AreEqual("c39", events.Last(e => e.Id == ControlRasIds.ContainerCreated).Cont);
    }
}
