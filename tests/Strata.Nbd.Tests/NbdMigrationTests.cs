using System.Diagnostics;
using Strata.Cli.Tests;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// Live image migration through the daemon with a real NBD client connected all along
/// (docs/migration.md, "Image migration"): one qemu-io session writes through prepare, execute
/// and commit or abort, without an error or a reconnect, and reads every acknowledged write back.
/// </summary>
[TestClass]
public sealed class NbdMigrationTests
{
    // The CLI's exit codes (Strata.Cli.ExitCodes).
    private const int Usage = 2, NotFound = 5, Conflict = 6;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>One interactive qemu-io process on an NBD URI: each command waits for its answer.</summary>
    private sealed class QemuIo : IAsyncDisposable
    {
        private readonly Process _p;

        public QemuIo(string uri)
        {
            var psi = new ProcessStartInfo("stdbuf") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { "-oL", Tools.Require("qemu-io"), "-f", "raw", uri })
                psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
        }

        /// <summary>Runs one command; returns its output lines (up to the statistics line, or the failure line).</summary>
        public async Task<string> RunAsync(string command)
        {
            await _p.StandardInput.WriteLineAsync(command);
            await _p.StandardInput.FlushAsync();
            var lines = new List<string>();
            while (true)
            {
                string? line = await _p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
                if (line == null)
                    throw new AssertFailedException($"qemu-io exited during '{command}': {string.Join('\n', lines)} {await _p.StandardError.ReadToEndAsync()}");
                lines.Add(line);
                if (line.Contains("failed", StringComparison.Ordinal) && !line.Contains("Pattern verification failed", StringComparison.Ordinal))
                    break;
                if (line.Contains(" ops; ", StringComparison.Ordinal))
                    break;
            }
            return string.Join('\n', lines);
        }

        public async Task OkAsync(string command)
        {
            string o = await RunAsync(command);
            Assert.DoesNotContain("failed", o, $"qemu-io {command}");
        }

