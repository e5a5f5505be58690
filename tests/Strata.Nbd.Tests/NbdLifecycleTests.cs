using Strata.Cli.Tests;

namespace Strata.Nbd.Tests;

/// <summary>The NBD listeners' life in the daemon: configuration refusals, forced pool destroy, and shutdown with clients connected.</summary>
[TestClass]
public sealed class NbdLifecycleTests
{
    [TestMethod]
    [DataRow("tcp:0.0.0.0:10809", "is not a loopback address")]
    [DataRow("tcp:127.0.0.1:99999", "is not a TCP port")]
    [DataRow("udp:127.0.0.1:10809", "must be unix:PATH or tcp:127.0.0.1:PORT")]
    [DataRow("unix:", "has no socket path")]
    public async Task Config_BadListener_RefusedAtStartWithOneLine(string listener, string expected)
    {
        string dir = Bin.NewTempDir("nbd-cfg");
        try
        {
            string cfg = Path.Combine(dir, "strata.yaml");
            File.WriteAllText(cfg, $"""
                targets:
                  - file:{dir}/t0.img?create=1&size=256M
                nbd:
                  - "{listener}"
                """);
            var engine = EngineProcess.Launch(Path.Combine(dir, "data"), "--config", cfg);
            await using (engine)
            {
                Assert.AreEqual(1, await engine.WaitForExitAsync(TimeSpan.FromSeconds(60)));
                StringAssert.Contains(engine.Log, "strata-engine: nbd listener");
                StringAssert.Contains(engine.Log, expected);
                Assert.DoesNotContain("   at ", engine.Log);
            }
            Assert.IsFalse(File.Exists(Path.Combine(dir, "t0.img")), "a refused configuration touches no target");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public async Task PoolDestroyForce_ClientsRevokedFirst()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-destroy");
        await d.CreateImageAsync("x", "1M");
        using var c = await d.OpenUnixAsync("x");
        await c.WriteAsync(0, [1, 2, 3]);
        await d.WaitClientsAsync(1);
        await d.Cli.OkAsync("pool", "destroy", "p", "--force");
        Assert.IsTrue(await c.IsClosedByServerAsync());
        await d.WaitLogAsync("revoked: pool 'p' is being destroyed");
        Assert.IsFalse(d.Engine.HasExited);
    }

    [TestMethod]
    public async Task EngineStop_WithClientsConnected_ClientsClosed_CleanExit_SocketRemoved()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-stop");
        await d.CreateImageAsync("x", "1M");
        using var a = await d.OpenUnixAsync("x");
        using var b = await d.OpenTcpAsync("x", structured: false);
        await a.WriteAsync(0, [4, 5, 6]);
        CollectionAssert.AreEqual(new byte[] { 4, 5, 6 }, await b.ReadAsync(0, 3));
        Bin.Signal(d.Engine.Pid, 15);
        Assert.IsTrue(await a.IsClosedByServerAsync());
        Assert.IsTrue(await b.IsClosedByServerAsync());
        Assert.AreEqual(0, await d.Engine.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        await d.WaitLogAsync("revoked: the engine is stopping");
        await d.WaitLogAsync("stopped cleanly");
        Assert.IsFalse(File.Exists(d.NbdSocket), "the NBD socket is removed on stop");
    }
}
