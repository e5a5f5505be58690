using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>
/// Every command's normal path and main errors against one engine started from a YAML
/// configuration (small sparse targets, a 2 s header timeout, /metrics on a loopback port).
/// </summary>
[TestClass]
public sealed class CommandTests
{
    private static string _dir = "";
    private static EngineProcess _engine = null!;
    private static StrataCli _cli = null!;
    private static int _metricsPort;

    [ClassInitialize]
    public static async Task StartAsync(TestContext _)
    {
        _dir = Bin.NewTempDir("cmd");
        _metricsPort = FreePort();
        string data = Path.Combine(_dir, "data");
        File.WriteAllText(Path.Combine(_dir, "strata.yaml"), $"""
            # a test configuration: two 1 GiB sparse targets
            targets:
              - file:{data}/t0.img?create=1&size=1G
              - file:{data}/t1.img?create=1&size=1G
            control:
              header_timeout_seconds: 2
              max_connections: 16
            ras:
              max_bytes: 65536
              keep: 2
            metrics:
              prometheus_port: {_metricsPort}
            """);
        _engine = await EngineProcess.StartAsync(data, "--config", Path.Combine(_dir, "strata.yaml"));
        _cli = new StrataCli(_engine.Socket);
    }

    [ClassCleanup]
    public static async Task StopAsync()
    {
        await _engine.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    [TestMethod]
    public async Task SystemQuery_JsonAndTable_ShowTheEngine()
    {
        var s = await _cli.JsonAsync<SystemInfo>("system", "query");
        Assert.AreEqual(_engine.Pid, s.Pid);
        Assert.AreEqual(Api.Version, s.ApiVersion);
        Assert.AreEqual(2, s.Targets);
        Assert.AreEqual("running", s.State);
        string table = await _cli.OkAsync("system", "query");
        Assert.Contains("running", table);
        Assert.Contains(_engine.Pid.ToString(), table);
    }

    [TestMethod]
    public async Task StorageQuery_ListsConfiguredTargets()
    {
        var s = await _cli.JsonAsync<StorageInfo>("storage", "query");
        Assert.HasCount(2, s.Targets);
        Assert.AreEqual(1L << 30, s.Targets[0].CapacityBytes);
        Assert.AreEqual("ok", s.Targets[1].Health);
        Assert.Contains("t1.img", await _cli.OkAsync("storage", "query"));
    }

    [TestMethod]
    public async Task Pool_Lifecycle_CreateListQueryPropsDestroy()
    {
        var created = await _cli.JsonAsync<PoolQueryDto>("pool", "create", "lifecycle", "--size", "128M", "--rf", "2");
        Assert.AreEqual("lifecycle", created.Label);
        Assert.AreEqual(2, created.Rf);

        var list = await _cli.JsonAsync<List<PoolListEntry>>("pool", "list");
        Assert.IsTrue(list.Any(p => p.Label == "lifecycle" && p.LayoutVersion >= 1), string.Join(",", list));
        await _cli.OkAsync("cont", "create", "lifecycle/c");
        await _cli.OkAsync("image", "create", "lifecycle/c/i", "--size", "8M");
        await _cli.OkAsync("image", "write", "lifecycle/c/i", "--pattern", "1", "--length", "1M");
        var q = await _cli.JsonAsync<PoolQueryDto>("pool", "query", "lifecycle");
        Assert.AreEqual(created.Id, q.Id);
        Assert.HasCount(2, q.Targets);
        Assert.IsGreaterThan(0L, q.FreeBytes);
        StringAssert.Contains(await _cli.OkAsync("pool", "query", "lifecycle"), "Layout version: 6 (engine supports up to 6)");

        // zpool list's columns; CAP is the used share of SIZE.
        string table = await _cli.OkAsync("pool", "list");
        StringAssert.Matches(table, new System.Text.RegularExpressions.Regex(@"^NAME +SIZE +USED +FREE +CAP +RF +STATE +LAYOUT +UPGRADE\r?$", System.Text.RegularExpressions.RegexOptions.Multiline));
        long cap = q.UsedBytes * 100 / q.TotalBytes;
        // A new pool gets the newest layout this engine knows: "None" in the UPGRADE column, null in JSON.
        StringAssert.Matches(table, new System.Text.RegularExpressions.Regex(
            $@"^lifecycle +128\.0 MiB +\S+ MiB +\S+ MiB +{cap}% +2 +ready +6 +None\r?$", System.Text.RegularExpressions.RegexOptions.Multiline));
        var entry = (await _cli.JsonAsync<List<PoolListEntry>>("pool", "list")).Single(p => p.Label == "lifecycle");
        Assert.IsNull(entry.UpgradeNeeded);
        // One naming scheme: the same concept has the same JSON name (and value) in list and query.
        Assert.AreEqual((q.TotalBytes, q.UsedBytes, q.FreeBytes, q.Rf, q.State), (entry.TotalBytes, entry.UsedBytes, entry.FreeBytes, entry.Rf, entry.State));
        Assert.IsGreaterThanOrEqualTo(1L << 20, q.UsedBytes);
        using (var listJson = JsonDocument.Parse(await _cli.OkAsync("pool", "list", "--json")))
        using (var queryJson = JsonDocument.Parse(await _cli.OkAsync("pool", "query", "lifecycle", "--json")))
        {
            var l = listJson.RootElement.EnumerateArray().Single(e => e.GetProperty("label").GetString() == "lifecycle");
            foreach (var name in new[] { "label", "id", "layoutVersion", "supportedLayoutVersion", "totalBytes", "usedBytes", "freeBytes", "rf", "state" })
                Assert.AreEqual(queryJson.RootElement.GetProperty(name).GetRawText(), l.GetProperty(name).GetRawText(), name);
        }

        // Every property with its source, as zfs get shows SOURCE.
        var props = (await _cli.JsonAsync<List<PropertyDto>>("pool", "get-prop", "lifecycle")).ToDictionary(p => p.Name, p => (p.Value, p.Source));
        Assert.AreEqual(("2", "set"), props["rf"]);
        Assert.AreEqual(("lifecycle", "set"), props["label"]);
        Assert.AreEqual(("off", "default"), props["compatibility"]);
        Assert.AreEqual(("off", "default"), props["scrub"], "a layout-2 pool lists scrub with its default before it is set");
        Assert.AreEqual(("lazy", "default"), props["reclaim"]);
        Assert.AreEqual(("6", "-"), props["layout_version"]);
        await _cli.OkAsync("pool", "set-prop", "lifecycle", "scrub", "lazy");
        StringAssert.Matches(await _cli.OkAsync("pool", "get-prop", "lifecycle"), new System.Text.RegularExpressions.Regex(@"^scrub +lazy +set\r?$", System.Text.RegularExpressions.RegexOptions.Multiline));
        var rf = await _cli.JsonAsync<List<PropertyDto>>("pool", "get-prop", "lifecycle", "rf");
        Assert.AreEqual(("2", "set"), (rf.Single().Value, rf.Single().Source));
        await _cli.OkAsync("pool", "set-prop", "lifecycle", "label", "renamed");
        Assert.AreEqual("renamed", (await _cli.JsonAsync<PoolQueryDto>("pool", "query", "renamed")).Label);

        StringAssert.Contains(await _cli.OkAsync("pool", "destroy", "renamed", "--force"), "Pool destroyed: renamed");
        Assert.IsFalse((await _cli.JsonAsync<List<PoolListEntry>>("pool", "list")).Any(p => p.Label is "renamed" or "lifecycle"));
    }

    [TestMethod]
    public async Task Pool_Errors_HaveTheirExitCodes()
    {
        await _cli.OkAsync("pool", "create", "dup", "--size", "64M");
        StringAssert.Contains(await _cli.FailsAsync(6, "pool", "create", "dup", "--size", "64M"), "already exists");
        StringAssert.Contains(await _cli.FailsAsync(5, "pool", "query", "no-such-pool"), "no pool 'no-such-pool'");
        await _cli.FailsAsync(5, "pool", "destroy", "no-such-pool");
        await _cli.FailsAsync(5, "pool", "get-prop", "dup", "no_such_prop");
        StringAssert.Contains(await _cli.FailsAsync(2, "pool", "create", "bad/label", "--size", "64M"), "label");
        StringAssert.Contains(await _cli.FailsAsync(2, "pool", "create", "x", "--size", "lots"), "is not a size");
        await _cli.FailsAsync(2, "pool", "create", "x", "--size", "64M", "--rf", "3");
        await _cli.FailsAsync(2, "pool", "create", "missing-size");
        await _cli.FailsAsync(1, "pool", "create", "huge", "--size", "100G");
        // "Not given" is the newest layout; 0 and versions past the newest are refused.
        Assert.AreEqual("strata: layout version 0 does not exist (this engine supports 1..6); leave it out for the newest",
            await _cli.FailsAsync(2, "pool", "create", "l0", "--size", "64M", "--layout", "0"));
        Assert.AreEqual("strata: layout version 99 is not supported by this engine (1..6)",
            await _cli.FailsAsync(2, "pool", "create", "l99", "--size", "64M", "--layout", "99"));
        Assert.AreEqual("strata: pool size 100 bytes is out of range: a pool holds 256 KiB to 1 PiB",
            await _cli.FailsAsync(2, "pool", "create", "tiny", "--size", "100"));
        Assert.IsFalse((await _cli.JsonAsync<List<PoolListEntry>>("pool", "list")).Any(p => p.Label is "l0" or "l99" or "tiny"));
        // Nothing attached: destroy needs no --force.
        StringAssert.Contains(await _cli.OkAsync("pool", "destroy", "dup"), "Pool destroyed: dup");
    }

    [TestMethod]
    public async Task Cont_Lifecycle_And_Errors()
    {
        await _cli.OkAsync("pool", "create", "conts", "--size", "64M");
        var c = await _cli.JsonAsync<ContainerDto>("cont", "create", "conts", "c1");
        Assert.AreEqual("c1", c.Label);
        await _cli.FailsAsync(6, "cont", "create", "conts", "c1");
        await _cli.FailsAsync(5, "cont", "create", "no-pool", "c1");
        var list = await _cli.JsonAsync<List<ContainerDto>>("cont", "list", "conts");
        Assert.AreEqual("c1", list.Single().Label);
        StringAssert.Contains(await _cli.OkAsync("cont", "list", "conts"), "c1");
        var all = await _cli.JsonAsync<List<PropertyDto>>("cont", "get-prop", "conts", "c1");
        Assert.IsNotNull(all);
        await _cli.FailsAsync(5, "cont", "get-prop", "conts", "nope");
        var set = await _cli.JsonAsync<List<PropertyDto>>("cont", "set-prop", "conts", "c1", "user.owner", "alice");
        Assert.AreEqual("alice", set.Single().Value);
        Assert.AreEqual("alice", (await _cli.JsonAsync<List<PropertyDto>>("cont", "get-prop", "conts", "c1", "user.owner")).Single().Value);
        StringAssert.Contains(await _cli.OkAsync("cont", "get-prop", "conts", "c1"), "user.owner");
        // A container of a layout-2 pool has `compression`, with its values checked.
        StringAssert.Contains(await _cli.FailsAsync(2, "cont", "set-prop", "conts", "c1", "compression", "lz4"), "takes off, on");
        await _cli.OkAsync("cont", "set-prop", "conts", "c1", "compression", "on");
        await _cli.FailsAsync(5, "cont", "set-prop", "conts", "c1", "no_such", "x");
        await _cli.OkAsync("cont", "set-prop", "conts", "c1", "label", "c2");
        Assert.AreEqual("c2", (await _cli.JsonAsync<List<ContainerDto>>("cont", "list", "conts")).Single().Label);
        const string label = "c2";
        StringAssert.Contains(await _cli.OkAsync("cont", "destroy", "conts", label), "Container destroyed");
        await _cli.FailsAsync(5, "cont", "destroy", "conts", label);
        await _cli.OkAsync("pool", "destroy", "conts", "--force");
    }

    [TestMethod]
    public async Task Image_Lifecycle_WriteReadResizeRemove()
    {
        await _cli.OkAsync("pool", "create", "imgs", "--size", "256M");
        await _cli.OkAsync("cont", "create", "imgs", "c");
        var img = await _cli.JsonAsync<ImageDto>("image", "create", "imgs", "c", "disk", "--size", "32M");
        Assert.AreEqual(32L << 20, img.Size);
        await _cli.FailsAsync(6, "image", "create", "imgs", "c", "disk", "--size", "32M");

        // 2.5 MiB with a seed: more than one 1 MiB request, so the CLI must split it.
        int seed = Environment.TickCount;
        var data = new byte[(5 << 20) / 2];
        new Random(seed).NextBytes(data);
        string src = Path.Combine(_dir, "src.bin"), back = Path.Combine(_dir, "back.bin");
        File.WriteAllBytes(src, data);
        await _cli.OkAsync("image", "write", "imgs", "c", "disk", "--offset", "12345", "--file", src);
        await _cli.OkAsync("image", "read", "imgs", "c", "disk", "--offset", "12345", "--length", data.Length.ToString(), "--out", back);
        CollectionAssert.AreEqual(data, File.ReadAllBytes(back), $"bytes read back differ (seed {seed})");
        await _cli.OkAsync("image", "write", "imgs", "c", "disk", "--pattern", "171", "--length", "4096");
        await _cli.OkAsync("image", "read", "imgs", "c", "disk", "--length", "4096", "--out", back);
        Assert.IsTrue(File.ReadAllBytes(back).All(b => b == 171));

        var info = await _cli.JsonAsync<ImageDto>("image", "info", "imgs", "c", "disk");
        Assert.IsGreaterThan(0L, info.MappedBytes);
        var list = await _cli.JsonAsync<List<ImageDto>>("image", "list", "imgs", "c");
        Assert.AreEqual("disk", list.Single().Label);
        StringAssert.Contains(await _cli.OkAsync("image", "list", "imgs", "c"), "disk");
        var resized = await _cli.JsonAsync<ImageDto>("image", "resize", "imgs", "c", "disk", "--size", "64M");
        Assert.AreEqual(64L << 20, resized.Size);

        StringAssert.Contains(await _cli.FailsAsync(2, "image", "read", "imgs", "c", "disk", "--offset", "64M", "--length", "1"), "past the end");
        await _cli.FailsAsync(5, "image", "info", "imgs", "c", "nope");
        await _cli.FailsAsync(2, "image", "write", "imgs", "c", "disk");
        StringAssert.Contains(await _cli.OkAsync("image", "rm", "imgs", "c", "disk"), "Image removed");
        await _cli.FailsAsync(5, "image", "rm", "imgs", "c", "disk");
        await _cli.OkAsync("pool", "destroy", "imgs", "--force");
    }

    [TestMethod]
    public async Task Specs_SlashFormAcceptedEverywhere_BadSpecsAndPatternsGetOneLine()
    {
        await _cli.OkAsync("pool", "create", "specs", "--size", "64M");
        Assert.AreEqual("c", (await _cli.JsonAsync<ContainerDto>("cont", "create", "specs/c")).Label);
        await _cli.OkAsync("cont", "set-prop", "specs/c", "user.owner", "alice");
        Assert.AreEqual("alice", (await _cli.JsonAsync<List<PropertyDto>>("cont", "get-prop", "specs/c", "user.owner")).Single().Value);
        Assert.AreEqual("alice", (await _cli.JsonAsync<List<PropertyDto>>("cont", "get-prop", "specs", "c", "user.owner")).Single().Value);
        var img = await _cli.JsonAsync<ImageDto>("image", "create", "specs/c/i", "--size", "1M");
        Assert.AreEqual(("specs", "c", "i"), (img.Pool, img.Container, img.Label));
        // --pattern in hex and decimal; read back through both forms.
        await _cli.OkAsync("image", "write", "specs/c/i", "--pattern", "0x5a", "--length", "4096");
        await _cli.OkAsync("image", "write", "specs/c/i", "--offset", "4096", "--pattern", "165", "--length", "4096");
        string back = Path.Combine(_dir, "specs.bin");
        await _cli.OkAsync("image", "read", "specs/c/i", "--length", "8192", "--out", back);
        var bytes = File.ReadAllBytes(back);
        Assert.IsTrue(bytes.Take(4096).All(b => b == 0x5a) && bytes.Skip(4096).All(b => b == 165));
        Assert.AreEqual("i", (await _cli.JsonAsync<List<ImageDto>>("image", "list", "specs/c")).Single().Label);
        Assert.AreEqual(1L << 20, (await _cli.JsonAsync<ImageDto>("image", "info", "specs/c/i")).Size);
        Assert.AreEqual(2L << 20, (await _cli.JsonAsync<ImageDto>("image", "resize", "specs/c/i", "--size", "+1M")).Size);

        Assert.AreEqual("strata: 'specs/c' is not an image spec: it has 2 part(s), an image is POOL/CONT/IMAGE",
            await _cli.FailsAsync(2, "image", "info", "specs/c"));
        Assert.AreEqual("strata: 'specs/c/i/x' is not an image spec: it has 4 part(s), an image is POOL/CONT/IMAGE",
            await _cli.FailsAsync(2, "image", "info", "specs/c/i/x"));
        Assert.AreEqual("strata: 'specs//i' is not an image spec: it has an empty part (POOL/CONT/IMAGE)",
            await _cli.FailsAsync(2, "image", "rm", "specs//i"));
        Assert.AreEqual("strata: 'specs/' is not a container spec: it has an empty part (POOL/CONT)",
            await _cli.FailsAsync(2, "cont", "create", "specs/"));
        Assert.AreEqual("strata: an image is given as POOL/CONT/IMAGE or POOL CONT IMAGE; got 'specs c'",
            await _cli.FailsAsync(2, "image", "info", "specs", "c"));
        Assert.AreEqual("strata: 'c/i' mixes the two forms: give POOL/CONT/IMAGE as one word or POOL CONT IMAGE as separate words",
            await _cli.FailsAsync(2, "image", "info", "specs", "c/i"));
        foreach (var bad in new[] { "256", "0x100", "0xzz", "-1", "x" })
            Assert.AreEqual($"strata: --pattern '{bad}' is not a byte: give 0-255 or 0x00-0xff",
                await _cli.FailsAsync(2, "image", "write", "specs/c/i", "--pattern", bad, "--length", "1"));

        await _cli.OkAsync("image", "rm", "specs/c/i");
        await _cli.OkAsync("cont", "destroy", "specs/c");
        await _cli.OkAsync("pool", "destroy", "specs");
    }

    [TestMethod]
    public async Task Usage_TyposVersionCompletionAndExamples()
    {
        var typo = await _cli.RunAsync("pool", "lst");
        Assert.AreEqual(2, typo.ExitCode, typo.ToString());
        var lines = typo.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.AreEqual("strata: unknown command 'lst' for 'strata pool'; did you mean 'list'?", lines[0]);
        Assert.AreEqual("Commands of 'strata pool':", lines[1]);
        StringAssert.Matches(typo.Stderr, new System.Text.RegularExpressions.Regex(@"^  list +List pools", System.Text.RegularExpressions.RegexOptions.Multiline));
        Assert.AreEqual("strata: unknown option '--sise' for 'strata pool create'; did you mean '--size'?",
            (await _cli.FailsAsync(2, "pool", "create", "x", "--sise", "1G")).Split('\n')[0]);
        Assert.AreEqual("strata: 'strata image' needs a command", (await _cli.FailsAsync(2, "image")).Split('\n')[0]);
        Assert.AreEqual("strata: 'strata pool query' needs POOL", (await _cli.FailsAsync(2, "pool", "query")).Split('\n')[0]);
        Assert.AreEqual("strata: 'strata image info' needs POOL/CONT/IMAGE (or POOL CONT IMAGE)", (await _cli.FailsAsync(2, "image", "info")).Split('\n')[0]);
        // No .NET type name in any parse error.
        foreach (var args in new[] { new[] { "pool", "create", "x", "--size", "1G", "--rf", "abc" }, ["pool", "create", "x", "--size", "1G", "--layout", "-1"],
                                     ["engine", "counters", "--count", "many"], ["completion", "fish"], ["pool", "list", "extra"] })
        {
            var r = await _cli.RunAsync(args);
            Assert.AreEqual(2, r.ExitCode, r.ToString());
            Assert.DoesNotContain("System.", r.Stderr, r.ToString());
            StringAssert.StartsWith(r.Stderr, "strata: ");
        }
        StringAssert.StartsWith(await _cli.FailsAsync(2, "pool", "create", "x", "--size", "1G", "--rf", "abc"), "strata: --rf 'abc' is not a whole number");

        // One version string: the CLI's and the engine's (same build).
        var v = await Proc.RunAsync(Proc.Dotnet(Bin.Cli, ["--version"]));
        Assert.AreEqual(0, v.ExitCode, v.ToString());
        string version = v.Stdout.Trim();
        Assert.AreEqual(version, (await _cli.JsonAsync<SystemInfo>("system", "query")).EngineVersion);

        string bash = await _cli.OkAsync("completion", "bash");
        string script = Path.Combine(_dir, "strata.bash");
        File.WriteAllText(script, bash);
        var check = await Proc.RunAsync(new System.Diagnostics.ProcessStartInfo("bash", ["-n", script]) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true });
        Assert.AreEqual(0, check.ExitCode, check.ToString());
        StringAssert.Contains(bash, "words=\"system storage pool cont image engine completion");
        StringAssert.Contains(bash, "complete -o default -F _strata strata");
        StringAssert.StartsWith(await _cli.OkAsync("completion", "zsh"), "#compdef strata");

        // Every command's help names an example: each group's help lists its commands with theirs.
        var groups = System.Text.RegularExpressions.Regex.Matches(bash, @"^        /(\w+)\) words=""([^""]*)""", System.Text.RegularExpressions.RegexOptions.Multiline);
        Assert.IsGreaterThanOrEqualTo(6, groups.Count);
        foreach (var g in groups.Where(g => g.Groups[1].Value != "completion"))
        {
            string help = await _cli.OkAsync(g.Groups[1].Value, "--help");
            foreach (var sub in g.Groups[2].Value.Split(' ').Where(w => !w.StartsWith('-')))
                StringAssert.Contains(help, $"Example: strata {g.Groups[1].Value} {sub}", $"strata {g.Groups[1].Value} {sub} has no example");
        }
        StringAssert.Contains(await _cli.OkAsync("completion", "--help"), "Example: strata completion bash");
    }

