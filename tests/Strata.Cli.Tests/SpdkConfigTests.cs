namespace Strata.Cli.Tests;

/// <summary>
/// The engine's spdk: section reaches the shim before any nvme-* target opens: a bad option stops
/// the engine at startup with one line naming it, in every build (the shim checks the options the
/// same way with or without SPDK, so no target is needed).
/// </summary>
[TestClass]
public sealed class SpdkConfigTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Bin.NewTempDir("spdkcfg");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    private async Task<CliResult> RunEngineAsync(string yaml)
    {
        string config = Path.Combine(_dir, "strata.yaml");
        File.WriteAllText(config, yaml);
        var psi = Proc.Dotnet(Bin.Engine, ["run", "--data-dir", Path.Combine(_dir, "data"), "--config", config]);
        return await Proc.RunAsync(psi, TimeSpan.FromSeconds(60));
    }

    [TestMethod]
    public async Task Run_SpdkSectionBadIovaMode_RefusesToStartNamingTheOption()
    {
        var r = await RunEngineAsync("""
            targets:
              - nvme-tcp://127.0.0.1:9/nqn.2016-06.io.spdk:missing
            spdk:
              hugepages: false
              iova_mode: sideways
            """);
        Assert.AreEqual(1, r.ExitCode, r.ToString());
        StringAssert.Contains(r.Stderr, "spdk-env");
        StringAssert.Contains(r.Stderr, "'sideways'");
        StringAssert.Contains(r.Stderr, "iova_mode");
    }

    [TestMethod]
    public async Task Run_UnknownNbdWriteCache_ConfigErrorNamingIt()
    {
        var r = await RunEngineAsync("""
            nbd_write_cache: sometimes
            """);
        Assert.AreEqual(1, r.ExitCode, r.ToString());
        StringAssert.Contains(r.Stderr, "nbd_write_cache 'sometimes' is not writeback or writethrough");
    }

    [TestMethod]
    public async Task Run_SpdkSectionNegativeMemory_ConfigError()
    {
        var r = await RunEngineAsync("""
            targets:
              - nvme-tcp://127.0.0.1:9/nqn.2016-06.io.spdk:missing
            spdk:
              mem_size_mb: -5
            """);
        Assert.AreEqual(1, r.ExitCode, r.ToString());
        StringAssert.Contains(r.Stderr, "spdk.mem_size_mb -5");
    }
}
