using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>
/// `storage add-target` and `pool extend` as an operator meets them (issue 14): the real engine
/// process and the strata CLI, a restart that must open the added target, and every refusal.
/// </summary>
[TestClass]
public sealed class TargetsCliTests
{
    private static string TargetUri(string dir, string name) => $"file:{Path.Combine(dir, name)}?create=1&size=256M";

    private static async Task<string> HashAsync(StrataCli cli) =>
        (await cli.OkAsync("image", "read", "tank", "c", "a", "--offset", "0", "--length", "4194304")).Trim();

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task AddTargetThenExtend_ThroughTheDaemon_PoolOnThreeTargetsAcrossARestart()
    {
        string dir = Bin.NewTempDir("targets");
        var engine = await EngineProcess.StartAsync(dir);
        try
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "tank", "--size", "64M", "--rf", "2");
            await cli.OkAsync("cont", "create", "tank", "c");
            await cli.OkAsync("image", "create", "tank", "c", "a", "--size", "4M");
            await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "77", "--length", "4194304");
            string hash = await HashAsync(cli);

            string uri = TargetUri(dir, "extra.img");
            StringAssert.Contains(await cli.OkAsync("storage", "add-target", uri), "Target 2 added");
            StringAssert.Contains(await cli.FailsAsync(6, "storage", "add-target", uri), "already one of the engine's targets");
            var dry = await cli.OkAsync("pool", "extend", "tank", "--dry-run");
            StringAssert.Contains(dry, "would grow from 2 to 3 targets");
            StringAssert.Contains(dry, "nothing was changed");
            Assert.AreEqual(2, (await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank")).Targets.Count);

            var waited = await cli.OkAsync("pool", "extend", "tank", "--wait");
            StringAssert.Contains(waited, "grows from 2 to 3 targets");
            StringAssert.Contains(waited, "extend completed: ", "--wait shows the job's last state (redirected output: one line per change)");
            var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
            Assert.AreEqual(3, q.Targets.Count);
            Assert.AreEqual("completed", q.Job?.State, q.Job?.Reason);
            Assert.IsTrue(q.Targets[2].UsedBytes > 0, "chunks moved to the new target");
            StringAssert.Contains(await cli.OkAsync("pool", "query", "tank"), "Job: extend completed");
            Assert.AreEqual(hash, await HashAsync(cli));
            StringAssert.Contains(await cli.FailsAsync(2, "pool", "extend", "tank"), "already is on all 3 target(s)");

            await engine.DisposeAsync();
            engine = await EngineProcess.StartAsync(dir);
            cli = new StrataCli(engine.Socket);
            Assert.AreEqual(3, (await cli.JsonAsync<StorageInfo>("storage", "query")).Targets.Count, "the added target is opened at start");
            Assert.AreEqual(3, (await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank")).Targets.Count);
            Assert.AreEqual(hash, await HashAsync(cli));
        }
        finally
        {
            await engine.DisposeAsync();
        }
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task AddTarget_AnotherEnginesTargetOrTooSmall_RefusedOneLineNothingChanged()
    {
        string other = Bin.NewTempDir("targets-other");
        var second = await EngineProcess.StartAsync(other);
        await second.DisposeAsync();
        string dir = Bin.NewTempDir("targets-bad");
        await using var engine = await EngineProcess.StartAsync(dir);
        var cli = new StrataCli(engine.Socket);
        string foreign = Path.Combine(other, "target0.img");
        byte[] before = Head(foreign);
        StringAssert.Contains(await cli.FailsAsync(6, "storage", "add-target", $"file:{foreign}"), "of another engine");
        CollectionAssert.AreEqual(before, Head(foreign), "another engine's target (its superblock) is not touched");
        StringAssert.Contains(await cli.FailsAsync(2, "storage", "add-target", $"file:{Path.Combine(dir, "tiny.img")}?create=1&size=1M"),
            "a target of this engine needs at least");
        Assert.AreEqual(2, (await cli.JsonAsync<StorageInfo>("storage", "query")).Targets.Count);
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task ExtendAndUpgrade_EachRefusedWhileTheOtherRuns_MessageNamesTheJob()
    {
        string dir = Bin.NewTempDir("targets-excl");
        // The upgrade job is held before its first step until the engine stops.
        await using var engine = await EngineProcess.StartAsync(dir, "--upgrade-hold-at-step", "1");
        var cli = new StrataCli(engine.Socket);
        foreach (var pool in new[] { "ext", "upg" })
        {
            await cli.OkAsync("pool", "create", pool, "--size", "64M", "--layout", "1");
            await cli.OkAsync("cont", "create", pool, "c");
            await cli.OkAsync("image", "create", pool, "c", "a", "--size", "2M");
            await cli.OkAsync("image", "write", pool, "c", "a", "--offset", "0", "--pattern", "5", "--length", "2097152");
        }
        await cli.OkAsync("storage", "add-target", TargetUri(dir, "extra.img"));

        // An extension throttled to one chunk a second is still running when the upgrade is asked for.
        await cli.OkAsync("pool", "set-prop", "ext", "migrate_rate", "64K");
        await cli.OkAsync("pool", "extend", "ext");
        StringAssert.Contains(await cli.FailsAsync(6, "pool", "upgrade", "ext"), "has extension in progress");
        StringAssert.Contains(await cli.FailsAsync(6, "pool", "extend", "ext"), "is running extend");

        await cli.OkAsync("pool", "upgrade", "upg");
        var e = await cli.FailsAsync(6, "pool", "extend", "upg");
        StringAssert.Contains(e, "is upgrading (1 -> ");
        StringAssert.Contains(e, "extension cannot start");
        Assert.AreEqual(2, (await cli.JsonAsync<PoolQueryDto>("pool", "query", "upg")).Targets.Count, "the refused extension changed nothing");
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task ExcludeTarget_Rf2PoolThroughTheDaemon_RebuildsRefusesTheLastCopyAndPersists()
    {
        string dir = Bin.NewTempDir("targets-exclude");
        var engine = await EngineProcess.StartAsync(dir);
        try
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("storage", "add-target", TargetUri(dir, "extra.img"));
            await cli.OkAsync("pool", "create", "tank", "--size", "96M", "--rf", "2", "--layout", "1");
            await cli.OkAsync("cont", "create", "tank", "c");
            await cli.OkAsync("image", "create", "tank", "c", "a", "--size", "4M");
            await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "31", "--length", "4194304");
            string hash = await HashAsync(cli);

            // The rebuild is held by the throttle while the refusals are checked.
            await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "1");
            StringAssert.Contains(await cli.OkAsync("storage", "exclude-target", "0"), "Pool tank: target 0 excluded; rebuilding, excluded target(s) 0:");
            var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
            Assert.AreEqual("rebuilding", q.Redundancy!.Health);
            Assert.IsTrue(q.Redundancy.BytesAtOneCopy > 0);
            StringAssert.Contains(await cli.OkAsync("pool", "query", "tank"), "Redundancy: rebuilding, excluded target(s) 0");
            Assert.AreEqual(hash, await HashAsync(cli), "every chunk is served from the surviving replica");
            StringAssert.Contains(await cli.FailsAsync(2, "storage", "exclude-target", "1"), "with no copy");
            StringAssert.Contains(await cli.FailsAsync(6, "pool", "upgrade", "tank"), "has rebuild in progress");
            StringAssert.Contains(await cli.FailsAsync(2, "storage", "exclude-target", "0"), "already excluded");
            StringAssert.Contains(await cli.FailsAsync(5, "storage", "exclude-target", "7"), "target 7 does not exist");

            await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "0");
            for (var deadline = DateTime.UtcNow.AddSeconds(120); q.Job?.State == "running" && DateTime.UtcNow < deadline;)
                q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
            Assert.AreEqual("completed", q.Job?.State, q.Job?.Reason);
            Assert.AreEqual("ok", q.Redundancy!.Health);
            Assert.AreEqual(0, q.Targets[0].UsedBytes, "nothing is left on the excluded target");
            Assert.AreEqual(hash, await HashAsync(cli));

            await engine.DisposeAsync();
            engine = await EngineProcess.StartAsync(dir);
            cli = new StrataCli(engine.Socket);
            q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
            CollectionAssert.AreEqual(new[] { 0 }, q.Redundancy!.ExcludedTargets.ToArray(), "the exclusion is durable");
            Assert.AreEqual(hash, await HashAsync(cli));
        }
        finally
        {
            await engine.DisposeAsync();
        }
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task ReintegrateTarget_ThroughTheDaemon_ValidReplicasKeptChunksMovedBackRefusals()
    {
        string dir = Bin.NewTempDir("targets-reint");
        await using var engine = await EngineProcess.StartAsync(dir);
        var cli = new StrataCli(engine.Socket);
        await cli.OkAsync("storage", "add-target", TargetUri(dir, "extra.img"));
        await cli.OkAsync("pool", "create", "tank", "--size", "96M", "--rf", "2", "--layout", "1");
        await cli.OkAsync("cont", "create", "tank", "c");
        await cli.OkAsync("image", "create", "tank", "c", "a", "--size", "4M");
        await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "31", "--length", "4194304");

        // The rebuild is held by the throttle; half the image is rewritten while target 0 is out.
        await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "1");
        await cli.OkAsync("storage", "exclude-target", "0");
        await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "32", "--length", "2097152");
        string hash = await HashAsync(cli);
        long onZero = (await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank")).Targets[0].UsedBytes;
        Assert.IsTrue(onZero > 0, "the replicas of the chunks not rewritten are still mapped on target 0");

        var r = (await cli.JsonAsync<List<PoolReintegrationDto>>("storage", "reintegrate-target", "0")).Single();
        Assert.AreEqual("tank", r.Pool);
        Assert.IsTrue(r.Valid > 0 && r.Valid == r.Replicas, $"{r.Valid} of {r.Replicas} verified");
        Assert.AreEqual(0, r.Invalid);
        Assert.IsTrue(r.JobStarted);
        var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        Assert.AreEqual("reintegrating", q.Redundancy!.Health);
        Assert.AreEqual(0, q.Redundancy.ExcludedTargets.Count);
        StringAssert.Contains(await cli.OkAsync("pool", "query", "tank"), "Job: reintegrate running");
        Assert.AreEqual(0, q.Reintegration!.Target);
        Assert.AreEqual("moving", q.Reintegration.State);
        Assert.AreEqual(r.Replicas, q.Reintegration.ReplicasChecked, "the check read every replica on the target");
        Assert.AreEqual(r.Replicas, q.Reintegration.ReplicasTotal);
        Assert.AreEqual(onZero, q.Reintegration.BytesTotal, "the replicas checked are what the target held");
        StringAssert.Contains(await cli.OkAsync("pool", "query", "tank"), $"Reintegration: target 0 moving: {r.Replicas} of {r.Replicas} replica(s) (");
        StringAssert.Contains(await cli.FailsAsync(6, "pool", "upgrade", "tank"), "has reintegration in progress");
        Assert.AreEqual(hash, await HashAsync(cli), "the kept replicas serve again, nothing stale");
        StringAssert.Contains(await cli.FailsAsync(2, "storage", "reintegrate-target", "0"), "target 0 is not excluded from any open pool; nothing to reintegrate");
        StringAssert.Contains(await cli.FailsAsync(5, "storage", "reintegrate-target", "7"), "target 7 does not exist");

        await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "0");
        for (var deadline = DateTime.UtcNow.AddSeconds(120); q.Job?.State == "running" && DateTime.UtcNow < deadline;)
            q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        Assert.AreEqual("completed", q.Job?.State, q.Job?.Reason);
        Assert.AreEqual("ok", q.Redundancy!.Health);
        Assert.IsTrue(q.Targets[0].UsedBytes > onZero, "chunks moved back onto target 0");
        Assert.AreEqual("completed", q.Reintegration!.State);
        Assert.AreEqual(hash, await HashAsync(cli));
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task RfChange_ThroughTheDaemon_JobGivesEveryChunkTheCopiesRfNeverOverstates()
    {
        string dir = Bin.NewTempDir("targets-rf");
        await using var engine = await EngineProcess.StartAsync(dir);
        var cli = new StrataCli(engine.Socket);
        await cli.OkAsync("pool", "create", "tank", "--size", "64M", "--rf", "1", "--layout", "1");
        await cli.OkAsync("cont", "create", "tank", "c");
        await cli.OkAsync("image", "create", "tank", "c", "a", "--size", "4M");
        await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "41", "--length", "4194304");
        string hash = await HashAsync(cli);
        long used = (await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank")).UsedBytes;

        // rf 1 -> 2, held by the throttle: rf says 1 until every chunk has its second copy.
        await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "1");
        var props = await cli.JsonAsync<List<PropertyDto>>("pool", "set-prop", "tank", "rf", "2");
        Assert.AreEqual("1", props.Single(p => p.Name == "rf").Value);
        Assert.AreEqual("2", (await cli.JsonAsync<List<PropertyDto>>("pool", "get-prop", "tank")).Single(p => p.Name == "rf_next").Value);
        var q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        Assert.AreEqual(1, q.Rf);
        Assert.AreEqual("replicate", q.Job?.Kind);
        CollectionAssert.AreEqual(new[] { "replication" }, q.Running!.ToArray(), "GET /v1/pools/P shows the running operation");
        string text = await cli.OkAsync("pool", "query", "tank");
        StringAssert.Contains(text, "Running: replication");
        StringAssert.Contains(text, "Job: replicate running");
        StringAssert.Contains(await cli.FailsAsync(6, "pool", "upgrade", "tank"), "has replication in progress");
        StringAssert.Contains(await cli.FailsAsync(6, "pool", "set-prop", "tank", "rf", "1"), "is running replicate");

        await cli.OkAsync("pool", "set-prop", "tank", "migrate_rate", "0");
        for (var deadline = DateTime.UtcNow.AddSeconds(120); q.Job?.State == "running" && DateTime.UtcNow < deadline;)
            q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        Assert.AreEqual("completed", q.Job?.State, q.Job?.Reason);
        Assert.AreEqual(2, q.Rf);
        Assert.AreEqual(2 * used, q.UsedBytes, "every chunk has two copies");
        Assert.AreEqual(hash, await HashAsync(cli));

        // rf 2 -> 1: true at once; the job frees the second copies.
        props = await cli.JsonAsync<List<PropertyDto>>("pool", "set-prop", "tank", "rf", "1");
        Assert.AreEqual("1", props.Single(p => p.Name == "rf").Value);
        q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        for (var deadline = DateTime.UtcNow.AddSeconds(120); q.Job?.State == "running" && DateTime.UtcNow < deadline;)
            q = await cli.JsonAsync<PoolQueryDto>("pool", "query", "tank");
        Assert.AreEqual("completed", q.Job?.State, q.Job?.Reason);
        Assert.AreEqual(used, q.UsedBytes, "the second copies are free");
        Assert.AreEqual(hash, await HashAsync(cli));
    }

    /// <summary>The first MiB of a (4 GiB sparse) target file: its superblock copies.</summary>
    private static byte[] Head(string path)
    {
        using var f = File.OpenRead(path);
        var b = new byte[1 << 20];
        f.ReadExactly(b);
        return b;
    }
}