    [TestMethod]
    public async Task VersionMismatch_NewerCli_IsToldWhatToUpgrade()
    {
        var r = await _cli.RunAsync(["pool", "list"], new Dictionary<string, string> { ["STRATA_API_VERSION"] = "2" });
        Assert.AreEqual(4, r.ExitCode, r.ToString());
        StringAssert.Contains(r.Stderr, "upgrade strata-engine");
        var old = await _cli.RunAsync(["pool", "list"], new Dictionary<string, string> { ["STRATA_API_VERSION"] = "0" });
        Assert.AreEqual(4, old.ExitCode, old.ToString());
        StringAssert.Contains(old.Stderr, "upgrade the strata CLI");
    }

    [TestMethod]
    public async Task SocketResolution_EnvAndDataDirAndMissing()
    {
        var psi = Proc.Dotnet(Bin.Cli, ["system", "query", "--json"]);
        psi.Environment["STRATA_SOCKET"] = _engine.Socket;
        var viaEnv = await Proc.RunAsync(psi);
        Assert.AreEqual(0, viaEnv.ExitCode, viaEnv.ToString());
        var viaDataDir = await Proc.RunAsync(Proc.Dotnet(Bin.Cli, ["--data-dir", _engine.DataDir, "system", "query"]));
        Assert.AreEqual(0, viaDataDir.ExitCode, viaDataDir.ToString());
        // STRATA_DATA_DIR as the README says; an option beats it, STRATA_SOCKET beats it.
        var envDir = Proc.Dotnet(Bin.Cli, ["system", "query", "--json"]);
        envDir.Environment["STRATA_DATA_DIR"] = _engine.DataDir;
        var viaEnvDir = await Proc.RunAsync(envDir);
        Assert.AreEqual(0, viaEnvDir.ExitCode, viaEnvDir.ToString());
        Assert.AreEqual(_engine.Socket, JsonSerializer.Deserialize<SystemInfo>(viaEnvDir.Stdout, Api.Json)!.Socket);
        var wrongEnv = Proc.Dotnet(Bin.Cli, ["--data-dir", _engine.DataDir, "system", "query"]);
        wrongEnv.Environment["STRATA_DATA_DIR"] = Path.Combine(_dir, "elsewhere");
        Assert.AreEqual(0, (await Proc.RunAsync(wrongEnv)).ExitCode);
        var socketWins = Proc.Dotnet(Bin.Cli, ["system", "query"]);
        socketWins.Environment["STRATA_SOCKET"] = _engine.Socket;
        socketWins.Environment["STRATA_DATA_DIR"] = Path.Combine(_dir, "elsewhere");
        Assert.AreEqual(0, (await Proc.RunAsync(socketWins)).ExitCode);
        var missingDir = Proc.Dotnet(Bin.Cli, ["system", "query"]);
        missingDir.Environment["STRATA_DATA_DIR"] = Path.Combine(_dir, "elsewhere");
        var noEngine = await Proc.RunAsync(missingDir);
        Assert.AreEqual(3, noEngine.ExitCode, noEngine.ToString());
        StringAssert.Contains(noEngine.Stderr, Path.Combine(_dir, "elsewhere", "run", "strata.sock"));
        var missing = await new StrataCli(Path.Combine(_dir, "nothing.sock")).RunAsync("pool", "list");
        Assert.AreEqual(3, missing.ExitCode, missing.ToString());
        StringAssert.Contains(missing.Stderr, "is strata-engine running?");
    }

