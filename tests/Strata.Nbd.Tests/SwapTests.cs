using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Strata.Cli.Tests;
using Strata.Engine.Control;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// The hot swap (`strata system swap --binary`, `strata-engine run --takeover`) through the real
/// daemon: NBD clients (fio, qemu-io, raw clients with requests in flight) keep their connections
/// across consecutive swaps and lose nothing; failed swaps (a binary that exits at start, crashes
/// mid-adoption, refuses a pool) leave the old engine serving; bad input is refused before anything
/// changes; kill -9 of either process in the middle of the hand-off loses nothing acknowledged.
/// </summary>
[TestClass]
public sealed class SwapTests
{
    private static readonly string[] Swap = ["system", "swap", "--binary", Bin.Engine];

    private static async Task<SwapResultDto> SwapAsync(NbdDaemon d, params string[] extra) =>
        await d.Cli.JsonAsync<SwapResultDto>([.. Swap, .. extra]);

    private static async Task<int> PidAsync(NbdDaemon d) => (await d.Cli.JsonAsync<SystemInfo>("system", "query")).Pid;

    private static List<RasRecord> Events(NbdDaemon d) =>
        File.ReadAllLines(d.RasFile).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();

    /// <summary>Stops whichever engine serves now (the test's own process object only knows the first one).</summary>
    private static async Task StopCurrentAsync(NbdDaemon d)
    {
        var r = await d.Cli.RunAsync("system", "stop");
        if (r.ExitCode != 0 && File.Exists(d.PidFile) && int.TryParse(File.ReadAllText(d.PidFile).Trim(), out int pid))
            Bin.Signal(pid, 9);
    }

    /// <summary>A client that writes a block, remembers it once acknowledged, and checks every block it remembers.</summary>
    private sealed class Writer(RawNbdClient c, int seed, int blocks, int first = 0)
    {
        private readonly Random _rng = new(seed);
        private readonly Dictionary<int, byte[]> _acked = [];

        public RawNbdClient Client => c;

        public byte[] NextBlock(out int index)
        {
            index = first + _rng.Next(blocks);
            var b = new byte[4096];
            _rng.NextBytes(b);
            return b;
        }

        public void Acked(int index, byte[] data) => _acked[index] = data;

        public IEnumerable<(int Index, byte[] Data)> AckedBlocks => _acked.Select(kv => (kv.Key, kv.Value));

        public async Task VerifyAsync(string when)
        {
            foreach (var (i, want) in _acked)
                CollectionAssert.AreEqual(want, await c.ReadAsync((ulong)i * 4096, 4096), $"block {i} {when}");
        }
    }

    /// <summary>Sends <paramref name="n"/> writes without waiting (they may be parked and carried across a swap), then takes every reply.</summary>
    private static async Task<Task> PipelineAsync(Writer w, int n)
    {
        var sent = new List<(ulong Cookie, int Index, byte[] Data)>();
        for (int i = 0; i < n; i++)
        {
            var b = w.NextBlock(out int index);
            sent.Add((await w.Client.SendRequestAsync(CmdWrite, (ulong)index * 4096, 4096, b), index, b));
        }
        return Task.Run(async () =>
        {
            var replies = new Dictionary<ulong, NbdReply>();
            for (int i = 0; i < n; i++)
            {
                var r = await w.Client.ReadReplyAsync();
                replies[r.Cookie] = r;
            }
            foreach (var (cookie, index, data) in sent)
            {
                Assert.AreEqual(0u, replies[cookie].Error, $"write of block {index} across the swap");
                w.Acked(index, data);
            }
        });
    }

    /// <summary>qemu-io kept open on its NBD connection: commands on its standard input, answers on its output.</summary>
    private sealed class QemuIo : IAsyncDisposable
    {
        private readonly Process _p;
        private readonly StringBuilder _out = new();
        private int _answers;

