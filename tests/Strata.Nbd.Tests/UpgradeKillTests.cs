using System.Globalization;
using System.Text.RegularExpressions;
using Strata.Cli.Tests;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// Each data-changing upgrade action through the real daemon: qemu-io writes (FUA) over NBD while
/// the job runs, the engine is killed with SIGKILL at a seeded random moment, restarted, killed
/// again, and restarted for good. The job resumes by itself (no second `pool upgrade`) and completes,
/// and every write qemu-io saw acknowledged reads back (qemu-io's `read -P` checks each byte).
/// STRATA_KILL_SEED=S reproduces a run.
/// </summary>
[TestClass]
public sealed partial class UpgradeKillTests
{
    private const long ImageBytes = 24L << 20;
    private const int Block = 4096;

    public TestContext TestContext { get; set; } = null!;

    [GeneratedRegex(@"^(?:wrote (\d+)/\d+ bytes at offset (\d+)|write failed)", RegexOptions.Multiline)]
    private static partial Regex WriteResult();

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    [DataRow(3u, DisplayName = "block_checksums (2 -> 3)")]
    [DataRow(4u, DisplayName = "placement_v2 (3 -> 4)")]
    [DataRow(5u, DisplayName = "wal_v2 (4 -> 5)")]
    public async Task Upgrade_KilledAtRandomPointsWhileQemuIoWrites_ResumesByItselfEveryAcknowledgedWriteReadsBack(uint to)
    {
        Tools.Require("qemu-io");
        int seed = int.TryParse(Environment.GetEnvironmentVariable("STRATA_KILL_SEED"), out int s) ? s : (int)to * 7919;
        TestContext.WriteLine($"seed {seed} (STRATA_KILL_SEED={seed} reproduces)");
        var rng = new Random(seed);
        string dir = Bin.NewTempDir($"upgkill{to}");
        string data = Path.Combine(dir, "data");
        string cfg = Path.Combine(dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            targets:
              - file:{data}/t0.img?create=1&size=512M
              - file:{data}/t1.img?create=1&size=512M
            nbd:
              - unix:run/nbd.sock
            """);
        string uri = $"nbd+unix:///p/c/v?socket={Path.Combine(data, "run", "nbd.sock")}";
        // What each 4 KiB block may hold: one pattern once a write of it was acknowledged, more while
        // writes of it were in flight at a kill.
        var allowed = new Dictionary<long, HashSet<int>>();

        // The step delay holds the job a while before each of its steps, so a kill in the first
        // seconds lands inside the job; migrate_rate keeps the data actions going that long too.
        string[] slow = ["--config", cfg, "--upgrade-step-delay-ms", "1500"];
        var engine = await EngineProcess.StartAsync(data, slow);
        try
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "p", "--size", "256M", "--rf", "2", "--layout", (to - 1).ToString(CultureInfo.InvariantCulture));
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "v", "--size", "24M", "--chunk-size", "64K");
            await Tools.OkAsync("qemu-io", "-f", "raw", "-c", $"write -f -P 1 0 {ImageBytes}", uri);
            for (long b = 0; b < ImageBytes / Block; b++)
                allowed[b] = [1];
            await cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "8M");
            StringAssert.Contains(await cli.OkAsync("pool", "upgrade", "p", "--to", to.ToString(CultureInfo.InvariantCulture)), $"to {to}");

            for (int round = 0; round < 3; round++)
            {
                // Two writers, FUA writes of 4..64 KiB at random 4 KiB offsets, until the kill.
                using var killed = new CancellationTokenSource();
                var writers = Enumerable.Range(0, 2).Select(w => WriteUntilAsync(uri, w, new Random(rng.Next()), allowed, killed.Token)).ToArray();
                int delayMs = rng.Next(200, 4000);
                TestContext.WriteLine($"round {round}: kill after {delayMs} ms");
                await Task.Delay(delayMs, TestContext.CancellationToken);
                Bin.Signal(engine.Pid, 9);
                await engine.WaitForExitAsync(TimeSpan.FromSeconds(30));
                killed.Cancel();
                await Task.WhenAll(writers);
                await engine.DisposeAsync();
                // The last restart runs without the step delay, so the job can finish.
                engine = await EngineProcess.StartAsync(data, round < 2 ? slow : ["--config", cfg]);
            }
            int resumed = File.ReadAllText(Path.Combine(data, "ras", "events.jsonl")).Split('\n').Count(l => l.Contains("pool_upgrade_resumed", StringComparison.Ordinal));
            var cliEnd = new StrataCli(engine.Socket);
            string status = "in progress";
            for (var deadline = DateTime.UtcNow.AddSeconds(180); status == "in progress" && DateTime.UtcNow < deadline;)
            {
                var props = (await cliEnd.JsonAsync<List<PropertyDto>>("pool", "get-prop", "p")).ToDictionary(p => p.Name, p => p.Value);
                status = props["upgrade_status"];
                if (status == "in progress")
                    await Task.Delay(200, TestContext.CancellationToken);
                else
                    Assert.AreEqual(to.ToString(CultureInfo.InvariantCulture), props["layout_version"], status);
            }
            Assert.AreEqual("completed", status, "the job resumed by itself after the restarts and completed");
            Assert.IsGreaterThan(0, resumed, "at least one kill landed inside the job and the restart resumed it");
            TestContext.WriteLine($"{resumed} of 3 restarts resumed the job; {allowed.Count(a => a.Value.Count == 1)} of {allowed.Count} blocks certain");

            // Every acknowledged write reads back: runs of blocks with one allowed pattern, checked by qemu-io.
            var reads = new List<string>();
            long start = -1;
            int pattern = 0;
            for (long b = 0; b <= ImageBytes / Block; b++)
            {
                int p = b < ImageBytes / Block && allowed[b].Count == 1 ? allowed[b].Single() : -1;
                if (start >= 0 && p != pattern)
                {
                    reads.Add($"read -P {pattern} {start * Block} {(b - start) * Block}");
                    start = -1;
                }
                if (start < 0 && p >= 0)
                    (start, pattern) = (b, p);
            }
            foreach (var chunk in reads.Chunk(200))
            {
                var r = await Tools.RunAsync("qemu-io", ["-f", "raw", .. chunk.SelectMany(c => new[] { "-c", c }), uri]);
                Assert.AreEqual(0, r.ExitCode, r.ToString());
                Assert.DoesNotContain("Pattern verification failed", r.Stdout + r.Stderr, r.ToString());
                Assert.AreEqual(chunk.Length, Regex.Matches(r.Stdout, @"^read \d+/\d+ bytes", RegexOptions.Multiline).Count, r.ToString());
            }
            string events = await cliEnd.OkAsync("system", "events");
            Assert.DoesNotContain("data_checksum_mismatch", events);
            StringAssert.Contains(events, "pool_upgrade_completed");
        }
        finally
        {
            await engine.DisposeAsync();
        }
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// Runs qemu-io batches of FUA writes into writer <paramref name="w"/>'s half of the image until
    /// <paramref name="stop"/>. A write qemu-io reports written is acknowledged (its blocks may hold
    /// only its pattern from then on); one it reports failed, or that a kill cut off, may or may not
    /// have landed (its pattern is added to what the blocks may hold).
    /// </summary>
    private static async Task WriteUntilAsync(string uri, int w, Random rng, Dictionary<long, HashSet<int>> allowed, CancellationToken stop)
    {
        long half = ImageBytes / 2;
        while (!stop.IsCancellationRequested)
        {
            var batch = new List<(long Off, int Len, int Pattern)>();
            for (int i = 0; i < 16; i++)
            {
                int len = rng.Next(1, 17) * Block;
                long off = w * half + rng.NextInt64(0, (half - len) / Block + 1) * Block;
                batch.Add((off, len, rng.Next(2, 255)));
            }
            lock (allowed)
                foreach (var (off, len, p) in batch)
                    for (long b = off / Block; b < (off + len) / Block; b++)
                        allowed[b].Add(p);
            var r = await Tools.RunAsync("qemu-io", ["-f", "raw", .. batch.SelectMany(x => new[] { "-c", $"write -f -P {x.Pattern} {x.Off} {x.Len}" }), uri]);
            // qemu-io runs its commands in order and prints one result line for each it ran.
            var results = WriteResult().Matches(r.Stdout + "\n" + r.Stderr).ToList();
            bool refused = r.ExitCode != 0;
            // In the batch's order (qemu-io runs it in order): an acknowledged write leaves its pattern
            // alone in its blocks; one that failed or did not report (the kill) may still have reached
            // the disk, after any earlier write of the batch, so its pattern stays allowed.
            lock (allowed)
                for (int i = 0; i < batch.Count; i++)
                {
                    var x = batch[i];
                    bool acked = i < results.Count && results[i].Groups[1].Success;
                    if (acked)
                        Assert.AreEqual((x.Off, x.Len), (long.Parse(results[i].Groups[2].Value, CultureInfo.InvariantCulture), int.Parse(results[i].Groups[1].Value, CultureInfo.InvariantCulture)), r.ToString());
                    else
                        refused = true;
                    for (long b = x.Off / Block; b < (x.Off + x.Len) / Block; b++)
                    {
                        if (acked)
                            allowed[b] = [x.Pattern];
                        else
                            allowed[b].Add(x.Pattern);
                    }
                }
            if (refused)
                await Task.Delay(100, CancellationToken.None);
        }
    }
}