    [TestMethod]
    public async Task OversizedRequest_IsRefusedWith413()
    {
        // Raw socket: the engine answers 413 from the declared length and closes, before the body arrives.
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(_engine.Socket));
        int length = (1 << 20) + 1;
        await s.SendAsync(Encoding.ASCII.GetBytes($"POST /v1/pools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"label\":\""));
        string response = await ReadAllAsync(s, TimeSpan.FromSeconds(10));
        StringAssert.StartsWith(response, "HTTP/1.1 413");
        var err = JsonSerializer.Deserialize<ErrorBody>(response[(response.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..].Trim().Split('\n').Last(l => l.StartsWith('{')), Api.Json)!;
        Assert.AreEqual(ErrorCodes.TooLarge, err.Code);
        StringAssert.Contains(err.Error, "1048576");
        // The image data route has the same cap; the engine still serves normal requests.
        using var http = _engine.Http();
        Assert.AreEqual(HttpStatusCode.OK, (await http.GetAsync("v1/system")).StatusCode);
    }

    private static async Task<string> ReadAllAsync(Socket s, TimeSpan timeout)
    {
        var buf = new byte[65536];
        var text = new StringBuilder();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            int n;
            while ((n = await s.ReceiveAsync(buf, SocketFlags.None, cts.Token)) > 0)
            {
                text.Append(Encoding.ASCII.GetString(buf, 0, n));
                if (text.ToString().Contains("}", StringComparison.Ordinal))
                    break;
            }
        }
        catch (OperationCanceledException)
        {
        }
        return text.ToString();
    }

    [TestMethod]
    public async Task SlowClient_IsDisconnectedAfterTheHeaderTimeout()
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(_engine.Socket));
        await s.SendAsync("GET /v1/system HTTP/1.1\r\nHost: x\r\n"u8.ToArray());
        // Meanwhile others are served.
        await _cli.OkAsync("system", "query");
        // The engine (header timeout 2 s) answers 408 and closes; without the timeout the receive
        // below would wait until the 15 s token cancels it and the test would fail.
        var buf = new byte[4096];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        int n;
        var text = new StringBuilder();
        do
        {
            n = await s.ReceiveAsync(buf, SocketFlags.None, cts.Token);
            text.Append(Encoding.ASCII.GetString(buf, 0, n));
        }
        while (n > 0);
        StringAssert.StartsWith(text.ToString(), "HTTP/1.1 408", StringComparison.Ordinal);
    }

    [TestMethod]
    public async Task Prometheus_ScrapeOnSocketAndLoopback_Parses()
    {
        await _cli.OkAsync("pool", "create", "prom", "--size", "64M");
        await _cli.OkAsync("cont", "create", "prom", "c");
        await _cli.OkAsync("image", "create", "prom", "c", "i", "--size", "8M");
        using var http = _engine.Http();
        var before = PrometheusText.Parse(await http.GetStringAsync("metrics"));
        await _cli.OkAsync("image", "write", "prom", "c", "i", "--pattern", "1", "--length", "65536");
        await _cli.OkAsync("image", "read", "prom", "c", "i", "--length", "4096");
        string viaSocket = await http.GetStringAsync("metrics");
        using var tcp = new HttpClient();
        string viaTcp = await tcp.GetStringAsync($"http://127.0.0.1:{_metricsPort}/metrics");
        var resp = await tcp.GetAsync($"http://127.0.0.1:{_metricsPort}/v1/pools");
        Assert.AreEqual(HttpStatusCode.NotFound, resp.StatusCode, "the TCP port serves /metrics only");
        foreach (var text in new[] { viaSocket, viaTcp })
        {
            var samples = PrometheusText.Parse(text);
            // Test methods of this class run one at a time, so these I/Os are the only ones in between.
            Assert.AreEqual(65536.0, PrometheusText.Sum(samples, "strata_io_bytes_total", "op=\"write\"") - PrometheusText.Sum(before, "strata_io_bytes_total", "op=\"write\""), text);
            Assert.AreEqual(4096.0, PrometheusText.Sum(samples, "strata_io_bytes_total", "op=\"read\"") - PrometheusText.Sum(before, "strata_io_bytes_total", "op=\"read\""), text);
            Assert.IsGreaterThan(PrometheusText.Sum(before, "strata_io_latency_milliseconds_count", "op=\"write\""),
                PrometheusText.Sum(samples, "strata_io_latency_milliseconds_count", "op=\"write\""), text);
            Assert.AreEqual(2.0 * (1L << 30), samples.Single(x => x.Name == "strata_space_total_bytes").Value);
            Assert.IsTrue(samples.Any(x => x.Name == "strata_io_latency_milliseconds_bucket" && x.Labels.Contains("le=\"+Inf\"")), text);
            Assert.IsGreaterThan(0.0, samples.Where(x => x.Name == "strata_ras_events_total").Sum(x => x.Value));
            StringAssert.Contains(text, "# TYPE strata_io_bytes_total counter\n");
        }
        await _cli.OkAsync("pool", "destroy", "prom", "--force");
    }
}

