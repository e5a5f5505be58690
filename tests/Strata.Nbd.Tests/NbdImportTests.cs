using System.Diagnostics;
using Strata.Cli.Tests;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// Import from outside (docs/migration.md, "Import"): qemu-nbd serves a qcow2 written by qemu-io;
/// the destination is served at once and written by a client during the import; at the end
/// `qemu-img compare` against the expected image passes and holes stay holes.
/// </summary>
[TestClass]
public sealed class NbdImportTests
{
    private const int Usage = 2, NotFound = 5;

    /// <summary>qemu-nbd serving one file on a Unix socket, export "src"; restartable (the source dying and coming back).</summary>
    private sealed class QemuNbd(string file, string format, string socket) : IAsyncDisposable
    {
        private Process? _p;

        public string Uri => $"nbd+unix:///src?socket={socket}";

        public async Task StartAsync()
        {
            var psi = new ProcessStartInfo(Tools.Require("qemu-nbd")) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in new[] { "-f", format, "-x", "src", "--socket", socket, "--persistent", "--read-only", "--shared", "4", file })
                psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
            // Ready when the socket answers (bounded; nothing is timed).
            for (int i = 0; i < 300; i++)
            {
                if (File.Exists(socket) && (await Tools.RunAsync("qemu-img", "info", "--image-opts", $"driver=nbd,path={socket},export=src")).ExitCode == 0)
                    return;
                await Task.Delay(50);
            }
            Assert.Fail($"qemu-nbd did not start on {socket}");
        }

        public async Task StopAsync()
        {
            if (_p == null)
                return;
            _p.Kill(entireProcessTree: true);
            await _p.WaitForExitAsync();
            _p.Dispose();
            _p = null;
            File.Delete(socket);
        }

        public async ValueTask DisposeAsync() => await StopAsync();
    }

    private static async Task<MigrationStatusDto> WaitStatusAsync(NbdDaemon d, string image, Func<MigrationStatusDto, bool> until)
    {
        MigrationStatusDto s = null!;
        for (int i = 0; i < 600; i++)
        {
            s = await d.Cli.JsonAsync<MigrationStatusDto>("image", "migrate", "status", image);
            if (until(s))
                return s;
            await Task.Delay(100);
        }
        Assert.Fail($"migration status of {image} never reached the expected state: {s}");
        return s;
    }

    [TestMethod]
    public async Task Import_FromQemuNbdQcow2WithClientWriting_CompareEqualHolesStayHoles()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-import");
        string src = Path.Combine(d.Dir, "src.qcow2"), expected = Path.Combine(d.Dir, "expected.raw");
        await Tools.OkAsync("qemu-img", "create", "-q", "-f", "qcow2", src, "64M");
        await Tools.OkAsync("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", "-c", "write -P 0x22 20M 1M", "-c", "write -P 0x33 40M 64k", src);
        await Tools.OkAsync("qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, expected);
        await using var nbd = new QemuNbd(src, "qcow2", Path.Combine(d.Dir, "q.sock"));
        await nbd.StartAsync();
        string spec = $$"""{"type":"nbd","uri":"{{nbd.Uri}}"}""";

        // Bad input first: nothing is created.
        StringAssert.Contains(await d.Cli.FailsAsync(Usage, "image", "migrate", "prepare", "--import-only", "--source-spec", "{\"type\":", "p/c/imp"), "source spec is not JSON");
        StringAssert.Contains(await d.Cli.FailsAsync(Usage, "image", "migrate", "prepare", "--import-only", "--source-spec", "{\"type\":\"ftp\"}", "p/c/imp"), "not supported");
        StringAssert.Contains(await d.Cli.FailsAsync(Usage, "image", "migrate", "prepare", "--import-only", "--source-spec",
            $$"""{"type":"nbd","uri":"nbd+unix:///src?socket={{d.Dir}}/nothing.sock"}""", "p/c/imp"), "import source unreachable, nothing was created");
        await d.Cli.FailsAsync(NotFound, "image", "info", "p/c/imp");

        await d.Cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "2M");
        StringAssert.Contains(await d.Cli.OkAsync("image", "migrate", "prepare", "--import-only", "--source-spec", spec, "p/c/imp", "--chunk-size", "64K"), "Import prepared");
        // Served at once: reads of what is not imported come from the source; a write copies its chunk up.
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "read -P 0x11 0 4M", "-c", "read -P 0x22 20M 1M", d.UnixUri("imp"));
        foreach (var w in new[] { "write -P 0x44 1000k 8k", "write -P 0x55 41M 4k" })
        {
            await Tools.OkAsync("qemu-io", "-f", "raw", "-c", w, d.UnixUri("imp"));
            await Tools.OkAsync("qemu-io", "-f", "raw", "-c", w, expected);
        }
        await d.Cli.OkAsync("image", "migrate", "execute", "p/c/imp");
        foreach (var w in new[] { "write -P 0x66 2M 64k", "write -P 0x77 60M 4k" })
        {
            await Tools.OkAsync("qemu-io", "-f", "raw", "-c", w, d.UnixUri("imp"));
            await Tools.OkAsync("qemu-io", "-f", "raw", "-c", w, expected);
        }

        // The source dies mid-import: the job pauses with a RAS event; reads of chunks not imported fail with EIO.
        await nbd.StopAsync();
        var paused = await WaitStatusAsync(d, "p/c/imp", s => s.Error?.StartsWith("paused, source lost", StringComparison.Ordinal) == true || s.State != "executing");
        Assert.AreEqual("executing", paused.State, $"{paused}");
        var r = await Tools.RunAsync("qemu-io", "-f", "raw", "-c", "read -P 0x22 20M 64k", d.UnixUri("imp"));
        string eio = r.Stdout + r.Stderr;
        StringAssert.Contains(eio, "Input/output error");
        StringAssert.Contains(File.ReadAllText(d.RasFile), "image_migration_source_lost");
        await nbd.StartAsync();
        await d.Cli.OkAsync("pool", "set-prop", "p", "migrate_rate", "0");
        StringAssert.Contains(await d.Cli.OkAsync("image", "migrate", "status", "p/c/imp", "--wait"), ": executed");
        StringAssert.Contains(File.ReadAllText(d.RasFile), "image_migration_source_back");

        await d.Cli.OkAsync("image", "migrate", "commit", "p/c/imp");
        await nbd.StopAsync();
        // Cut loose: the image no longer needs the source.
        await Tools.OkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, d.UnixUri("imp"));
        var info = await d.Cli.JsonAsync<ImageDto>("image", "info", "p/c/imp");
        Assert.IsNull(info.Migration);
        // Data: 4M + 1M + 64K from the qcow2, plus the chunks the client wrote; the rest of the 64 MiB stays unmapped.
        Assert.IsLessThanOrEqualTo(4L * 1024 * 1024 + 1024 * 1024 + 6 * 65536, info.MappedBytes, $"mapped {info.MappedBytes}");
    }
}
