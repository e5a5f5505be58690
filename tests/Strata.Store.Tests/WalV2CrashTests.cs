using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Seeded power losses during a wal_v2 upgrade while clients write: at any device command of the
/// job (its begin record, the exclusive switch's checkpoint on every shard, the cursor, the layout
/// switch, the last checkpoint), the crash keeps a random subset of unflushed writes, one torn; in a
/// third of the runs the power fails again while the pool reopens and the job resumes. Then: the
/// pool opens, the job completes by itself (or, if its first record was lost, when started again),
/// the log is v2 on every shard, and every chunk holds the last acknowledged contents or a write
/// that was in flight or not yet flushed (never other bytes). CI runs 500 seeds (CrashSeeds says
/// how to soak or replay a seed).
/// </summary>
[TestClass]
public sealed class WalV2CrashTests
{
    private const int Chunk = 4096;
    private const int Chunks = 24;
    private const int Writers = 3;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task WalV2Upgrade_CrashAnywhereWithClientWrites_NoAcknowledgedWriteLostJobCompletes()
    {
        var (seeds, runs, first) = CrashSeeds.FromEnvironment(500);
        int resumed = 0, switchedBeforeCrash = 0, resumedAfterSwitch = 0, mixed = 0;
        CrashSeeds.AssertNone(await CrashSeeds.FirstFailureAsync(seeds, 2, async seed =>
        {
            var r = await RunAsync(seed);
            if (r.Resumed)
                Interlocked.Increment(ref resumed);
            if (r.V2Headers > 0)
                Interlocked.Increment(ref switchedBeforeCrash);
            if (r.V2Headers > 0 && r.Resumed)
                Interlocked.Increment(ref resumedAfterSwitch);
            if (r.V2Headers > 0 && r.V2Headers < r.Targets)
                Interlocked.Increment(ref mixed);
        }, TestContext.CancellationToken));
        TestContext.WriteLine($"{runs} wal_v2 crash runs from seed {first}: {resumed} resumed the job at reopen, {switchedBeforeCrash} crashed with the log already v2 on some shard ({resumedAfterSwitch} of them before the job ended, {mixed} with v1 and v2 headers mixed)");
        if (runs >= 100)
        {
            Assert.IsGreaterThan(runs / 8, resumed, "crashes landed mid-job and the job resumed");
            Assert.IsGreaterThan(0, resumedAfterSwitch, "some crashes came after the switch's checkpoint reached a header, before the job ended");
        }
    }

    private sealed record Outcome(bool Resumed, int V2Headers, int Targets);

    /// <summary>What each chunk may hold after a crash: its last durable acknowledged contents, and any write since (writeback, or in flight).</summary>
    private sealed class Model
    {
        public readonly List<byte[]>[] Allowed = Enumerable.Range(0, Chunks).Select(_ => new List<byte[]> { new byte[Chunk] }).ToArray();
    }

