using System.CommandLine;
using System.Diagnostics;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Cli.Commands.Image;

/// <summary>
/// `strata image map | unmap`, as `rbd map` does it: map prints the image's NBD URIs and, where the
/// kernel's nbd module is loaded and nbd-client is installed, attaches the image as /dev/nbdX over
/// the engine's Unix socket; unmap detaches such a device.
/// </summary>
public static class ImageMapCommands
{
    private static readonly Option<bool> NoAttach = new("--no-attach") { Description = "Only print the URIs, even where /dev/nbdX could be attached" };
    private static readonly Argument<string> Device = new("device") { Description = "The /dev/nbdX that `image map` attached" };

    public static Command Map(Func<Command, Func<ParseResult, string>> imageArgs)
    {
        var map = new Command("map", "Print an image's NBD URIs; attach it as /dev/nbdX where the kernel nbd module is loaded");
        var path = imageArgs(map);
        map.Options.Add(NoAttach);
        map.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var img = await client.GetAsync<ImageDto>(path(parse));
            var uris = img.Nbd ?? [];
            if (uris.Count == 0)
                throw new CliException(ExitCodes.Failed, $"image {img.Pool}/{img.Container}/{img.Label} is not served: the engine's configuration has no nbd listeners (docs/nbd.md)");
            string? device = null, why = null;
            if (!parse.GetValue(NoAttach))
                (device, why) = await TryAttachAsync($"{img.Pool}/{img.Container}/{img.Label}", uris, ct);
            if (json)
            {
                Cli.PrintJson(new { pool = img.Pool, container = img.Container, image = img.Label, uris, device, attach = why });
                return 0;
            }
            if (device != null)
                Console.Out.WriteLine(device);
            foreach (var u in uris)
                Console.Out.WriteLine(u);
            if (why != null)
                await Console.Error.WriteLineAsync($"strata: not attached as /dev/nbdX: {why}; use a URI above with qemu, qemu-img, nbdcopy, nbdfuse or fio");
            return 0;
        }));
        return map;
    }

    public static Command Unmap()
    {
        var unmap = new Command("unmap", "Detach a /dev/nbdX that `image map` attached");
        unmap.Arguments.Add(Device);
        unmap.SetAction((parse, ct) => Cli.RunAsync(parse, async (_, json) =>
        {
            string dev = parse.GetValue(Device)!;
            if (!dev.StartsWith("/dev/nbd", StringComparison.Ordinal) || !File.Exists(dev))
                throw new CliException(ExitCodes.Usage, $"{UserText.Quote(dev)} is not an nbd device");
            var (rc, output) = await RunAsync("nbd-client", ["-d", dev], ct);
            if (rc != 0)
                throw new CliException(ExitCodes.Failed, $"nbd-client -d {dev} failed: {output}");
            if (json)
                Cli.PrintJson(new { device = dev, detached = true });
            else
                Console.Out.WriteLine($"Detached {dev}");
            return 0;
        }));
        return unmap;
    }

    /// <summary>Attaches over the Unix socket URI with nbd-client; returns the device, or why it did not.</summary>
    private static async Task<(string? Device, string? Why)> TryAttachAsync(string export, IReadOnlyList<string> uris, CancellationToken ct)
    {
        if (!Directory.Exists("/sys/module/nbd"))
            return (null, "the kernel nbd module is not loaded (modprobe nbd)");
        string? unixUri = uris.FirstOrDefault(u => u.StartsWith("nbd+unix:", StringComparison.Ordinal));
        int q = unixUri?.IndexOf("?socket=", StringComparison.Ordinal) ?? -1;
        if (unixUri == null || q < 0)
            return (null, "the engine serves no Unix socket listener");
        string socket = Uri.UnescapeDataString(unixUri[(q + "?socket=".Length)..]);
        // A device is free when the kernel has no server process for it.
        string? free = Directory.GetDirectories("/sys/block", "nbd*")
            .Where(d => !File.Exists(Path.Combine(d, "pid")))
            .Select(Path.GetFileName)
            .OrderBy(n => int.TryParse(n!["nbd".Length..], out int i) ? i : int.MaxValue)
            .FirstOrDefault();
        if (free == null)
            return (null, "every /dev/nbdX is in use");
        string dev = "/dev/" + free;
        try
        {
            var (rc, output) = await RunAsync("nbd-client", ["-unix", socket, "-N", export, dev], ct);
            return rc == 0 ? (dev, null) : (null, $"nbd-client failed: {output}");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return (null, "nbd-client is not installed (apt-get install nbd-client)");
        }
    }

    private static async Task<(int Rc, string Output)> RunAsync(string file, string[] args, CancellationToken ct)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct);
        string text = ((await stdout) + (await stderr)).Trim().ReplaceLineEndings(" ");
        return (p.ExitCode, UserText.Cap(text, UserText.MaxQuoted));
    }
}
