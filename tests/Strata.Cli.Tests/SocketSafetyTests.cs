using System.Net.Sockets;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>The control socket's safety rules (DAOS's): stale vs live sockets, symlinks, files, peer credentials; and clean shutdown.</summary>
[TestClass]
public sealed class SocketSafetyTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Bin.NewTempDir("sock");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    private string DataDir => Path.Combine(_dir, "data");

    private string SocketPath => Path.Combine(DataDir, "run", "strata.sock");


    [TestMethod]
    public async Task StaleSocket_IsReplaced()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(SocketPath)!);
        // A crashed engine's leftover: a socket inode nobody listens on. .NET unlinks a socket it bound when it
        // closes it, so bind elsewhere and hard-link the inode to the path first.
        string temp = Path.Combine(_dir, "tmp.sock");
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Bind(new UnixDomainSocketEndPoint(temp));
            Assert.AreEqual(0, Link(temp, SocketPath));
        }
        Assert.IsTrue(File.Exists(SocketPath));
        await using var engine = await EngineProcess.StartAsync(DataDir);
        StringAssert.Contains(engine.Log, "stale socket");
        await new StrataCli(SocketPath).OkAsync("system", "query");
    }

    [TestMethod]
    public async Task LiveEngine_OnThePath_SecondEngineRefuses()
    {
        await using var first = await EngineProcess.StartAsync(DataDir);
        // Another data dir, the same socket directory: only the socket check can stop it.
        var second = EngineProcess.Launch(Path.Combine(_dir, "other"), "--socket-dir", Path.GetDirectoryName(SocketPath)!);
        Assert.AreEqual(1, await second.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        StringAssert.Contains(second.Log, "another engine is listening on " + SocketPath);
        var s = await new StrataCli(SocketPath).JsonAsync<SystemInfo>("system", "query");
        Assert.AreEqual(first.Pid, s.Pid, "the first engine still owns the socket");
    }

    [TestMethod]
    public async Task Symlink_AtTheSocketPath_IsRefusedAndKept()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(SocketPath)!);
        string target = Path.Combine(_dir, "elsewhere.sock");
        File.CreateSymbolicLink(SocketPath, target);
        var engine = EngineProcess.Launch(DataDir);
        Assert.AreEqual(1, await engine.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        StringAssert.Contains(engine.Log, "is a symlink");
        Assert.AreEqual(target, new FileInfo(SocketPath).LinkTarget);
    }

    [TestMethod]
    public async Task RegularFile_AtTheSocketPath_IsRefusedAndKept()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(SocketPath)!);
        File.WriteAllText(SocketPath, "precious");
        var engine = EngineProcess.Launch(DataDir);
        Assert.AreEqual(1, await engine.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        StringAssert.Contains(engine.Log, "is a regular file");
        Assert.AreEqual("precious", File.ReadAllText(SocketPath));
    }

    [TestMethod]
    public async Task SocketDirectory_IsMode0750_SocketIs0660_AndPidFileWritten()
    {
        await using var engine = await EngineProcess.StartAsync(DataDir);
        var mode = File.GetUnixFileMode(Path.GetDirectoryName(SocketPath)!);
        Assert.AreEqual(ControlSocketMode, mode);
        Assert.AreEqual(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite, File.GetUnixFileMode(SocketPath));
        Assert.AreEqual(engine.Pid.ToString(), File.ReadAllText(Path.Combine(DataDir, "run", "strata-engine.pid")).Trim());
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "link", SetLastError = true)]
    private static extern int Link(string existing, string newPath);

    private const UnixFileMode ControlSocketMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
        | UnixFileMode.GroupRead | UnixFileMode.GroupExecute;

    [TestMethod]
    public async Task SigTerm_ClosesCleanly_AndDataSurvivesRestart()
    {
        var cli = new StrataCli(SocketPath);
        await using (var engine = await EngineProcess.StartAsync(DataDir))
        {
            await cli.OkAsync("pool", "create", "p", "--size", "64M");
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "i", "--size", "4M");
            await cli.OkAsync("image", "write", "p", "c", "i", "--pattern", "90", "--length", "100000", "--offset", "5000");
            Bin.Signal(engine.Pid, 15);
            Assert.AreEqual(0, await engine.WaitForExitAsync(TimeSpan.FromSeconds(30)), engine.Log);
            StringAssert.Contains(engine.Log, "stopped cleanly");
            Assert.IsFalse(File.Exists(Path.Combine(DataDir, "run", "strata-engine.pid")), "the pid file is removed");
        }
        await using (var again = await EngineProcess.StartAsync(DataDir))
        {
            string back = Path.Combine(_dir, "back.bin");
            await cli.OkAsync("image", "read", "p", "c", "i", "--offset", "5000", "--length", "100000", "--out", back);
            Assert.IsTrue(File.ReadAllBytes(back).All(b => b == 90));
            StringAssert.Contains(await cli.OkAsync("system", "stop"), "stopped");
            Assert.AreEqual(0, await again.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        }
    }

    [TestMethod]
    public async Task NonAdminUid_IsRefused_ByDirectoryAndByPeerCredentials()
    {
        if (Environment.UserName != "root")
            Assert.Inconclusive("needs root to create a test user");
        string user = "strt" + Random.Shared.Next(100000, 999999);
        var add = await Proc.RunAsync(new System.Diagnostics.ProcessStartInfo("useradd", ["-M", "-s", "/usr/sbin/nologin", user]) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true });
        if (add.ExitCode != 0)
            Assert.Inconclusive("useradd failed: " + add);
        try
        {
            await using var engine = await EngineProcess.StartAsync(DataDir);
            var cli = new StrataCli(SocketPath);
            var env = new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" };

            // 1. The directory (0750, root's group) keeps the user out.
            var r = await cli.RunAsync(["system", "query"], env, asUser: user);
            Assert.AreEqual(7, r.ExitCode, r.ToString());
            StringAssert.Contains(r.Stderr, "permission denied");

            // 2. Even with the directory opened up, SO_PEERCRED refuses the uid, and the engine logs pid and uid.
            File.SetUnixFileMode(Path.GetDirectoryName(SocketPath)!, (UnixFileMode)0b111_101_101);
            File.SetUnixFileMode(SocketPath, (UnixFileMode)0b111_111_111);
            r = await cli.RunAsync(["pool", "list"], env, asUser: user);
            Assert.AreEqual(7, r.ExitCode, r.ToString());
            var uid = (await Proc.RunAsync(new System.Diagnostics.ProcessStartInfo("id", ["-u", user]) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true })).Stdout.Trim();
            StringAssert.Contains(r.Stderr, $"uid {uid} is not root");
            await Task.Delay(200);
            StringAssert.Contains(engine.Log, $"rejected control caller pid");
            StringAssert.Contains(engine.Log, $"uid {uid}");
            var events = await cli.OkAsync("system", "events", "--json");
            StringAssert.Contains(events, ControlRasIds.CallerRejected);

            // Root is still served.
            await cli.OkAsync("pool", "list");
        }
        finally
        {
            await Proc.RunAsync(new System.Diagnostics.ProcessStartInfo("userdel", [user]) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true });
        }
    }

    [TestMethod]
    public async Task AdminGroupMember_IsServed()
    {
        if (Environment.UserName != "root")
            Assert.Inconclusive("needs root to create a test user and group");
        string tag = Random.Shared.Next(100000, 999999).ToString();
        string group = "stg" + tag, member = "stm" + tag;
        static System.Diagnostics.ProcessStartInfo Cmd(string f, params string[] a) =>
            new(f, a) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        var g = await Proc.RunAsync(Cmd("groupadd", group));
        var u = await Proc.RunAsync(Cmd("useradd", "-M", "-s", "/usr/sbin/nologin", "-G", group, member));
        if (g.ExitCode != 0 || u.ExitCode != 0)
            Assert.Inconclusive($"groupadd/useradd failed: {g} {u}");
        try
        {
            string cfg = Path.Combine(_dir, "strata.yaml");
            File.WriteAllText(cfg, $"control:\n  admin_group: {group}\n");
            await using var engine = await EngineProcess.StartAsync(DataDir, "--config", cfg);
            var env = new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" };
            // runuser gives the member its supplementary groups: it can enter the 0750 directory and passes SO_PEERCRED.
            var r = await new StrataCli(SocketPath).RunAsync(["system", "query", "--json"], env, asUser: member);
            Assert.AreEqual(0, r.ExitCode, r.ToString() + engine.Log);
        }
        finally
        {
            await Proc.RunAsync(Cmd("userdel", member));
            await Proc.RunAsync(Cmd("groupdel", group));
        }
    }
}
