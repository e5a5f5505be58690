using System.Text.Json;
using Strata.Cli.Tests;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// A target that stops working under a real client (issue 14), through the real daemon: three file
/// targets, an rf 2 pool, fio's nbd engine with verify=crc32c. Target 2's device starts failing once
/// the client has used it (the shim's fail_after fault key, in its URI); the engine excludes it by
/// itself, rebuilds onto targets 0 and 1, and fio sees no error. Then target 1 is excluded as well: every
/// chunk was rebuilt, so the engine accepts it without --force, nothing is lost and every block still
/// reads back from target 0 alone. The engine then restarts with target 2 still dead: the pool opens
/// without it (it is excluded) and every block reads back.
/// </summary>
[TestClass]
public sealed class TargetFailureTests
{
    // Reads of the target fail from the 65th on; enough reads of the pool's metadata and the first
    // client reads succeed, so the failure begins while fio writes and verifies.
    private const string FirstFailure = "fail_after=64&fail_ops=read";
    private const int ExcludeAfterErrors = 16;
    // Every command on the target fails: a device that died for good.
    private const string Dead = "fail_every=1&fail_ops=read,write,flush,trim,zeroes"; // StorageEngineOptions.DefaultExcludeAfterErrors, the daemon's

    private static string Config(string dir, string name, params string[] faults)
    {
        string data = Path.Combine(dir, "data");
        var targets = faults.Select((f, i) => $"  - file:{data}/t{i}.img?create=1&size=1G{(f.Length > 0 ? "&" + f : "")}");
        string path = Path.Combine(dir, name);
        File.WriteAllText(path, $"targets:\n{string.Join('\n', targets)}\nnbd:\n  - unix:run/nbd.sock\n");
        return path;
    }

    private static string[] Fio(string uri, bool verifyOnly) =>
    [
        "--name=tfail", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=16k", "--size=8M", "--numjobs=2",
        "--offset_increment=16M", "--iodepth=4", "--randseed=1414", "--verify=crc32c", "--verify_backlog=32", "--do_verify=1",
        "--verify_fatal=1", "--group_reporting", "--output-format=json", .. (verifyOnly ? new[] { "--verify_only" } : Array.Empty<string>()),
    ];

    /// <summary>Runs fio and asserts exit 0, no error, and every written byte read back verified.</summary>
    private static async Task RunFioAsync(string uri, bool verifyOnly, string when)
    {
        var f = await Tools.RunAsync("fio", Fio(uri, verifyOnly));
        Assert.AreEqual(0, f.ExitCode, $"fio {when}: {f}");
        using var json = JsonDocument.Parse(f.Stdout[f.Stdout.IndexOf('{')..]);
        var job = json.RootElement.GetProperty("jobs")[0];
        Assert.AreEqual(0, job.GetProperty("error").GetInt32(), $"fio {when}");
        if (!verifyOnly)
            Assert.AreEqual(2 * (8L << 20), job.GetProperty("write").GetProperty("io_bytes").GetInt64(), $"fio {when}: every block was written");
        Assert.IsGreaterThanOrEqualTo(2 * (8L << 20), job.GetProperty("read").GetProperty("io_bytes").GetInt64(), $"fio {when}: every block was read back and verified");
    }

    /// <summary>Pool p (rf 2 over the three targets), container c, image v of 32 MiB in 1 MiB chunks: what fio writes.</summary>
    private static async Task CreateImageAsync(StrataCli cli)
    {
        await cli.OkAsync("pool", "create", "p", "--size", "768M", "--rf", "2");
        await cli.OkAsync("cont", "create", "p", "c");
        await cli.OkAsync("image", "create", "p", "c", "v", "--size", "32M", "--chunk-size", "1M");
    }

    private static List<RasRecord> Events(string data) =>
        File.ReadAllLines(Path.Combine(data, "ras", "events.jsonl")).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();

    /// <summary>The first RAS event <paramref name="id"/> (about <paramref name="target"/>, when given), waited for by following the log.</summary>
    private static async Task<RasRecord> WaitEventAsync(StrataCli cli, string id, int? target = null) =>
        (await cli.EventsUntilAsync(e => e.Id == id && (target == null || e.Target == target), TimeSpan.FromMinutes(1))).Last();

