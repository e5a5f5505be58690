using System.Diagnostics;
using System.Text.Json;

namespace Strata.Cli.Tests;

/// <summary>
/// The embedded default serves NBD on DATA_DIR/run/nbd.sock with no configuration file, and
/// `image map` prints the URI a real client (nbdinfo here) can use; `nbd: []` serves none.
/// </summary>
[TestClass]
public sealed class ImageMapTests
{
    private static async Task<string> NbdInfoAsync(string uri)
    {
        var psi = new ProcessStartInfo("nbdinfo") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("--size");
        psi.ArgumentList.Add(uri);
        using var p = Process.Start(psi)!;
        string output = await p.StandardOutput.ReadToEndAsync() + await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.AreEqual(0, p.ExitCode, output);
        return output.Trim();
    }

    [TestMethod]
    public async Task ImageMap_EmbeddedDefault_PrintsUnixUri_ARealClientReadsTheSize()
    {
        string dir = Bin.NewTempDir("map");
        await using (var engine = await EngineProcess.StartAsync(dir))
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "p", "--size", "64M");
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "i", "--size", "3M");

            string printed = await cli.OkAsync("image", "map", "p", "c", "i", "--no-attach");
            string uri = printed.Split('\n')[0].Trim();
            Assert.AreEqual($"nbd+unix:///p/c/i?socket={Path.Combine(dir, "run", "nbd.sock")}", Uri.UnescapeDataString(uri));
            Assert.AreEqual((3L << 20).ToString(), await NbdInfoAsync(uri));

            using var json = JsonDocument.Parse(await cli.OkAsync("image", "map", "p", "c", "i", "--no-attach", "--json"));
            Assert.AreEqual(uri, json.RootElement.GetProperty("uris")[0].GetString());
            // No kernel nbd module in a test sandbox, and --no-attach: no device either way.
            Assert.IsFalse(json.RootElement.TryGetProperty("device", out var device) && device.ValueKind != JsonValueKind.Null);

            StringAssert.Contains(await cli.FailsAsync(5, "image", "map", "p", "c", "nope", "--no-attach"), "nope");
            StringAssert.Contains(await cli.FailsAsync(2, "image", "unmap", "/etc/passwd"), "is not an nbd device");
        }
        Directory.Delete(dir, recursive: true);
    }

    [TestMethod]
    public async Task ImageMap_ConfigWithoutListeners_SaysNotServed()
    {
        string dir = Bin.NewTempDir("nomap");
        string cfg = Path.Combine(dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            targets:
              - file:{dir}/t0.img?create=1&size=256M
            nbd: []
            """);
        await using (var engine = await EngineProcess.StartAsync(dir, "--config", cfg))
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "p", "--size", "64M");
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "i", "--size", "1M");
            StringAssert.Contains(await cli.FailsAsync(1, "image", "map", "p", "c", "i"), "is not served: the engine's configuration has no nbd listeners");
            Assert.IsFalse(File.Exists(Path.Combine(dir, "run", "nbd.sock")));
        }
        Directory.Delete(dir, recursive: true);
    }
}