    private static async Task<Outcome> RunAsync(int seed)
    {
        var rng = new Random(seed);
        var cat = LayoutCatalog.Default;
        var options = new StorageEngineOptions { Catalog = cat, WritebackFlushInterval = Timeout.InfiniteTimeSpan };
        var power = new CrashSwitch();
        int targets = rng.Next(1, 3);
        var disks = Enumerable.Range(0, targets).Select(i => new CrashDisk($"w{i}", 4L << 20, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks, options);
        var pool = await engine.CreatePoolAsync("p", targets * (1L << 20), targets, TestDevices.SmallPool with { LayoutVersion = 4 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", Chunks * Chunk, Chunk);
        var model = new Model();
        for (int c = 0; c < Chunks; c += 2)
        {
            var data = TestDevices.Pattern(Chunk, seed * 1000 + c);
            await img.WriteAsync(c * Chunk, data);
            model.Allowed[c] = [data];
        }

        // Clients write (durable and writeback) while the job runs; the power fails at a random command.
        power.Reset(rng.Next(1, 70));
        var jobDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var writers = Enumerable.Range(0, Writers).Select(w => WriteAsync(img, model, w, new Random(rng.Next()), power, jobDone.Task)).ToArray();
        try
        {
            await pool.UpgradeAsync(5, false);
            await pool.WaitForUpgradeAsync();
        }
        catch (Exception) when (power.Crashed)
        {
        }
        jobDone.SetResult();
        await Task.WhenAll(writers);
        power.CutPower();

        power = new CrashSwitch();
        disks = disks.Select(d => d.AfterCrash(rng, power)).ToArray();
        int v2Headers = (await WalV2UpgradeTests.HeadersAsync(disks)).Count(h => h.WalFormat == WalFormatV2.Format);
        bool resumed = false;
        if (rng.Next(3) == 0)
        {
            // Power fails again while the pool reopens (replay, the open-time checkpoint) or the job resumes.
            power.Reset(rng.Next(1, 40));
            try
            {
                var ras = new InMemoryRasSink();
                var e = await StorageEngine.OpenAsync(disks, options with { Ras = ras });
                var p = await e.OpenPoolAsync("p");
                await p.WaitForUpgradeAsync();
                resumed |= ras.WithId(RasIds.PoolUpgradeResumed).Any();
            }
            catch (Exception) when (power.Crashed)
            {
            }
            power.CutPower();
            power = new CrashSwitch();
            disks = disks.Select(d => d.AfterCrash(rng, power)).ToArray();
        }

        var finalRas = new InMemoryRasSink();
        var reopened = await StorageEngine.OpenAsync(disks, options with { Ras = finalRas });
        var pool2 = await reopened.OpenPoolAsync("p");
        await pool2.WaitForUpgradeAsync();
        resumed |= finalRas.WithId(RasIds.PoolUpgradeResumed).Any();
        if (pool2.GetProperty("upgrade_status") == "not started")
        {
            // The job's first record never became durable: nothing happened; start it now.
            Assert.AreEqual(1u, pool2.Log.Format, $"seed {seed}: no job, no switch");
            await pool2.UpgradeAsync(5, false);
            await pool2.WaitForUpgradeAsync();
        }
        Assert.AreEqual("completed", pool2.GetProperty("upgrade_status"), $"seed {seed}");
        Assert.AreEqual(5u, pool2.LayoutVersion, $"seed {seed}");
        Assert.AreEqual(WalFormatV2.Format, pool2.Log.Format, $"seed {seed}");
        var bad = finalRas.Events.FirstOrDefault(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable");
        Assert.IsNull(bad, $"seed {seed}: {bad?.Message}");
        var read = new byte[Chunk];
        var image = pool2.OpenImage("c", "v");
        for (int c = 0; c < Chunks; c++)
        {
            await image.ReadAsync(c * Chunk, read);
            if (!model.Allowed[c].Any(a => a.AsSpan().SequenceEqual(read)))
                throw new AssertFailedException($"seed {seed}: chunk {c} holds bytes that are neither its last acknowledged contents nor a write in flight or not flushed");
        }
        // After the close every header names v2 and carries wal_v2, not bit 62.
        await reopened.DisposeAsync();
        foreach (var h in await WalV2UpgradeTests.HeadersAsync(disks))
            Assert.AreEqual((WalFormatV2.Format, 0UL), (h.WalFormat, h.Incompat & LayoutCatalog.IncompatUpgradeInProgress), $"seed {seed}");
        return new Outcome(resumed, v2Headers, targets);
    }

    /// <summary>
    /// One client: writes its own chunks (w, w + Writers, ...) until the power fails, or until the job
    /// ended and it wrote a few more. Refusals during the exclusive switch change nothing; it tries again.
    /// </summary>
    private static async Task WriteAsync(Image img, Model model, int w, Random rng, CrashSwitch power, Task jobDone)
    {
        int after = 0;
        while (!power.Crashed && after < 4)
        {
            if (jobDone.IsCompleted)
                after++;
            int c = w + Writers * rng.Next(Chunks / Writers);
            var data = TestDevices.Pattern(Chunk, rng.Next());
            bool durable = rng.Next(2) == 0;
            lock (model)
                model.Allowed[c].Add(data);
            try
            {
                await img.WriteAsync(c * Chunk, data, durable);
            }
            catch (PoolBusyException)
            {
                // Refused at the gate: nothing was written. Back off while the switch runs.
                lock (model)
                    model.Allowed[c].Remove(data);
                await Task.Delay(1);
                continue;
            }
            catch (Exception) when (power.Crashed || power.Faulted)
            {
                return;
            }
            if (durable)
                lock (model)
                    model.Allowed[c] = [data];
        }
    }
}