        public async ValueTask DisposeAsync()
        {
            _p.StandardInput.Close();
            await _p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            _p.Dispose();
        }
    }

    /// <summary>Regions of 128 KiB at 256 KiB strides, each written once with its own pattern.</summary>
    private sealed class Regions(QemuIo io)
    {
        private readonly List<int> _written = [];

        public int Count => _written.Count;

        public async Task WriteNextAsync()
        {
            int k = _written.Count;
            await io.OkAsync($"write -P 0x{(k % 250) + 1:x2} {k * 256 * 1024} 128k");
            _written.Add(k);
        }

        public async Task VerifyAllAsync()
        {
            foreach (int k in _written)
                await io.OkAsync($"read -P 0x{(k % 250) + 1:x2} {k * 256 * 1024} 128k");
            // A region never written still reads as zeros.
            await io.OkAsync($"read -P 0 {_written.Count * 256 * 1024} 128k");
            await io.OkAsync("read -P 0xee 32M 32M");
        }
    }

    private static async Task<MigrationStatusDto> StatusAsync(NbdDaemon d, string image) =>
        await d.Cli.JsonAsync<MigrationStatusDto>("image", "migrate", "status", image);

    /// <summary>Writes one region after another until the copy has ended (and at least a few during it).</summary>
    private static async Task WriteDuringExecuteAsync(NbdDaemon d, Regions regions, string image)
    {
        for (int i = 0; i < 100; i++)
        {
            await regions.WriteNextAsync();
            if (i >= 4 && (await StatusAsync(d, image)).State != "executing")
                return;
        }
    }

    [TestMethod]
    public async Task QemuIo_WritesThroughPrepareExecuteCommitToAnotherPool_NoErrorsEveryWriteReadsBack()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-mig-commit");
        await d.Cli.OkAsync("pool", "create", "q", "--size", "128M");
        await d.Cli.OkAsync("cont", "create", "q", "c");
        await d.CreateImageAsync("v", "64M");
        // Paced so the client writes while the copy runs.
        await d.Cli.OkAsync("pool", "set-prop", "q", "migrate_rate", "4M");
        await using var io = new QemuIo(d.UnixUri("v"));
        await io.OkAsync("write -P 0xee 32M 32M");
        var regions = new Regions(io);
        for (int i = 0; i < 20; i++)
            await regions.WriteNextAsync();

        string prepared = await d.Cli.OkAsync("image", "migrate", "prepare", "p/c/v", "q/c/v", "--chunk-size", "128K");
        StringAssert.Contains(prepared, "Migration prepared: p/c/v -> q/c/v");
        for (int i = 0; i < 5; i++)
            await regions.WriteNextAsync();
        var refused = await d.Cli.FailsAsync(Usage, "image", "migrate", "commit", "p/c/v");
        StringAssert.Contains(refused, "it is prepared, 0 of 1024 chunks copied; commit needs executed");
        await d.Cli.OkAsync("image", "migrate", "execute", "p/c/v");
        StringAssert.Contains(await d.Cli.OkAsync("image", "info", "q/c/v"), "migration: p/c/v -> q/c/v: executing (");
        await WriteDuringExecuteAsync(d, regions, "p/c/v");
        string waited = await d.Cli.OkAsync("image", "migrate", "status", "p/c/v", "--wait");
        StringAssert.Contains(waited, "p/c/v -> q/c/v: executed");
        await regions.WriteNextAsync();

        StringAssert.Contains(await d.Cli.OkAsync("image", "migrate", "commit", "p/c/v"), "Migration committed: p/c/v removed");
        for (int i = 0; i < 5; i++)
            await regions.WriteNextAsync();
        await regions.VerifyAllAsync();
        TestContext.WriteLine($"{regions.Count} regions written on one connection through the migration");

        // The old name resolves to the destination for a new connection too; image info shows the alias.
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "read -P 0x01 0 128k", d.UnixUri("v"));
        StringAssert.Contains(await d.Cli.OkAsync("image", "info", "q/c/v"), "alias: p/c/v");
        await d.Cli.FailsAsync(NotFound, "image", "info", "p/c/v");
        await d.Cli.OkAsync("image", "migrate", "remove-alias", "q/c/v");
        Assert.DoesNotContain("alias:", await d.Cli.OkAsync("image", "info", "q/c/v"));
    }

    [TestMethod]
    public async Task QemuIo_WritesThroughPrepareExecuteAbort_SourceHasEveryWrite()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-mig-abort");
        await d.CreateImageAsync("v", "64M");
        await d.Cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "4M");
        await using var io = new QemuIo(d.UnixUri("v"));
        await io.OkAsync("write -P 0xee 32M 32M");
        var regions = new Regions(io);
        for (int i = 0; i < 20; i++)
            await regions.WriteNextAsync();
        await d.Cli.OkAsync("image", "migrate", "prepare", "p/c/v", "p/c/w");
        StringAssert.Contains(await d.Cli.FailsAsync(Conflict, "image", "migrate", "prepare", "p/c/v", "p/c/x"), "already migrating");
        StringAssert.Contains(await d.Cli.FailsAsync(Usage, "image", "migrate", "prepare", "p/c/v", "p/c/v"), "to itself");
        StringAssert.Contains(await d.Cli.FailsAsync(Conflict, "pool", "destroy", "p", "--force"), "holds an end of migration p/c/v -> p/c/w");
        await d.Cli.OkAsync("image", "migrate", "execute", "p/c/v");
        await WriteDuringExecuteAsync(d, regions, "p/c/v");
        StringAssert.Contains(await d.Cli.OkAsync("image", "migrate", "abort", "p/c/v"), "Migration aborted: p/c/w removed");
        for (int i = 0; i < 3; i++)
            await regions.WriteNextAsync();
        await regions.VerifyAllAsync();
        await d.Cli.FailsAsync(NotFound, "image", "info", "p/c/w");
        await d.Cli.FailsAsync(NotFound, "image", "migrate", "status", "p/c/v");
    }

    [TestMethod]
    public async Task Kill9DuringExecute_EngineRestarted_MigrationResumesAndCommitsEveryWrite()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-mig-kill");
        await d.CreateImageAsync("v", "64M");
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "write -P 0xee 0 32M", "-c", "write -P 0x5a 40M 1M", d.UnixUri("v"));
        await d.Cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "4M");
        await d.Cli.OkAsync("image", "migrate", "prepare", "p/c/v", "p/c/w");
        await d.Cli.OkAsync("image", "migrate", "execute", "p/c/v");
        // Killed once the copy has started (bounded poll; nothing is timed).
        for (int i = 0; i < 300 && (await StatusAsync(d, "p/c/v")).ChunksDone == 0; i++)
            await Task.Delay(50);
        Bin.Signal(d.Engine.Pid, 9);
        await d.Engine.WaitForExitAsync(TimeSpan.FromSeconds(30));

        await using var engine = await EngineProcess.StartAsync(d.Engine.DataDir, "--config", Path.Combine(d.Dir, "strata.yaml"));
        var cli = new StrataCli(engine.Socket);
        var resumed = await cli.JsonAsync<MigrationStatusDto>("image", "migrate", "status", "p/c/v");
        Assert.AreEqual("executing", resumed.State, $"{resumed}");
        StringAssert.Contains(File.ReadAllText(d.RasFile), "image_migration_resumed");
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x77 33M 128k", d.UnixUri("v"));
        await cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "0");
        StringAssert.Contains(await cli.OkAsync("image", "migrate", "status", "p/c/v", "--wait"), ": executed");
        await cli.OkAsync("image", "migrate", "commit", "p/c/v");
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "read -P 0xee 0 32M", "-c", "read -P 0x77 33M 128k", "-c", "read -P 0x5a 40M 1M",
            "-c", "read -P 0 41M 1M", d.UnixUri("w"));
        // The old name is an alias of the destination.
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "read -P 0x77 33M 128k", d.UnixUri("v"));
    }
}
