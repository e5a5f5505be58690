using System.Diagnostics;
using System.Net;
using Strata.Cli.Tests;

namespace Strata.Nbd.Tests;

/// <summary>
/// A real strata-engine process whose configuration lists a Unix and a loopback TCP NBD
/// listener (on a free port), with pool "p" and container "c" created through the strata CLI.
/// </summary>
internal sealed class NbdDaemon : IAsyncDisposable
{
    private NbdDaemon(string dir, EngineProcess engine, int port)
    {
        Dir = dir;
        Engine = engine;
        Port = port;
        Cli = new StrataCli(engine.Socket);
    }

    public string Dir { get; }
    public EngineProcess Engine { get; }
    public StrataCli Cli { get; }
    public int Port { get; }
    public string NbdSocket => Path.Combine(Engine.DataDir, "run", "nbd.sock");

    public string UnixUri(string image) => $"nbd+unix:///p/c/{image}?socket={NbdSocket}";

    public string TcpUri(string image) => $"nbd://127.0.0.1:{Port}/p/c/{image}";

    /// <param name="extraConfig">More top-level YAML lines for the engine's configuration.</param>
    public static async Task<NbdDaemon> StartAsync(string tag, string extraConfig = "")
    {
        string dir = Bin.NewTempDir(tag);
        string data = Path.Combine(dir, "data");
        int port = FreePort();
        string cfg = Path.Combine(dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            # two 1 GiB sparse targets; NBD on a Unix socket in the socket directory and on loopback TCP
            targets:
              - file:{data}/t0.img?create=1&size=1G
              - file:{data}/t1.img?create=1&size=1G
            nbd:
              - unix:run/nbd.sock
              - tcp:127.0.0.1:{port}
            {extraConfig}
            """);
        var engine = await EngineProcess.StartAsync(data, "--config", cfg);
        var d = new NbdDaemon(dir, engine, port);
        await d.Cli.OkAsync("pool", "create", "p", "--size", "768M");
        await d.Cli.OkAsync("cont", "create", "p", "c");
        return d;
    }

    public Task CreateImageAsync(string image, string size, string chunk = "64K") =>
        Cli.OkAsync("image", "create", "p", "c", image, "--size", size, "--chunk-size", chunk);

    public static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public Task<RawNbdClient> OpenUnixAsync(string image, bool structured = true) =>
        RawNbdClient.OpenAsync(() => RawNbdClient.ConnectUnixAsync(NbdSocket), "p/c/" + image, structured);

    public Task<RawNbdClient> OpenTcpAsync(string image, bool structured = true) =>
        RawNbdClient.OpenAsync(() => RawNbdClient.ConnectTcpAsync(Port), "p/c/" + image, structured);

    /// <summary>Waits (bounded; no timing is asserted) until `pool clients p` lists <paramref name="count"/> clients.</summary>
    public async Task WaitClientsAsync(int count)
    {
        List<Strata.Engine.Control.PoolClientDto> clients = [];
        for (int i = 0; i < 300; i++)
        {
            clients = await Cli.JsonAsync<List<Strata.Engine.Control.PoolClientDto>>("pool", "clients", "p");
            if (clients.Count == count)
                return;
            await Task.Delay(100);
        }
        Assert.HasCount(count, clients, "pool clients");
    }

    public string PidFile => Path.Combine(Engine.DataDir, "run", "strata-engine.pid");

    public string RasFile => Path.Combine(Engine.DataDir, "ras", "events.jsonl");

    /// <summary>One gauge or counter from the engine's /metrics (Prometheus text), e.g. strata_nbd_in_flight_bytes.</summary>
    public async Task<long> MetricAsync(string name)
    {
        using var http = Engine.Http();
        string text = await http.GetStringAsync("metrics");
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal))
                return (long)double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        throw new AssertFailedException($"/metrics has no {name}:\n{text}");
    }

    /// <summary>Waits (bounded; no timing is asserted) until the daemon's log has a line containing <paramref name="text"/>.</summary>
    public async Task WaitLogAsync(string text)
    {
        for (int i = 0; i < 300 && !Engine.Log.Contains(text, StringComparison.Ordinal); i++)
            await Task.Delay(100);
        StringAssert.Contains(Engine.Log, text);
    }

    public async ValueTask DisposeAsync()
    {
        await Engine.DisposeAsync();
        Directory.Delete(Dir, recursive: true);
    }
}

/// <summary>The real clients (Debian packages qemu-utils, libnbd-bin, fio), run as processes.</summary>
internal static class Tools
{
    private static readonly Dictionary<string, string> Packages = new()
    {
        ["qemu-img"] = "qemu-utils", ["qemu-io"] = "qemu-utils", ["nbdinfo"] = "libnbd-bin", ["nbdcopy"] = "libnbd-bin", ["fio"] = "fio",
    };

    public static string Require(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string p = Path.Combine(dir, tool);
            if (File.Exists(p))
                return p;
        }
        Assert.Inconclusive($"{tool} is not on PATH: install the Debian package {Packages.GetValueOrDefault(tool, tool)} (./build.sh setup does)");
        return tool;
    }

    public static async Task<CliResult> RunAsync(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        return await Proc.RunAsync(psi, TimeSpan.FromSeconds(120));
    }

    /// <summary>Runs a tool and asserts exit 0; returns its standard output.</summary>
    public static async Task<string> OkAsync(string tool, params string[] args)
    {
        var r = await RunAsync(tool, args);
        Assert.AreEqual(0, r.ExitCode, $"{tool} {string.Join(' ', args)}: {r}");
        return r.Stdout;
    }

    public static byte[] RandomFile(string path, int length, int seed)
    {
        Console.WriteLine($"{Path.GetFileName(path)}: {length} random bytes, seed {seed}");
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        File.WriteAllBytes(path, b);
        return b;
    }
}