        public QemuIo(string uri)
        {
            var psi = new ProcessStartInfo(Tools.Require("qemu-io"))
            {
                RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            foreach (var a in new[] { "-f", "raw", uri })
                psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
            _p.OutputDataReceived += (_, e) => Add(e.Data);
            _p.ErrorDataReceived += (_, e) => Add(e.Data);
            _p.BeginOutputReadLine();
            _p.BeginErrorReadLine();
        }

        private void Add(string? line)
        {
            if (line == null)
                return;
            lock (_out)
            {
                _out.AppendLine(line);
                if (line.Contains("wrote ", StringComparison.Ordinal) || line.Contains("read ", StringComparison.Ordinal)
                    || line.Contains("failed", StringComparison.OrdinalIgnoreCase) || line.Contains("error", StringComparison.OrdinalIgnoreCase))
                    _answers++;
            }
        }

        public string Output
        {
            get
            {
                lock (_out)
                    return _out.ToString();
            }
        }

        /// <summary>Runs one command and waits (bounded; nothing timed is asserted) for its answer.</summary>
        public async Task RunAsync(string command)
        {
            int before;
            lock (_out)
                before = _answers;
            await _p.StandardInput.WriteLineAsync(command);
            await _p.StandardInput.FlushAsync();
            for (int i = 0; i < 600; i++)
            {
                lock (_out)
                    if (_answers > before)
                        break;
                Assert.IsFalse(_p.HasExited, $"qemu-io exited: {Output}");
                await Task.Delay(50);
            }
            Assert.DoesNotContain("failed", Output, $"qemu-io: {command}");
            Assert.DoesNotContain("rror", Output, $"qemu-io: {command}");
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                await _p.StandardInput.WriteLineAsync("quit");
                _p.StandardInput.Close();
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await _p.WaitForExitAsync(cts.Token);
            }
            catch (Exception e) when (e is IOException or OperationCanceledException)
            {
                _p.Kill();
            }
            _p.Dispose();
        }
    }

    [TestMethod]
    public async Task Swap_TwentyTimesUnderFioQemuIoAndRawClients_NoErrorNoDisconnect_EveryAckedWriteReadsBack()
    {
        await using var d = await NbdDaemon.StartAsync("swap-twenty");
        try
        {
            await d.CreateImageAsync("fio", "32M");
            await d.CreateImageAsync("raw", "8M");
            await d.CreateImageAsync("qio", "8M");
            // fio: 4 jobs, 4 connections, paced so its writes span the swaps; verify_backlog checks as it goes, then all at the end.
            var fio = Tools.RunAsync("fio", "--name=swap", "--ioengine=nbd", "--uri=" + d.UnixUri("fio"),
                "--rw=randwrite", "--bs=4k", "--size=6M", "--numjobs=4", "--offset_increment=8M", "--iodepth=4", "--rate_iops=25",
                "--randseed=1601", "--verify=crc32c", "--verify_backlog=64", "--do_verify=1", "--verify_fatal=1", "--group_reporting",
                "--output-format=json");
            var writers = new[]
            {
                new Writer(await d.OpenUnixAsync("raw", structured: true), 16, 1024),
                // Both writers share one image: each keeps to its half.
                new Writer(await d.OpenTcpAsync("raw", structured: false), 17, 1024, first: 1024),
            };
            await using var qio = new QemuIo(d.UnixUri("qio"));
            await qio.RunAsync("write -P 0x40 0 64k");
            await d.WaitClientsAsync(2 + 4 + 1 + 0); // pool p: 2 raw, 4 fio jobs, qemu-io

            var pids = new List<int> { await PidAsync(d) };
            int withFio = 0;
            for (int i = 1; i <= 20; i++)
            {
                // Requests in flight while the swap starts: answered by the old engine or parked and answered by the new one.
                var swap = SwapAsync(d);
                var pipelined = new List<Task>();
                foreach (var w in writers)
                    pipelined.Add(await PipelineAsync(w, 8));
                var r = await swap;
                await Task.WhenAll(pipelined);
                Console.WriteLine($"swap {i}: pid {r.OldPid} -> {r.NewPid}, {r.Connections} connection(s), pause {r.TotalMs:F0} ms "
                    + $"(freeze {r.FreezeMs:F0}, checkpoint {r.CheckpointMs:F0}, hand-off {r.HandoffMs:F0}, open {r.OpenMs:F0})");
                Assert.AreEqual(pids[^1], r.OldPid);
                Assert.AreNotEqual(r.OldPid, r.NewPid);
                pids.Add(r.NewPid);
                if (!fio.IsCompleted)
                    withFio++;
                await qio.RunAsync($"write -P 0x{0x41 + i:x2} {i * 65536} 64k");
                await qio.RunAsync($"read -P 0x{0x41 + i:x2} {i * 65536} 64k");
                foreach (var w in writers)
                    await w.VerifyAsync($"after swap {i}");
            }
            Assert.AreEqual(pids[^1], await PidAsync(d), "the CLI reaches the newest engine (API version check passed)");
            Console.WriteLine($"fio ran during {withFio} of the 20 swaps");
            Assert.IsGreaterThan(0, withFio, "fio was still running when the swaps began");
            var f = await fio;
            Assert.AreEqual(0, f.ExitCode, f.ToString());
            using var json = JsonDocument.Parse(f.Stdout[f.Stdout.IndexOf('{')..]);
            var job = json.RootElement.GetProperty("jobs")[0];
            Assert.AreEqual(0, job.GetProperty("error").GetInt32());
            Assert.AreEqual(4 * (6L << 20), job.GetProperty("write").GetProperty("io_bytes").GetInt64(), "every block was written");
            Assert.IsGreaterThanOrEqualTo(4 * (6L << 20), job.GetProperty("read").GetProperty("io_bytes").GetInt64(), "every block was read back and verified");
            for (int i = 1; i <= 20; i++)
                await qio.RunAsync($"read -P 0x{0x41 + i:x2} {i * 65536} 64k");
            foreach (var w in writers)
                await w.VerifyAsync("at the end");
            var events = Events(d);
            Assert.HasCount(20, events.Where(e => e.Id == "engine_swapped").ToList());
            Assert.IsEmpty(events.Where(e => e.Id == "swap_failed").ToList());
            foreach (var w in writers)
                w.Client.Dispose();
        }
        finally
        {
            await StopCurrentAsync(d);
        }
    }