    /// <summary>Waits (bounded) until process <paramref name="pid"/> (an engine the test did not start: a swap's) has exited.</summary>
    private static async Task WaitGoneAsync(int pid)
    {
        for (int i = 0; i < 600 && Directory.Exists($"/proc/{pid}"); i++)
            await Task.Delay(100);
        Assert.IsFalse(Directory.Exists($"/proc/{pid}"), $"engine {pid} did not exit after system stop");
    }

    /// <summary>Waits (bounded) until pool p runs no job and its rebuild, if any, ended; returns `pool query`.</summary>
    private static async Task<PoolQueryDto> WaitRebuildAsync(StrataCli cli)
    {
        PoolQueryDto q = null!;
        for (int i = 0; i < 300; i++)
        {
            q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
            if (q.Job is { Kind: "rebuild" } job && job.State != "running")
                return q;
        }
        throw new AssertFailedException($"the rebuild did not end: {q}");
    }

    /// <summary>
    /// Target 2's writes and flushes start failing while fio writes (its reads keep working): every
    /// client write still succeeds on the other replica, the target leaves the pool at its first failed
    /// write (target_dropped) instead of failing it, the engine excludes it and rebuilds, and what fio
    /// wrote verifies before and after a restart with the target's writes still failing.
    /// </summary>
    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task TargetWritesFail_UnderFioVerifyOnRf2Pool_TargetLeavesRebuiltNoClientError()
    {
        string dir = Bin.NewTempDir("target-wfail");
        string data = Path.Combine(dir, "data");
        string uri = $"nbd+unix:///p/c/v?socket={Path.Combine(data, "run", "nbd.sock")}";
        // Past the pool's creation (headers, checkpoints, log) and fio's first writes.
        const string WritesFail = "fail_after=160&fail_ops=write,flush";
        try
        {
            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "first.yaml", "", "", WritesFail)))
            {
                var cli = new StrataCli(engine.Socket);
                await CreateImageAsync(cli);

                await RunFioAsync(uri, verifyOnly: false, "while target 2's writes failed");
                var left = await WaitEventAsync(cli, "target_dropped", 2);
                StringAssert.Contains(left.Msg, "pool 'p' stopped using target 2 after its device failed a write");
                var auto = await WaitEventAsync(cli, "target_auto_excluded", 2);
                StringAssert.Contains(auto.Msg, "excluded after a failed write");
                var q = await WaitRebuildAsync(cli);
                Assert.AreEqual("completed", q.Job!.State, q.Job.Reason);
                Assert.AreEqual("ready", q.State, q.ToString());
                CollectionAssert.AreEqual(new[] { 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.AreEqual("ok", q.Redundancy.Health, q.ToString());
                Assert.AreEqual(0L, q.Redundancy.ChunksAtOneCopy, "every chunk is back at two copies");
                Assert.IsFalse(Events(data).Any(e => e.Id == "pool_read_only"), "the failing target never made the pool read-only");
                var t2 = (await cli.JsonAsync<StorageInfo>("storage", "query")).Targets.Single(t => t.Index == 2);
                Assert.IsGreaterThan(0L, t2.Errors!.WriteErrors, t2.ToString());
                await RunFioAsync(uri, verifyOnly: true, "after the rebuild");

                // A hot swap while target 2 still fails every write and flush: the closing engine's flush
                // of that device fails, and the swap goes through all the same (the pools checkpointed
                // on the targets they use); the new engine serves what fio wrote.
                var swap = await cli.JsonAsync<SwapResultDto>("system", "swap", "--binary", Bin.Engine);
                Assert.AreEqual(engine.Pid, swap.OldPid);
                await RunFioAsync(uri, verifyOnly: true, "after a hot swap");
                q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
                CollectionAssert.AreEqual(new[] { 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.IsTrue(engine.Log.Contains("[1607]", StringComparison.Ordinal), "the failed flush of target 2 is logged:\n" + engine.Log);
                await cli.OkAsync("system", "stop");
                await WaitGoneAsync(swap.NewPid);
            }

            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "second.yaml", "", "", "fail_every=1&fail_ops=write,flush")))
            {
                var cli = new StrataCli(engine.Socket);
                var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
                Assert.AreEqual("ready", q.State, q.ToString());
                CollectionAssert.AreEqual(new[] { 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                await RunFioAsync(uri, verifyOnly: true, "after a restart");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task TargetFailure_UnderFioVerifyOnRf2Pool_ExcludedRebuiltThenSecondFailureLosesNothing()
    {
        string dir = Bin.NewTempDir("target-fail");
        string data = Path.Combine(dir, "data");
        string uri = $"nbd+unix:///p/c/v?socket={Path.Combine(data, "run", "nbd.sock")}";
        try
        {
            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "first.yaml", "", "", FirstFailure)))
            {
                var cli = new StrataCli(engine.Socket);
                await CreateImageAsync(cli);

                // Target 2 stops working while fio writes and verifies: no client error.
                await RunFioAsync(uri, verifyOnly: false, "while target 2 failed");
                var auto = await WaitEventAsync(cli, "target_auto_excluded", 2);
                StringAssert.Contains(auto.Msg, $"excluded after {ExcludeAfterErrors} device errors");
                var q = await WaitRebuildAsync(cli);
                Assert.AreEqual("completed", q.Job!.State, q.Job.Reason);
                CollectionAssert.AreEqual(new[] { 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.AreEqual("ok", q.Redundancy.Health, q.ToString());
                Assert.AreEqual(0L, q.Redundancy.ChunksAtOneCopy, "every replica target 2 held was rebuilt");
                Assert.AreEqual(0L, q.Redundancy.LostChunks);
                var storage = await cli.JsonAsync<StorageInfo>("storage", "query");
                var t2 = storage.Targets.Single(t => t.Index == 2);
                Assert.IsGreaterThanOrEqualTo(ExcludeAfterErrors, t2.Errors!.ReadErrors, t2.ToString());
                Console.WriteLine($"target 2: {t2}");
                StringAssert.Contains((await WaitEventAsync(cli, "pool_rebuild_started")).Msg, "excluded target(s) 2");
                await WaitEventAsync(cli, "pool_rebuild_completed");

                // What fio wrote reads back verified, now from targets 0 and 1 only.
                await RunFioAsync(uri, verifyOnly: true, "after the rebuild");

                // Target 1 goes too. Every chunk has its copies on targets 0 and 1 now, so the engine takes it
                // without --force (it refuses when a chunk would lose its last copy) and target 0 serves all.
                var gone = await cli.JsonAsync<List<PoolExclusionDto>>("storage", "exclude-target", "1");
                Assert.AreEqual(0L, gone.Single().Redundancy.LostChunks, "nothing that had been rebuilt is lost");
                q = await WaitRebuildAsync(cli);
                CollectionAssert.AreEqual(new[] { 1, 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.AreEqual(0L, q.Redundancy.LostChunks, q.ToString());
                Assert.AreEqual(16L, q.Redundancy.ChunksAtOneCopy, "the 16 chunks fio wrote, each at one copy on target 0");
                Assert.IsFalse(Events(data).Any(e => e.Id == "pool_data_lost"), "no pool_data_lost event");
                await RunFioAsync(uri, verifyOnly: true, "with target 0 alone");
            }

            // A restart with target 2 dead for good: every command on it fails, its superblock's read included.
            // The engine starts without it, and the pool excludes it, so it opens without it and serves all.
            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "second.yaml", "", "", Dead)))
            {
                var cli = new StrataCli(engine.Socket);
                var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "p");
                Assert.AreEqual("ready", q.State, q.ToString());
                CollectionAssert.AreEqual(new[] { 1, 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.AreEqual(0L, q.Redundancy.LostChunks, q.ToString());
                Assert.AreEqual(2, Events(data).Last(e => e.Id == "target_unreadable").Target);
                var dead = (await cli.JsonAsync<StorageInfo>("storage", "query")).Targets.Single(t => t.Index == 2);
                Assert.AreEqual("failed", dead.Health, dead.ToString());
                StringAssert.Contains(dead.HealthReason, "target 2 (");
                StringAssert.Contains(dead.HealthReason, "cannot be read");
                var unusable = Events(data).Last(e => e.Id == "checkpoint_bad");
                Assert.AreEqual(2, unusable.Target);
                StringAssert.Contains(unusable.Msg, "metadata on target 2 is unusable: its superblock cannot be read: ");
                await RunFioAsync(uri, verifyOnly: true, "after a restart with target 2 dead");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A target brought back with `storage reintegrate-target` fails its writes again while the job
    /// moves chunks back and fio writes: fio sees no error, the reintegration fails naming the target
    /// (pool_reintegrate_failed, `pool query`'s Reintegration), the target is excluded again and the pool
    /// rebuilt, never read-only; a later reintegration with the device sound brings it back.
    /// </summary>
    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public async Task Reintegrate_TargetWritesFailAgainUnderFio_ReintegrationFailsTargetExcludedNoClientError()
    {
        string dir = Bin.NewTempDir("target-reintfail");
        string data = Path.Combine(dir, "data");
        string uri = $"nbd+unix:///p/c/v?socket={Path.Combine(data, "run", "nbd.sock")}";
        try
        {
            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "first.yaml", "", "", "")))
            {
                var cli = new StrataCli(engine.Socket);
                await CreateImageAsync(cli);
                await RunFioAsync(uri, verifyOnly: false, "before target 2 was excluded");
                await cli.OkAsync("storage", "exclude-target", "2");
                Assert.AreEqual("completed", (await WaitRebuildAsync(cli)).Job!.State);
            }

            // Target 2's writes fail after the reintegration's own (its check's flush, the rejoin's checkpoint
            // and headers, the lift's round): once the job runs and fio writes there too.
            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "second.yaml", "", "", "fail_after=30&fail_ops=write,flush")))
            {
                var cli = new StrataCli(engine.Socket);
                // The job moves a chunk, then waits for the throttle: the failure comes from fio's writes or its copy.
                await cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "1");
                StringAssert.Contains(await cli.OkAsync("storage", "reintegrate-target", "2"), "Pool p: target 2 reintegrated;");
                await RunFioAsync(uri, verifyOnly: false, "while target 2 was reintegrated and failed again");
                StringAssert.Contains((await WaitEventAsync(cli, "target_dropped", 2)).Msg, "pool 'p' stopped using target 2 after its device failed a write");
                StringAssert.Contains((await WaitEventAsync(cli, "pool_reintegrate_failed", 2)).Msg, "pool 'p' reintegrate failed: target 2 failed a write (");
                await cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "0");
                var q = await WaitRebuildAsync(cli);
                Assert.AreEqual("completed", q.Job!.State, q.Job.Reason);
                Assert.AreEqual("ready", q.State, q.ToString());
                CollectionAssert.AreEqual(new[] { 2 }, q.Redundancy!.ExcludedTargets.ToArray());
                Assert.AreEqual("ok", q.Redundancy.Health, q.ToString());
                Assert.AreEqual(2, q.Reintegration!.Target);
                Assert.AreEqual("failed", q.Reintegration.State);
                StringAssert.Contains(q.Reintegration.Reason, "target 2 failed a write (");
                StringAssert.Contains(await cli.OkAsync("pool", "query", "p"), "Reintegration: target 2 failed");
                Assert.IsFalse(Events(data).Any(e => e.Id == "pool_read_only"), "the failing target never made the pool read-only");
                await RunFioAsync(uri, verifyOnly: true, "after target 2 was excluded again");
            }

            await using (var engine = await EngineProcess.StartAsync(data, "--config", Config(dir, "third.yaml", "", "", "")))
            {
                var cli = new StrataCli(engine.Socket);
                CollectionAssert.AreEqual(new[] { 2 }, (await cli.JsonAsync<PoolQueryDto>("pool", "query", "p")).Redundancy!.ExcludedTargets.ToArray(), "the exclusion is durable");
                await RunFioAsync(uri, verifyOnly: true, "after a restart");
                await cli.OkAsync("storage", "reintegrate-target", "2");
                PoolQueryDto q = null!;
                for (int i = 0; i < 300 && (q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "p")).Job is { State: "running" }; i++)
                {
                }
                Assert.AreEqual("completed", q.Job!.State, q.Job.Reason);
                Assert.AreEqual("completed", q.Reintegration!.State);
                Assert.AreEqual(0, q.Redundancy!.ExcludedTargets.Count);
                Assert.AreEqual("ok", q.Redundancy.Health, q.ToString());
                await RunFioAsync(uri, verifyOnly: true, "after target 2 was reintegrated");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
