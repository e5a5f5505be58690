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

        public Task VerifyAllAsync() => VerifyOnAsync(io, untouchedZero: true);

        /// <summary>
        /// Reads every acknowledged region back through <paramref name="on"/>; untouchedZero: the next
        /// region, never written, reads as zeros (not after a kill: its write may have been in flight).
        /// </summary>
        public async Task VerifyOnAsync(QemuIo on, bool untouchedZero)
        {
            foreach (int k in _written)
                await on.OkAsync($"read -P 0x{(k % 250) + 1:x2} {k * 256 * 1024} 128k");
            if (untouchedZero)
                await on.OkAsync($"read -P 0 {_written.Count * 256 * 1024} 128k");
            await on.OkAsync("read -P 0xee 32M 32M");
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

    /// <summary>
    /// kill -9 of the daemon racing `commit` or `abort` while qemu-io writes on the source's
    /// connection: the request goes out on the control socket and the engine is killed after a
    /// seeded 0-20 ms, so the kill lands before, inside or after the verb (STRATA_KILL_SEED
    /// reproduces a run; the seeded in-process CrashDisk runs, ImageMigrationCrashTests, land at
    /// every device command). After the restart the migration is in one consistent state: still
    /// executed (the verb never became durable; it is run again), or finished; every write qemu-io
    /// reported written reads back from the image that remains, through the source's name.
    /// </summary>
    [TestMethod]
    [DataRow("commit", DisplayName = "commit")]
    [DataRow("abort", DisplayName = "abort")]
    public async Task Kill9RacingCommitOrAbort_QemuIoWriting_RestartFinishesItEveryWriteReadsBack(string verb)
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("STRATA_KILL_SEED"), out int s) ? s : Random.Shared.Next();
        TestContext.WriteLine($"STRATA_KILL_SEED={seed}");
        var rng = new Random(seed);
        await using var d = await NbdDaemon.StartAsync($"nbd-mig-kill-{verb}");
        await d.CreateImageAsync("v", "64M");
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "write -P 0xee 32M 32M", d.UnixUri("v"));
        await d.Cli.OkAsync("image", "migrate", "prepare", "p/c/v", "p/c/w");
        await d.Cli.OkAsync("image", "migrate", "execute", "p/c/v");
        StringAssert.Contains(await d.Cli.OkAsync("image", "migrate", "status", "p/c/v", "--wait"), ": executed");
        var io = new QemuIo(d.UnixUri("v"));
        var regions = new Regions(io);
        for (int i = 0; i < 8; i++)
            await regions.WriteNextAsync();

        // qemu-io goes on writing until the engine dies under it; what it reported written is the model.
        var writer = Task.Run(async () =>
        {
            try
            {
                for (int i = 0; i < 100; i++)
                    await regions.WriteNextAsync();
            }
            catch (AssertFailedException)
            {
                // The engine was killed: the write in flight failed (or qemu-io exited).
            }
        });
        using (var http = d.Engine.Http())
        {
            // The connection is up and qemu-io is writing before the verb goes out.
            (await http.GetAsync("v1/migrations/status?image=p/c/v")).EnsureSuccessStatusCode();
            while (regions.Count < 10 && !writer.IsCompleted)
                await Task.Yield();
            var request = http.PostAsync($"v1/migrations/{verb}", System.Net.Http.Json.JsonContent.Create(new { image = "p/c/v" }));
            await Task.Delay(rng.Next(0, 20));
            Bin.Signal(d.Engine.Pid, 9);
            await d.Engine.WaitForExitAsync(TimeSpan.FromSeconds(30));
            await request.ContinueWith(_ => { }, TaskScheduler.Default);
        }
        await writer;
        await io.DisposeAsync();
        TestContext.WriteLine($"{regions.Count} regions acknowledged before the kill");

        await using var engine = await EngineProcess.StartAsync(d.Engine.DataDir, "--config", Path.Combine(d.Dir, "strata.yaml"));
        var cli = new StrataCli(engine.Socket);
        var after = await cli.RunAsync("image", "migrate", "status", "p/c/v", "--json");
        if (after.ExitCode == 0)
        {
            // The verb did not become durable: the migration is where it was, and the verb runs again.
            var st = System.Text.Json.JsonSerializer.Deserialize<MigrationStatusDto>(after.Stdout, Api.Json)!;
            Assert.AreEqual("executed", st.State, $"{st}");
            TestContext.WriteLine($"the kill landed before the {verb} was durable; running it again");
            await cli.OkAsync("image", "migrate", verb, "p/c/v");
        }
        await cli.FailsAsync(NotFound, "image", "migrate", "status", "p/c/v");
        if (verb == "commit")
        {
            await cli.FailsAsync(NotFound, "image", "info", "p/c/v");
            StringAssert.Contains(await cli.OkAsync("image", "info", "p/c/w"), "alias: p/c/v");
        }
        else
        {
            await cli.FailsAsync(NotFound, "image", "info", "p/c/w");
        }
        // Through the source's name: the source after abort, the destination (its alias) after commit.
        await using var check = new QemuIo(d.UnixUri("v"));
        await regions.VerifyOnAsync(check, untouchedZero: false);
    }
}