    [TestMethod]
    [DataRow("exit-at-start", "exited with code 3 before the hand-off began")]
    [DataRow("crash-after-half", "died during the hand-off")]
    [DataRow("refuse-pool:p", "pool 'p' refused by this engine")]
    public async Task Swap_NewEngineFails_OldEngineTakesBackAndServes_ClientsSeeNoError(string fault, string why)
    {
        await using var d = await NbdDaemon.StartAsync("swap-fail");
        try
        {
            await d.CreateImageAsync("raw", "8M");
            var a = new Writer(await d.OpenUnixAsync("raw"), 21, 512);
            var b = new Writer(await d.OpenTcpAsync("raw", structured: false), 22, 512, first: 512);
            var first = a.NextBlock(out int i0);
            await a.Client.WriteAsync((ulong)i0 * 4096, first);
            a.Acked(i0, first);
            int pid = await PidAsync(d);

            var swap = d.Cli.RunAsync([.. Swap, "--fault", fault]);
            var held = new[] { await PipelineAsync(a, 8), await PipelineAsync(b, 8) };
            var r = await swap;
            await Task.WhenAll(held);
            Assert.AreEqual(1, r.ExitCode, r.ToString());
            StringAssert.StartsWith(r.Stderr, "strata: swap failed");
            StringAssert.Contains(r.Stderr, why);
            StringAssert.Contains(r.Stderr, $"this engine (pid {pid})");
            Assert.AreEqual(pid, await PidAsync(d), "the old engine serves on");
            await a.VerifyAsync("after the failed swap");
            await b.VerifyAsync("after the failed swap");
            var more = a.NextBlock(out int i1);
            Assert.AreEqual(0u, (await a.Client.RoundTripAsync(CmdWrite, (ulong)i1 * 4096, 4096, more)).Error);
            var failed = Events(d).Single(e => e.Id == "swap_failed");
            Assert.AreEqual("WARNING", failed.Severity);
            StringAssert.Contains(failed.Msg, why);
            // Metadata changes work again: the barrier was thawed with the storage reopened.
            await d.Cli.OkAsync("cont", "create", "p", "after");
            // And a good swap still works afterwards, with the same connections.
            var ok = await SwapAsync(d);
            Assert.AreEqual(2, ok.Connections);
            await a.VerifyAsync("after the next swap");
            await b.VerifyAsync("after the next swap");
        }
        finally
        {
            await StopCurrentAsync(d);
        }
    }

