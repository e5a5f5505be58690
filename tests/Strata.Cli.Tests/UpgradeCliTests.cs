using System.Security.Cryptography;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>
/// Pool upgrade as an operator meets it: the real engine process and the strata CLI, with
/// kill -9 and clean stops in the middle of a job, and the same binary playing the older
/// release (hidden --max-layout 1) for the downgrade cases.
/// </summary>
[TestClass]
public sealed class UpgradeCliTests
{
    private static async Task<(EngineProcess Engine, StrataCli Cli, string Dir)> StartAsync(string tag, params string[] extra)
    {
        string dir = Bin.NewTempDir(tag);
        var e = await EngineProcess.StartAsync(dir, extra);
        return (e, new StrataCli(e.Socket), dir);
    }

    /// <summary>A layout-1 pool with a container, two images and data; returns the images' SHA-256 as `image read` prints them.</summary>
    private static async Task<string[]> Layout1PoolAsync(StrataCli cli)
    {
        await cli.OkAsync("pool", "create", "tank", "--size", "64M", "--rf", "2", "--layout", "1");
        await cli.OkAsync("cont", "create", "tank", "c");
        await cli.OkAsync("image", "create", "tank", "c", "a", "--size", "1M");
        await cli.OkAsync("image", "create", "tank", "c", "b", "--size", "300K");
        await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "4097", "--pattern", "171", "--length", "200000");
        await cli.OkAsync("image", "write", "tank", "c", "b", "--offset", "0", "--pattern", "7", "--length", "307200");
        return await HashesAsync(cli);
    }

    private static async Task<string[]> HashesAsync(StrataCli cli) =>
    [
        (await cli.OkAsync("image", "read", "tank", "c", "a", "--offset", "0", "--length", "1048576")).Trim(),
        (await cli.OkAsync("image", "read", "tank", "c", "b", "--offset", "0", "--length", "307200")).Trim(),
    ];

    private static async Task<Dictionary<string, string>> PropsAsync(StrataCli cli) =>
        (await cli.JsonAsync<List<PropertyDto>>("pool", "get-prop", "tank")).ToDictionary(p => p.Name, p => p.Value);

    private static async Task<string> WaitForStatusAsync(StrataCli cli, Func<string, bool> done) =>
        (await WaitForPropsAsync(cli, p => done(p["upgrade_status"])))["upgrade_status"];

    /// <summary>Polls the pool's properties (each poll is a CLI process) until they satisfy done, for up to 60 s.</summary>
    private static async Task<Dictionary<string, string>> WaitForPropsAsync(StrataCli cli, Func<Dictionary<string, string>, bool> done)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        var p = new Dictionary<string, string>();
        while (DateTime.UtcNow < deadline)
        {
            p = await PropsAsync(cli);
            if (done(p))
                return p;
        }
        throw new AssertFailedException($"upgrade_status still '{p.GetValueOrDefault("upgrade_status")}' ({p.GetValueOrDefault("upgrade_progress")}) after 60 s");
    }

    private static string TargetsSha(string dir) =>
        string.Join(",", Directory.GetFiles(dir, "target*.img").Order(StringComparer.Ordinal)
            .Select(f =>
            {
                using var s = File.OpenRead(f);
                return Convert.ToHexString(SHA256.HashData(s));
            }));

    [TestMethod]
    public async Task Upgrade_EndToEnd_ListDryRunGatingWaitAndProperties()
    {
        var (engine, cli, dir) = await StartAsync("upg");
        await using (engine)
        {
            var hashes = await Layout1PoolAsync(cli);
            StringAssert.Matches(await cli.OkAsync("pool", "list"), new System.Text.RegularExpressions.Regex(@"tank .* 1->6\r?$", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Contains(await cli.OkAsync("pool", "query", "tank"), "Pool layout out of date (1 < 6) -- see 'strata pool upgrade' for details.");

            string list = await cli.OkAsync("pool", "upgrade", "--list");
            StringAssert.Contains(list, "This engine supports layout versions 1..6");
            StringAssert.Matches(list, new System.Text.RegularExpressions.Regex(@"^2 +yes +container_compression +incompat +metadata_only", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Matches(list, new System.Text.RegularExpressions.Regex(@"^3 +yes +block_checksums +incompat +data_scan", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Matches(list, new System.Text.RegularExpressions.Regex(@"^4 +yes +placement_v2 +incompat +data_movement", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Matches(list, new System.Text.RegularExpressions.Regex(@"^5 +yes +wal_v2 +incompat +log_format", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Matches(list, new System.Text.RegularExpressions.Regex(@"^6 +yes +deferred_writes +incompat +metadata_only", System.Text.RegularExpressions.RegexOptions.Multiline));
            StringAssert.Contains(list, "strata-1.2 (layouts 1..3)");
            StringAssert.Contains(list, "strata-1.4 (layouts 1..5)");
            StringAssert.Contains(list, "strata-1.5 (layouts 1..6)");
            await cli.FailsAsync(2, "pool", "upgrade", "tank", "--list");

            // Gating before the upgrade, with the message the issue names.
            Assert.AreEqual("strata: container property 'compression' needs pool layout 2 (pool is at 1); run 'strata pool upgrade'",
                await cli.FailsAsync(2, "cont", "set-prop", "tank", "c", "compression", "on"));

            string dry = await cli.OkAsync("pool", "upgrade", "tank", "--dry-run");
            StringAssert.Contains(dry, "Dry run: pool tank, layout version 1 -> 6; nothing was changed");
            StringAssert.Contains(dry, "pool_props_v2");
            StringAssert.Contains(dry, "block_checksums");
            StringAssert.Contains(dry, "placement_v2");
            StringAssert.Contains(dry, "wal_v2");
            StringAssert.Contains(dry, "deferred_writes");
            StringAssert.Contains(dry, "[ok] no other upgrade");
            Assert.AreEqual("not started", (await PropsAsync(cli))["upgrade_status"]);
            StringAssert.Contains(await cli.FailsAsync(2, "pool", "upgrade", "tank", "--to", "7"), "layout version 7");

            string waited = await cli.OkAsync("pool", "upgrade", "tank", "--wait");
            StringAssert.Contains(waited, "Upgrading tank from layout version 1 to 6 (job 1)");
            StringAssert.Contains(waited, "Upgrade completed; pool tank is at layout version 6 (longest pause");
            var props = await PropsAsync(cli);
            Assert.AreEqual(("6", "completed", "6", "off", "lazy"), (props["layout_version"], props["upgrade_status"], props["upgrade_target"], props["scrub"], props["reclaim"]));
            StringAssert.StartsWith(props["upgrade_progress"], "6/6 actions");
            CollectionAssert.AreEqual(hashes, await HashesAsync(cli));
            StringAssert.Matches(await cli.OkAsync("pool", "list"), new System.Text.RegularExpressions.Regex(@"tank .* None\r?$", System.Text.RegularExpressions.RegexOptions.Multiline));
            Assert.DoesNotContain("out of date", await cli.OkAsync("pool", "query", "tank"));
            StringAssert.Contains(await cli.FailsAsync(2, "pool", "upgrade", "tank"), "already at layout version 6");

            // The old container stays without the feature; a new one has it.
            StringAssert.Contains(await cli.FailsAsync(2, "cont", "set-prop", "tank", "c", "compression", "on"), "was created at pool layout 1");
            await cli.OkAsync("cont", "create", "tank", "c2");
            await cli.OkAsync("cont", "set-prop", "tank", "c2", "compression", "on");

            string events = await cli.OkAsync("system", "events");
            StringAssert.Contains(events, "pool_upgrade_started");
            StringAssert.Contains(events, "pool_upgrade_completed");
        }
        Directory.Delete(dir, recursive: true);
    }

    [TestMethod]
    public async Task KilledOrStoppedMidJob_ResumesAfterRestart_WithDataIntact()
    {
        // The 1 -> 2 job has two steps: the quiesced commit of both actions, then the end record.
        // The engine holds the job before one of them, so the kill lands inside the job however
        // slow the machine is; the restart runs without the hold and must finish the job.
        foreach (var (how, step) in new[] { ("kill", 1), ("kill", 2), ("stop", 1), ("stop", 2) })
        {
            var (engine, cli, dir) = await StartAsync("upgkill", "--upgrade-hold-at-step", step.ToString());
            string[] hashes;
            await using (engine)
            {
                hashes = await Layout1PoolAsync(cli);
                StringAssert.Contains(await cli.OkAsync("pool", "upgrade", "tank", "--to", "2"), "Upgrading tank from layout version 1 to 2");
                // Before step 2 the quiesced commit is logged: the progress reads 2/2 actions.
                string expected = step == 1 ? "0/2 actions" : "2/2 actions";
                var props = await WaitForPropsAsync(cli, p => p["upgrade_progress"].StartsWith(expected, StringComparison.Ordinal));
                Assert.AreEqual("in progress", props["upgrade_status"], $"{how} {step}");
                StringAssert.Contains(await cli.OkAsync("pool", "upgrade", "tank", "--status"), "upgrade job 1 to layout 2: in progress");
                if (how == "kill")
                {
                    Bin.Signal(engine.Pid, 9);
                    await engine.WaitForExitAsync(TimeSpan.FromSeconds(20));
                }
                else
                {
                    await cli.OkAsync("system", "stop");
                }
            }
            var (again, cli2, _) = await RestartAsync(dir);
            await using (again)
            {
                // --wait attaches to the resumed job (running, or finished by now) instead of starting one.
                string attached = await cli2.OkAsync("pool", "upgrade", "tank", "--to", "2", "--wait");
                StringAssert.Contains(attached, "Attached to upgrade job 1 of tank (to layout version 2)", $"{how} {step}");
                StringAssert.Contains(attached, "Upgrade completed; pool tank is at layout version 2", $"{how} {step}");
                Assert.AreEqual("completed", await WaitForStatusAsync(cli2, s => s != "in progress"), $"{how} {step}");
                Assert.AreEqual("2", (await PropsAsync(cli2))["layout_version"]);
                CollectionAssert.AreEqual(hashes, await HashesAsync(cli2), $"{how} {step}");
                string events = await cli2.OkAsync("system", "events");
                StringAssert.Contains(events, "pool_upgrade_resumed", $"{how} {step}");
                StringAssert.Contains(events, "pool_upgrade_completed", $"{how} {step}");
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public async Task Upgrade_StoppedAfterItsQuiescedCommit_ResumedRunSaysItPausedNothing()
    {
        // The step delay holds the job before its quiesced commit and again between that commit and its end
        // record: 12 s there leave room for the stop on a loaded machine.
        var (engine, cli, dir) = await StartAsync("upgpause", "--upgrade-step-delay-ms", "12000");
        await using (engine)
        {
            await cli.OkAsync("pool", "create", "tank", "--size", "64M", "--layout", "1");
            StringAssert.Contains(await cli.OkAsync("pool", "upgrade", "tank", "--to", "2"), "Upgrading tank from layout version 1 to 2");
            Dictionary<string, string> props = [];
            for (var deadline = DateTime.UtcNow.AddSeconds(60); DateTime.UtcNow < deadline; await Task.Delay(100))
            {
                props = await PropsAsync(cli);
                if (props["upgrade_progress"].StartsWith("2/2 actions", StringComparison.Ordinal) || props["upgrade_status"] != "in progress")
                    break;
            }
            Assert.AreEqual("in progress", props["upgrade_status"], "stopped after the commit, before the end record");
            await cli.OkAsync("system", "stop");
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }
        var (again, cli2, _) = await RestartAsync(dir);
        await using (again)
        {
            Assert.AreEqual("completed", await WaitForStatusAsync(cli2, s => s != "in progress"));
            string events = await cli2.OkAsync("system", "events", "--json");
            var all = events.Split('\n').Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();
            StringAssert.EndsWith(all.Single(e => e.Id == "pool_upgrade_resumed").Msg, "resumed at action 2", events);
            var completed = all.Single(e => e.Id == "pool_upgrade_completed");
            StringAssert.EndsWith(completed.Msg, "(job 1); no pause in this run (the quiesced commit was done before a restart)", events);
        }
        Directory.Delete(dir, recursive: true);
    }

    private static async Task<(EngineProcess, StrataCli, string)> RestartAsync(string dir, params string[] extra)
    {
        var e = await EngineProcess.StartAsync(dir, extra);
        return (e, new StrataCli(e.Socket), dir);
    }

    [TestMethod]
    public async Task OlderRelease_OpensPoolNotUpgraded_RefusesUpgradedOneWithRasAndUnchangedBytes()
    {
        // Small targets (a config file), so hashing them stays cheap.
        string dir = Bin.NewTempDir("upgold");
        string cfg = Path.Combine(dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            targets:
              - file:{dir}/target0.img?create=1&size=192M
              - file:{dir}/target1.img?create=1&size=192M
            """);
        var engine = await EngineProcess.StartAsync(dir, "--config", cfg);
        var cli = new StrataCli(engine.Socket);
        string[] hashes;
        await using (engine)
        {
            hashes = await Layout1PoolAsync(cli);
            await cli.OkAsync("system", "stop");
        }
        // The older release opens the pool that newer software ran on without upgrading it.
        var (old, oldCli, _) = await RestartAsync(dir, "--config", cfg, "--max-layout", "1");
        await using (old)
        {
            var pools = await oldCli.JsonAsync<List<PoolListEntry>>("pool", "list");
            Assert.AreEqual(("ready", 1u, (string?)null), (pools.Single().State, pools.Single().LayoutVersion, pools.Single().UpgradeNeeded));
            CollectionAssert.AreEqual(hashes, await HashesAsync(oldCli));
            StringAssert.Contains(await oldCli.OkAsync("pool", "upgrade", "--list"), "This engine supports layout versions 1..1");
            await oldCli.OkAsync("system", "stop");
        }
        var (newer, newCli, _) = await RestartAsync(dir, "--config", cfg);
        await using (newer)
        {
            StringAssert.Contains(await newCli.OkAsync("pool", "upgrade", "tank", "--wait"), "Upgrade completed");
            await newCli.OkAsync("system", "stop");
        }
        string sha = TargetsSha(dir);
        var (old2, oldCli2, _) = await RestartAsync(dir, "--config", cfg, "--max-layout", "1");
        await using (old2)
        {
            var p = (await oldCli2.JsonAsync<List<PoolListEntry>>("pool", "list")).Single();
            Assert.AreEqual("incompatible layout", p.State);
            string err = await oldCli2.FailsAsync(1, "pool", "query", "tank");
            StringAssert.Contains(err, "incompatible layout version: 6 larger than 1");
            StringAssert.Contains(await oldCli2.OkAsync("system", "events"), "pool_durable_format_incompatible");
            await oldCli2.OkAsync("system", "stop");
        }
        Assert.AreEqual(sha, TargetsSha(dir), "the older release wrote nothing to the targets");
        // The release before deferred writes (strata-1.4) refuses the layout-6 pool, naming the feature.
        var (old4, oldCli4, _) = await RestartAsync(dir, "--config", cfg, "--max-layout", "5");
        await using (old4)
        {
            Assert.AreEqual("incompatible layout", (await oldCli4.JsonAsync<List<PoolListEntry>>("pool", "list")).Single().State);
            string err = await oldCli4.FailsAsync(1, "pool", "query", "tank");
            StringAssert.Contains(err, "incompatible layout version: 6 larger than 5");
            StringAssert.Contains(err, "deferred_writes (layout 6)");
            await oldCli4.OkAsync("system", "stop");
        }
        Assert.AreEqual(sha, TargetsSha(dir), "the layout-5 release wrote nothing to the targets");
        // The release before block checksums (strata-1.1) refuses the layout-6 pool the same way.
        var (old3, oldCli3, _) = await RestartAsync(dir, "--config", cfg, "--max-layout", "2");
        await using (old3)
        {
            Assert.AreEqual("incompatible layout", (await oldCli3.JsonAsync<List<PoolListEntry>>("pool", "list")).Single().State);
            string err = await oldCli3.FailsAsync(1, "pool", "query", "tank");
            StringAssert.Contains(err, "incompatible layout version: 6 larger than 2");
            StringAssert.Contains(err, "block_checksums (layout 3)");
            StringAssert.Contains(await oldCli3.OkAsync("system", "events"), "pool_durable_format_incompatible");
            await oldCli3.OkAsync("system", "stop");
        }
        Assert.AreEqual(sha, TargetsSha(dir), "the layout-2 release wrote nothing to the targets");
        Directory.Delete(dir, recursive: true);
    }

    [TestMethod]
    public async Task SystemPrepare_EmptiesEveryLog_RefusesWrites_CancelReopens()
    {
        var (engine, cli, dir) = await StartAsync("prep");
        await using (engine)
        {
            await Layout1PoolAsync(cli);
            var prepared = await cli.JsonAsync<List<PreparedPoolDto>>("system", "prepare");
            Assert.AreEqual(("tank", 0L, true), (prepared.Single().Pool, prepared.Single().LogBytes, prepared.Single().Prepared));
            string err = await cli.FailsAsync(1, "image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "1", "--length", "10");
            StringAssert.Contains(err, "prepared for a software change");
            await cli.OkAsync("image", "read", "tank", "c", "a", "--offset", "0", "--length", "10");
            StringAssert.Contains(await cli.OkAsync("system", "events"), "system_prepared");
            Assert.AreEqual("prepared", (await cli.JsonAsync<SystemInfo>("system", "query")).State);
            StringAssert.Contains(await cli.FailsAsync(1, "cont", "create", "tank", "c9"), "prepared for a software change");
            var cancelled = await cli.JsonAsync<List<PreparedPoolDto>>("system", "prepare", "--cancel");
            Assert.IsFalse(cancelled.Single().Prepared);
            Assert.AreEqual("running", (await cli.JsonAsync<SystemInfo>("system", "query")).State);
            await cli.OkAsync("image", "write", "tank", "c", "a", "--offset", "0", "--pattern", "1", "--length", "10");

        }
        Directory.Delete(dir, recursive: true);
    }
}
