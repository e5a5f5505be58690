using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>Target health from facts (a damaged header copy), the connection cap, and a RAS burst surviving a clean stop.</summary>
[TestClass]
public sealed class HealthAndLimitsTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Bin.NewTempDir("health");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    private static List<RasRecord> ParseLines(IEnumerable<string> lines) =>
        lines.Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();

    [TestMethod]
    public async Task StorageQuery_HeaderCopyDamagedWhileStopped_ShowsThatTargetDegradedUntilRewritten()
    {
        string data = Path.Combine(_dir, "data");
        var cli = new StrataCli(Path.Combine(data, "run", "strata.sock"));
        await using (var engine = await EngineProcess.StartAsync(data))
        {
            var before = await cli.JsonAsync<StorageInfo>("storage", "query");
            Assert.IsTrue(before.Targets.All(t => t.Health == "ok" && t.HealthReason == null), string.Join(", ", before.Targets));
            await cli.OkAsync("system", "stop");
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }

        // Flip one byte inside copy B (offset 4096) of target 1's superblock: its CRC32C no longer matches.
        using (var f = new FileStream(Path.Combine(data, "target1.img"), FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = 4096 + 40;
            int b = f.ReadByte();
            f.Position = 4096 + 40;
            f.WriteByte((byte)(b ^ 0xFF));
        }

        await using (var engine = await EngineProcess.StartAsync(data))
        {
            var s = await cli.JsonAsync<StorageInfo>("storage", "query");
            var t1 = s.Targets.Single(t => t.Index == 1);
            Assert.AreEqual("degraded", t1.Health, t1.ToString());
            StringAssert.Contains(t1.HealthReason, "header copy B bad");
            StringAssert.Contains(t1.HealthReason, "bad CRC32C");
            var t0 = s.Targets.Single(t => t.Index == 0);
            Assert.AreEqual("ok", t0.Health, t0.ToString());
            Assert.IsNull(t0.HealthReason);
            Assert.AreEqual(0L, t1.Errors!.ReadErrors + t1.Errors.WriteErrors + t1.Errors.ChecksumMismatches);
            StringAssert.Contains(await cli.OkAsync("storage", "query"), "degraded (header copy B bad");

            // The store's event is in the log with the target and the copy named.
            var bad = ParseLines((await cli.OkAsync("system", "events", "--json")).Split('\n')).Single(e => e.Id == "header_copy_bad");
            Assert.AreEqual(1, bad.Target);
            Assert.AreEqual("B", bad.Data!["copy"]);

            // A pool create rewrites both superblock copies: the target is healthy again.
            await cli.OkAsync("pool", "create", "heal", "--size", "64M");
            var after = await cli.JsonAsync<StorageInfo>("storage", "query");
            Assert.IsTrue(after.Targets.All(t => t.Health == "ok"), string.Join(", ", after.Targets));
            Assert.IsTrue(after.Targets.All(t => t.AllocatedBytes >= 32L << 20 && t.FreeBytes > 0), string.Join(", ", after.Targets));
        }
    }

    [TestMethod]
    public async Task StorageQuery_ChunkCorruptedOnOneTarget_CountsTheMismatchOnThatTargetOnly()
    {
        string data = Path.Combine(_dir, "data");
        string cfg = Path.Combine(_dir, "small.yaml");
        File.WriteAllText(cfg, $"targets:\n  - file:{data}/t0.img?create=1&size=128M\n  - file:{data}/t1.img?create=1&size=128M\n");
        var cli = new StrataCli(Path.Combine(data, "run", "strata.sock"));
        await using (var engine = await EngineProcess.StartAsync(data, "--config", cfg))
        {
            // Set up through the API directly (no CLI process per step).
            using var http = engine.Http();
            foreach (var (path, body) in new (string, object)[]
                     {
                         ("v1/pools", new PoolCreateRequest("p", 64 << 20)),
                         ("v1/pools/p/containers", new ContainerCreateRequest("c")),
                         ("v1/pools/p/containers/c/images", new ImageCreateRequest("i", 4 << 20)),
                     })
            {
                var r = await http.PostAsync(path, JsonContent.Create(body, body.GetType(), options: Api.Json));
                Assert.IsTrue(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync());
            }
            var chunk = new ByteArrayContent(Enumerable.Repeat((byte)90, 65536).ToArray());
            chunk.Headers.ContentType = new("application/octet-stream");
            var w = await http.PutAsync("v1/pools/p/containers/c/images/i/data?offset=0", chunk);
            Assert.IsTrue(w.IsSuccessStatusCode, await w.Content.ReadAsStringAsync());
            Bin.Signal(engine.Pid, 15);
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }

        // rf 1: the chunk lives on one target. Find its bytes and flip one.
        int corrupted = -1;
        for (int t = 0; t < 2 && corrupted < 0; t++)
        {
            using var f = new FileStream(Path.Combine(data, $"t{t}.img"), FileMode.Open, FileAccess.ReadWrite);
            var piece = new byte[1 << 20];
            for (long at = 0; at < f.Length && corrupted < 0; at += piece.Length)
            {
                f.Position = at;
                f.ReadExactly(piece);
                for (int b = 0; b < piece.Length; b += 4096)
                {
                    if (piece.AsSpan(b, 4096).ContainsAnyExcept((byte)90))
                        continue;
                    f.Position = at + b + 100;
                    f.WriteByte(91);
                    corrupted = t;
                    break;
                }
            }
        }
        Assert.AreNotEqual(-1, corrupted, "the written chunk was not found on either target");

        await using (var engine = await EngineProcess.StartAsync(data, "--config", cfg))
        {
            StringAssert.Contains(await cli.FailsAsync(1, "image", "read", "p", "c", "i", "--length", "65536"), "data integrity error");
            var s = await cli.JsonAsync<StorageInfo>("storage", "query");
            var bad = s.Targets.Single(t => t.Index == corrupted);
            Assert.AreEqual("degraded", bad.Health, bad.ToString());
            StringAssert.Contains(bad.HealthReason, "1 checksum mismatch(es)");
            Assert.AreEqual(1L, bad.Errors!.ChecksumMismatches);
            var other = s.Targets.Single(t => t.Index != corrupted);
            Assert.AreEqual("ok", other.Health, other.ToString());
            Assert.AreEqual(0L, other.Errors!.ChecksumMismatches);
        }
    }

    [TestMethod]
    public async Task StorageQuery_FlushesFailOnOneTarget_ThatTargetFailed_EngineStillServes()
    {
        string data = Path.Combine(_dir, "data");
        string Config(string name, string faults)
        {
            string path = Path.Combine(_dir, name);
            File.WriteAllText(path, $"targets:\n  - file:{data}/t0.img?create=1&size=128M\n  - file:{data}/t1.img?create=1&size=128M{faults}\n");
            return path;
        }
        await using (var engine = await EngineProcess.StartAsync(data, "--config", Config("clean.yaml", "")))
        {
            using var http = engine.Http();
            var r = await http.PostAsync("v1/pools", JsonContent.Create(new PoolCreateRequest("p", 64 << 20), options: Api.Json));
            Assert.IsTrue(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync());
            Bin.Signal(engine.Pid, 15);
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }

        // Every flush on target 1 now fails (the device's fault injector): opening the pool checkpoints and flushes.
        await using (var engine = await EngineProcess.StartAsync(data, "--config", Config("faulty.yaml", "&fail_flush=all")))
        {
            var cli = new StrataCli(engine.Socket);
            var s = await cli.JsonAsync<StorageInfo>("storage", "query");
            var t1 = s.Targets.Single(t => t.Index == 1);
            Assert.AreEqual("failed", t1.Health, t1.ToString());
            StringAssert.Contains(t1.HealthReason, "a flush failed");
            StringAssert.Contains(t1.HealthReason, "pool 'p' could not be opened");
            Assert.AreEqual("ok", s.Targets.Single(t => t.Index == 0).Health);
            var e = ParseLines((await cli.OkAsync("system", "events", "--json", "--severity", "ERROR")).Split('\n')).Single(x => x.Id == ControlRasIds.PoolOpenFailed);
            Assert.AreEqual(1, e.Target);
            Assert.AreEqual("p", e.Pool);
            StringAssert.Contains(await cli.FailsAsync(1, "pool", "query", "p"), "flush");
        }
    }

    [TestMethod]
    public async Task ConnectionCap_IdleConnectionsAtTheCap_NextCallRefused_ThenServedAfterTheyClose()
    {
        string data = Path.Combine(_dir, "data");
        string cfg = Path.Combine(_dir, "cap.yaml");
        File.WriteAllText(cfg, "control:\n  max_connections: 3\n  header_timeout_seconds: 60\n");
        await using var engine = await EngineProcess.StartAsync(data, "--config", cfg);
        var cli = new StrataCli(engine.Socket);
        await cli.OkAsync("system", "query");

        // Kestrel counts a connection once its accept loop has taken it, and the slot of
        // the call above is freed only when that connection is torn down: keep three idle
        // connections open (replacing any the engine closed) until the cap shows.
        var idle = new List<Socket>();
        CliResult last = new(-1, "", "");
        try
        {
            for (var deadline = DateTime.UtcNow.AddSeconds(20); DateTime.UtcNow < deadline;)
            {
                idle.RemoveAll(s =>
                {
                    bool closed = s.Poll(0, SelectMode.SelectRead) && s.Available == 0;
                    if (closed)
                        s.Dispose();
                    return closed;
                });
                while (idle.Count < 3)
                {
                    var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(engine.Socket));
                    idle.Add(s);
                }
                // No pause: each call is a CLI process, which paces the loop.
                last = await cli.RunAsync("system", "query");
                if (last.ExitCode != 0)
                    break;
            }
            Assert.AreEqual(3, last.ExitCode, "with the cap's connections idle, the next call is refused: " + last);
            StringAssert.Contains(last.Stderr, "max_connections");
            Assert.DoesNotContain("   at ", last.Stderr);
        }
        finally
        {
            foreach (var s in idle)
                s.Dispose();
        }

        // Closed connections free their slots: a normal call works again.
        CliResult r = new(-1, "", "");
        for (var deadline = DateTime.UtcNow.AddSeconds(10); DateTime.UtcNow < deadline;)
        {
            r = await cli.RunAsync("system", "query");
            if (r.ExitCode == 0)
                break;
        }
        Assert.AreEqual(0, r.ExitCode, r.ToString());
    }

    [TestMethod]
    public async Task RasBurst_ThenCleanStop_EveryEventIsInTheLogInOrder()
    {
        string data = Path.Combine(_dir, "data");
        var engine = await EngineProcess.StartAsync(data);
        await using var _ = engine;
        using var http = engine.Http();
        var create = await http.PostAsync("v1/pools", JsonContent.Create(new PoolCreateRequest("burst", 64 << 20), options: Api.Json));
        Assert.IsTrue(create.IsSuccessStatusCode, await create.Content.ReadAsStringAsync());
        const int n = 60;
        await Parallel.ForEachAsync(Enumerable.Range(0, n), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
        {
            var r = await http.PostAsync("v1/pools/burst/containers", JsonContent.Create(new ContainerCreateRequest($"c{i}"), options: Api.Json), ct);
            Assert.IsTrue(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync(ct));
        });
        await new StrataCli(engine.Socket).OkAsync("system", "stop");
        Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)), engine.Log);

        var events = ParseLines(File.ReadAllLines(Path.Combine(data, "ras", "events.jsonl")));
        var seqs = events.Select(e => e.Seq).ToList();
        CollectionAssert.AreEqual(Enumerable.Range(1, seqs.Count).Select(i => (long)i).ToList(), seqs, "sequence numbers are contiguous and in order");
        var conts = events.Where(e => e.Id == ControlRasIds.ContainerCreated).Select(e => e.Cont).ToHashSet();
        Assert.HasCount(n, conts, "every container_created event reached the log");
        Assert.AreEqual(ControlRasIds.EngineStopped, events[^1].Id, "engine_stopped is the last event, flushed at stop");
    }

    /// <summary>The offset of the first pool shard header ("STRATASH") in a target file, past the superblock.</summary>
    private static long FindShardHeader(string targetFile)
    {
        using var f = File.OpenRead(targetFile);
        var block = new byte[4096];
        for (long at = 1 << 20; at < Math.Min(f.Length, 64L << 20); at += block.Length)
        {
            f.Position = at;
            f.ReadExactly(block);
            if (block.AsSpan(0, 8).SequenceEqual("STRATASH"u8))
                return at;
        }
        throw new AssertFailedException($"no shard header in the first 64 MiB of {targetFile}");
    }

    [TestMethod]
    public async Task StorageQuery_BothPoolHeaderCopiesDamagedWhileStopped_EventLoggedAndTargetDegraded()
    {
        string data = Path.Combine(_dir, "data");
        string cfg = Path.Combine(_dir, "small.yaml");
        File.WriteAllText(cfg, $"targets:\n  - file:{data}/t0.img?create=1&size=128M\n  - file:{data}/t1.img?create=1&size=128M\n");
        var cli = new StrataCli(Path.Combine(data, "run", "strata.sock"));
        await using (var engine = await EngineProcess.StartAsync(data, "--config", cfg))
        {
            await cli.OkAsync("pool", "create", "p", "--size", "64M");
            await cli.OkAsync("system", "stop");
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }

        // One byte flipped inside each copy (A at the shard's start, B 4096 bytes on) of the pool's header on target 1.
        string t1 = Path.Combine(data, "t1.img");
        long header = FindShardHeader(t1);
        using (var f = new FileStream(t1, FileMode.Open, FileAccess.ReadWrite))
        {
            foreach (long at in new[] { header + 40, header + 4096 + 40 })
            {
                f.Position = at;
                int b = f.ReadByte();
                f.Position = at;
                f.WriteByte((byte)(b ^ 0xFF));
            }
        }

        await using (var engine = await EngineProcess.StartAsync(data, "--config", cfg))
        {
            var s = await cli.JsonAsync<StorageInfo>("storage", "query");
            var bad = s.Targets.Single(t => t.Index == 1);
            Assert.AreEqual("degraded", bad.Health, bad.ToString());
            StringAssert.Contains(bad.HealthReason, "pool 'p' shard on target 1");
            StringAssert.Contains(bad.HealthReason, "both header copies are invalid");
            Assert.AreEqual("ok", s.Targets.Single(t => t.Index == 0).Health);
            StringAssert.Contains(await cli.OkAsync("storage", "query"), "degraded (pool 'p' shard on target 1");

            // Still refused, and a retried open does not raise the event again.
            StringAssert.Contains(await cli.FailsAsync(1, "pool", "query", "p"), "both header copies are invalid");
            var e = ParseLines((await cli.OkAsync("system", "events", "--json", "--severity", "ERROR")).Split('\n')).Single(x => x.Id == "pool_header_damaged");
            Assert.AreEqual(1, e.Target);
            Assert.AreEqual("p", e.Pool);
            StringAssert.Contains(e.Msg, "copy A: bad CRC32C; copy B: bad CRC32C");
            StringAssert.Contains(engine.Log, "[1013]");
            StringAssert.Contains(engine.Log, "pool p could not be opened: pool 'p' shard on target 1");
        }
    }

    [TestMethod]
    public async Task SystemEvents_RasLogOnAFullFilesystem_GapReportedAndEveryEventWrittenWhenSpaceReturns()
    {
        string data = Path.Combine(_dir, "data");
        using var fs = Tmpfs.MountOrInconclusive(Path.Combine(_dir, "ras"), "256k");
        string rasFile = Path.Combine(fs.Dir, "events.jsonl");
        string cfg = Path.Combine(_dir, "ras.yaml");
        File.WriteAllText(cfg, $"targets:\n  - file:{data}/t0.img?create=1&size=128M\nras:\n  path: {rasFile}\n");
        await using var engine = await EngineProcess.StartAsync(data, "--config", cfg);
        var cli = new StrataCli(engine.Socket);
        using var http = engine.Http();
        await cli.OkAsync("pool", "create", "p", "--size", "64M");

        string filler = fs.Fill();
        const int n = 20;
        for (int i = 0; i < n; i++)
        {
            var r = await http.PostAsync("v1/pools/p/containers", JsonContent.Create(new ContainerCreateRequest($"c{i}"), options: Api.Json));
            Assert.IsTrue(r.IsSuccessStatusCode, await r.Content.ReadAsStringAsync());
        }

        // While the disk is full: every event is shown (from memory), the outage is reported, logged and counted,
        // and the file holds whole lines only.
        var during = ParseLines((await cli.OkAsync("system", "events", "--json")).Split('\n'));
        CollectionAssert.AreEqual(Enumerable.Range(1, during.Count).Select(i => (long)i).ToList(), during.Select(x => x.Seq).ToList());
        Assert.AreEqual(n, during.Count(x => x.Id == ControlRasIds.ContainerCreated));
        StringAssert.Contains(during.Single(x => x.Id == ControlRasIds.RasLogWriteFailed).Msg, "cannot be written (no space left on device)");
        StringAssert.Contains(await cli.OkAsync("system", "events"), ControlRasIds.RasLogWriteFailed);
        StringAssert.Contains(engine.Log, "[1010]");
        var unwritten = System.Text.RegularExpressions.Regex.Match(await http.GetStringAsync("v1/metrics"), @"^strata_ras_unwritten\S*_total (\d+)$", System.Text.RegularExpressions.RegexOptions.Multiline);
        Assert.IsTrue(unwritten.Success && long.Parse(unwritten.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0, unwritten.Value);
        byte[] bytes = File.ReadAllBytes(rasFile);
        Assert.AreEqual((byte)'\n', bytes[^1], "the file ends in a whole line");
        Assert.IsLessThan(during.Count, ParseLines(File.ReadAllLines(rasFile)).Count, "the disk refused some events");

        // Space returns: the waiting events are written in order, and the gap is reported.
        File.Delete(filler);
        RasRecord? gap = null;
        for (var deadline = DateTime.UtcNow.AddSeconds(30); gap == null && DateTime.UtcNow < deadline; await Task.Delay(100))
            gap = ParseLines(File.ReadAllLines(rasFile)).SingleOrDefault(x => x.Id == ControlRasIds.RasLogWriteResumed);
        Assert.IsNotNull(gap, "ras_log_write_resumed was not written within 30 s");
        StringAssert.Matches(gap.Msg, new System.Text.RegularExpressions.Regex(@"^\d+ event\(s\) could not be written between \S+ and \S+ \(no space left on device\)"));
        var inFile = ParseLines(File.ReadAllLines(rasFile));
        CollectionAssert.AreEqual(Enumerable.Range(1, inFile.Count).Select(i => (long)i).ToList(), inFile.Select(x => x.Seq).ToList());
        CollectionAssert.IsSubsetOf(during.Select(x => x.Seq).ToList(), inFile.Select(x => x.Seq).ToList(), "every event shown during the outage is in the file");
        Assert.AreEqual(n, inFile.Count(x => x.Id == ControlRasIds.ContainerCreated));
        for (var deadline = DateTime.UtcNow.AddSeconds(30); !engine.Log.Contains("[1011]", StringComparison.Ordinal) && DateTime.UtcNow < deadline;)
            await Task.Delay(100);
        StringAssert.Contains(engine.Log, "[1011]");
    }
}