    /// <summary>
    /// Mixed versions: a pool at layout 2 is swapped to an older release (--max-layout 2, strata-1.1)
    /// and back to this one with a client connected throughout; the pool stays at 2 across both
    /// swaps (pre-finalized: nothing upgrades it behind the operator's back) until `pool upgrade`.
    /// </summary>
    [TestMethod]
    public async Task Swap_ToAnOlderReleaseAndBack_PoolKeepsItsLayoutUntilUpgrade_ClientStays()
    {
        await using var d = await NbdDaemon.StartAsync("swap-mixed");
        try
        {
            await d.Cli.OkAsync("pool", "destroy", "p", "--force");
            await d.Cli.OkAsync("pool", "create", "p", "--size", "768M", "--layout", "2");
            await d.Cli.OkAsync("cont", "create", "p", "c");
            await d.CreateImageAsync("raw", "8M");
            var w = new Writer(await d.OpenUnixAsync("raw"), 31, 512);
            var held = await PipelineAsync(w, 8);

            var older = await SwapAsync(d, "--max-layout", "2");
            await held;
            Assert.AreEqual(2u, older.NewMaxLayout);
            Assert.AreEqual(1, older.Connections);
            var q = await d.Cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
            Assert.AreEqual((2u, 2u), (q.LayoutVersion, q.SupportedLayoutVersion), "the older release serves the pool at its layout");
            await w.VerifyAsync("on the older release");
            await PipelineAsync(w, 8).Unwrap();

            var newer = await SwapAsync(d);
            Assert.AreEqual(older.NewPid, newer.OldPid);
            Assert.IsGreaterThan(2u, newer.NewMaxLayout);
            q = await d.Cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
            Assert.AreEqual((2u, newer.NewMaxLayout), (q.LayoutVersion, q.SupportedLayoutVersion), "the newer release leaves the pool at 2 until asked");
            await w.VerifyAsync("back on the newer release");

            await d.Cli.OkAsync("pool", "upgrade", "p", "--wait");
            Assert.AreEqual(newer.NewMaxLayout, (await d.Cli.JsonAsync<PoolQueryDto>("pool", "query", "p")).LayoutVersion);
            await PipelineAsync(w, 8).Unwrap();
            await w.VerifyAsync("after the upgrade");
        }
        finally
        {
            await StopCurrentAsync(d);
        }
    }