/// <summary>A strict reader of the Prometheus text format (0.0.4): every non-comment line is NAME{LABELS} VALUE.</summary>
internal static class PrometheusText
{
    public sealed record Sample(string Name, string Labels, double Value);

    /// <summary>The sum of a metric's samples whose labels contain <paramref name="label"/> (0 when there are none yet).</summary>
    public static double Sum(List<Sample> samples, string name, string label) =>
        samples.Where(x => x.Name == name && x.Labels.Contains(label, StringComparison.Ordinal)).Sum(x => x.Value);

    private static readonly System.Text.RegularExpressions.Regex Line = new(
        @"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*=""(?:[^""\\]|\\.)*"")(,[a-zA-Z_][a-zA-Z0-9_]*=""(?:[^""\\]|\\.)*"")*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$");

    public static List<Sample> Parse(string text)
    {
        var result = new List<Sample>();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0)
                continue;
            if (line.StartsWith('#'))
            {
                Assert.IsTrue(line.StartsWith("# HELP ", StringComparison.Ordinal) || line.StartsWith("# TYPE ", StringComparison.Ordinal), line);
                continue;
            }
            var m = Line.Match(line);
            Assert.IsTrue(m.Success, $"not a Prometheus sample line: '{line}'");
            result.Add(new Sample(m.Groups[1].Value, m.Groups[2].Value, double.Parse(m.Groups[5].Value, System.Globalization.CultureInfo.InvariantCulture)));
        }
        return result;
    }
}