    [TestMethod]
    public async Task Swap_BadInput_RefusedBeforeAnythingChanges()
    {
        await using var d = await NbdDaemon.StartAsync("swap-bad");
        try
        {
            await d.CreateImageAsync("raw", "8M");
            using var c = await d.OpenUnixAsync("raw");
            int pid = await PidAsync(d);
            StringAssert.Contains(await d.Cli.FailsAsync(2, "system", "swap", "--binary", "/bin/true"), "--binary /bin/true is not a strata-engine ('identify' exited 0");
            string text = Path.Combine(d.Dir, "notes.txt");
            File.WriteAllText(text, "not a program");
            StringAssert.Contains(await d.Cli.FailsAsync(2, "system", "swap", "--binary", text), "is not a strata-engine (cannot run it");
            StringAssert.Contains(await d.Cli.FailsAsync(2, "system", "swap", "--binary", "/nonexistent/strata-engine"), "'/nonexistent/strata-engine' does not exist");
            StringAssert.Contains(await d.Cli.FailsAsync(2, [.. Swap, "--timeout", "0"]), "--timeout '0' is not a positive duration");
            StringAssert.Contains(await d.Cli.FailsAsync(2, [.. Swap, "--timeout=-5"]), "--timeout '-5' is not a positive duration");
            // An older release (layouts 1..1) cannot open pool p (the newest layout): refused naming the pool and both versions.
            string older = await d.Cli.FailsAsync(1, [.. Swap, "--max-layout", "1"]);
            StringAssert.Contains(older, "cannot swap: pool 'p' is at layout ");
            StringAssert.Contains(older, "(layouts 1..1) cannot open; this engine is ");
            StringAssert.Contains(older, "nothing was changed");

            // A takeover started by hand on another data directory: refused naming both, nothing changes.
            var stray = EngineProcess.Launch(Path.Combine(d.Dir, "other"), "--socket-dir", Path.GetDirectoryName(d.Engine.Socket)!, "--takeover");
            Assert.AreEqual(1, await stray.WaitForExitAsync(TimeSpan.FromSeconds(60)));
            StringAssert.Contains(stray.Log, "--takeover refused by the running engine: cannot swap: the new engine (pid ");
            StringAssert.Contains(stray.Log, $"serves data directory {Path.Combine(d.Dir, "other")}, this engine serves {d.Engine.DataDir}");
            await stray.DisposeAsync();

            // Two swaps at once: the second is refused naming the first, which completes.
            string hold = Path.Combine(d.Dir, "hold");
            var first = SwapAsync(d, "--fault", "hold-until:" + hold);
            await d.WaitLogAsync("[1600]");
            StringAssert.Contains(await d.Cli.FailsAsync(6, Swap), "a swap is already under way (to ");
            File.WriteAllText(hold, "");
            var r = await first;
            Assert.AreEqual(pid, r.OldPid);
            Assert.AreEqual(1, r.Connections);
            Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWrite, 0, 4096, new byte[4096])).Error, "the client was never disturbed");
            Assert.IsEmpty(Events(d).Where(e => e.Id == "swap_failed").ToList(), "refusals change nothing, not even the RAS log");
        }
        finally
        {
            await StopCurrentAsync(d);
        }
    }

    [TestMethod]
    public async Task Swap_KillNewMidHandoff_OldTakesBack_KillOldMidHandoff_NewCarriesOn_NothingAckedLost()
    {
        await using var d = await NbdDaemon.StartAsync("swap-kill");
        try
        {
            await d.CreateImageAsync("raw", "8M");
            var w = new Writer(await d.OpenUnixAsync("raw"), 31, 512);
            var b0 = w.NextBlock(out int i0);
            await w.Client.WriteAsync((ulong)i0 * 4096, b0);
            w.Acked(i0, b0);
            int old = await PidAsync(d);

            // kill -9 of the new process with the storage open and the connection adopted, before it is ready.
            string hold = Path.Combine(d.Dir, "hold1");
            const string Opened = "opened 2 target(s) with 1 pool(s)";
            int opened = CountOf(d.Engine.Log, Opened);
            var swap = d.Cli.RunAsync([.. Swap, "--fault", "hold-until:" + hold]);
            await WaitAsync(() => CountOf(d.Engine.Log, Opened) > opened);
            int fresh = await NewPidAsync(d, old);
            Bin.Signal(fresh, 9);
            var r = await swap;
            Assert.AreEqual(1, r.ExitCode, r.ToString());
            StringAssert.Contains(r.Stderr, "swap failed and was rolled back");
            Assert.AreEqual(old, await PidAsync(d));
            await w.VerifyAsync("after the new engine was killed");

            // kill -9 of the old process in the middle of the hand-off: the new one goes ahead on its own.
            string hold2 = Path.Combine(d.Dir, "hold2");
            // The rollback reopened the storage here too: wait for the next open after that one.
            await WaitAsync(() => CountOf(d.Engine.Log, Opened) >= opened + 2);
            opened = CountOf(d.Engine.Log, Opened);
            var swap2 = d.Cli.RunAsync([.. Swap, "--fault", "hold-until:" + hold2]);
            var held = await PipelineAsync(w, 8);
            await WaitAsync(() => CountOf(d.Engine.Log, Opened) > opened);
            Bin.Signal(old, 9);
            File.WriteAllText(hold2, "");
            await held;
            int now = await PidAsync(d);
            Assert.AreNotEqual(old, now);
            await w.VerifyAsync("after the old engine was killed mid hand-off");
            Assert.AreEqual(0u, (await w.Client.RoundTripAsync(CmdFlush, 0, 0)).Error);
            _ = await swap2; // its answer died with the old engine

            // kill -9 of the engine now serving, then a restart: nothing acknowledged is lost (the client reconnects).
            Bin.Signal(now, 9);
            w.Client.Dispose();
            await using var restarted = await EngineProcess.StartAsync(d.Engine.DataDir, "--config", Path.Combine(d.Dir, "strata.yaml"));
            using var again = await d.OpenUnixAsync("raw");
            var w2 = new Writer(again, 0, 0);
            foreach (var (i, data) in w.AckedBlocks)
                w2.Acked(i, data);
            await w2.VerifyAsync("after kill -9 and a restart");
        }
        finally
        {
            await StopCurrentAsync(d);
        }
    }

    private static int CountOf(string s, string what)
    {
        int n = 0;
        for (int i = s.IndexOf(what, StringComparison.Ordinal); i >= 0; i = s.IndexOf(what, i + 1, StringComparison.Ordinal))
            n++;
        return n;
    }

    private static async Task WaitAsync(Func<bool> condition)
    {
        for (int i = 0; i < 600 && !condition(); i++)
            await Task.Delay(50);
        Assert.IsTrue(condition(), "condition not reached");
    }

    /// <summary>The pid of the engine process started after <paramref name="old"/>, from its "[1000] ... starting: pid N" line.</summary>
    private static async Task<int> NewPidAsync(NbdDaemon d, int old)
    {
        int found = 0;
        await WaitAsync(() =>
        {
            foreach (var line in d.Engine.Log.Split('\n'))
            {
                int at = line.IndexOf("starting: pid ", StringComparison.Ordinal);
                if (line.Contains("[1000]", StringComparison.Ordinal) && at >= 0
                    && int.TryParse(line[(at + 14)..].Split(',')[0], out int p) && p != old)
                    found = p;
            }
            return found != 0;
        });
        return found;
    }
}
