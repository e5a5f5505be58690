using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using Strata.Engine.Control;
using Strata.Engine.Device;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;
using Strata.Perf.Common;

namespace Strata.Perf.Nbd;

/// <summary>One NBD server under test: where fio connects, and how much CPU it has used so far.</summary>
internal interface INbdServerUnderTest : IAsyncDisposable
{
    string Name { get; }

    /// <summary>What exactly runs (command line or configuration), for the report.</summary>
    string Description { get; }

    string Uri { get; }

    /// <summary>CPU time the server has consumed since it started.</summary>
    TimeSpan CpuTime();
}

/// <summary>
/// Strata's NBD server over a StorageEngine on file targets, in this process, instrumented like
/// the daemon (MeteredImage with a Prometheus listener attached).
/// </summary>
internal sealed class StrataNbd : INbdServerUnderTest
{
    private readonly BenchDevices _devices;
    private readonly StorageEngine _engine;
    private readonly StrataMetrics _metrics;
    private readonly PrometheusExporter _exporter;
    private readonly NbdServer _server;
    private readonly NbdServer _writethrough;
    private readonly string _dir;

    private readonly Pool _pool;

    private StrataNbd(BenchDevices devices, StorageEngine engine, Pool pool, StrataMetrics metrics, PrometheusExporter exporter, NbdServer server, NbdServer writethrough,
        string dir, string description)
    {
        _pool = pool;
        _writethrough = writethrough;
        _devices = devices;
        _engine = engine;
        _metrics = metrics;
        _exporter = exporter;
        _server = server;
        _dir = dir;
        Description = description;
    }

    public string Name => "strata";

    public string Description { get; }

    public string Uri => _server.Listeners[0].UriFor("bench/c/img");

    public TimeSpan CpuTime() => Process.GetCurrentProcess().TotalProcessorTime;

    /// <summary>Writeback writes the pool wrote in place so far (docs/format.md, "Overwriting a writeback extent in place").</summary>
    public long InPlaceWrites => _pool.Log.InPlaceWrites;

    /// <summary>Commit rounds the pool's log wrote so far, and the records in them.</summary>
    public (long Rounds, long Records) LogRounds => (_pool.Log.Stats.Rounds, _pool.Log.Stats.Records);

    public static async Task<StrataNbd> StartAsync(NbdBenchOptions o, int chunkSize, bool buffered, BenchTls? tls = null)
    {
        // One polling thread for the targets, as strata-engine runs its file targets.
        var devices = new BenchDevices(Enumerable.Range(0, o.Targets).Select(i => $"file:{o.TargetPath(chunkSize, buffered, i)}?direct={(buffered ? 0 : 1)}&qd=128"),
            o.Pollers, pollerThreads: 1, o.BusyPollMicros, o.CompletionBatch, o.InterruptPlacement);
        try
        {
            var engineOptions = new StorageEngineOptions();
            if (o.WritebackFlush is { } wb)
                engineOptions = engineOptions with { WritebackFlushInterval = wb };
            if (o.DeferWritebackFrom is { } from)
                engineOptions = engineOptions with { DeferWritebackFromChunkSize = from };
            var engine = await StorageEngine.FormatAsync(devices.Devices, engineOptions, force: true);
            // Copy-on-write needs free extents beside the image's chunks (--headroom).
            var pool = await engine.CreatePoolAsync("bench", o.PoolSize, 1, new PoolCreateOptions { MinChunkSize = Math.Min(chunkSize, 64 * 1024) });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "img", o.ImageSize, chunkSize);
            Console.Write($"  strata: filling the {FormatSize(o.ImageSize)} image ({Chunk(chunkSize)} chunks) through the store ...");
            var sw = Stopwatch.StartNew();
            await ImageFill.FillAsync(image);
            Console.WriteLine($" {o.ImageSize / 1e6 / sw.Elapsed.TotalSeconds:F0} MB/s");
            // A checkpoint now, as a server running for a while has taken many: the first one makes the
            // arrays checkpoints are captured and laid out in (a few MiB, once per pool), which otherwise
            // fell in the first row's measured window as large-object allocations and a gen-2 collection.
            await pool.Log.CheckpointAsync();
            var metrics = new StrataMetrics(() => (0, 0, 0), () => 1);
            var exporter = new PrometheusExporter(StrataMetrics.MeterName);
            string dir = Directory.CreateTempSubdirectory("strata-nbd-bench-").FullName;
            var catalog = new NbdExportCatalog(engine, async Task<IImageIo> (p, c, i) => new MeteredImage((await engine.OpenPoolAsync(p)).OpenImage(c, i), metrics));
            // With --tls: loopback TCP requiring TLS with client certificates, as the peers are run then.
            NbdListenerAddress Listener(string sock) => tls == null
                ? NbdListenerAddress.Unix(Path.Combine(dir, sock))
                : NbdListenerAddress.Loopback(0) with { Tls = tls.StrataSettings };
            var options = new NbdServerOptions();
            if (o.ParallelPayloadBytes is { } parallel)
                options = options with { ParallelPayloadBytes = parallel };
            var server = NbdServer.Start([Listener("strata.sock")], catalog, options);
            // The same image behind a second server with the write cache off (nbd_write_cache: writethrough):
            // every write durable before its reply, for the table against peers that do the same.
            var writethrough = NbdServer.Start([Listener("strata-wt.sock")], catalog, options with { WriteCache = false });
            string desc = $"in-process NbdServer ({(tls == null ? "unix socket" : "loopback TCP, tls: require with client certificates")}), StorageEngine on {o.Targets} file target(s) file:...?direct={(buffered ? 0 : 1)}&qd=128, {o.Pollers} queue pair(s) per target on one polling thread, "
                + $"image {FormatSize(o.ImageSize)} with {Chunk(chunkSize)} chunks in a {FormatSize(o.PoolSize)} pool ({o.Headroom}% headroom), rf 1, CRC32C verified on every read, writes without FUA writeback (durable at FLUSH)";
            return new StrataNbd(devices, engine, pool, metrics, exporter, server, writethrough, dir, desc);
        }
        catch
        {
            devices.Dispose();
            throw;
        }
    }

    /// <summary>The same image served with the write cache off: every write durable when answered.</summary>
    public INbdServerUnderTest Writethrough => new View(this, _writethrough, Description.Replace("writes without FUA writeback (durable at FLUSH)", "write cache off: every write durable on ack", StringComparison.Ordinal));

    private sealed class View(StrataNbd owner, NbdServer server, string description) : INbdServerUnderTest
    {
        public string Name => "strata-wt";
        public string Description => description;
        public string Uri => server.Listeners[0].UriFor("bench/c/img");
        public TimeSpan CpuTime() => owner.CpuTime();
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        await _writethrough.DisposeAsync();
        await _server.DisposeAsync();
        await _engine.DisposeAsync();
        _exporter.Dispose();
        _metrics.Dispose();
        _devices.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    internal static string FormatSize(long bytes) => Device.DeviceBenchmark.FormatSize(bytes);

    private static string Chunk(int bytes) => bytes >= 1 << 20 ? $"{bytes >> 20} MiB" : $"{bytes >> 10} KiB";
}

/// <summary>A peer server run as a child process serving the raw image file on a Unix socket.</summary>
internal sealed class PeerNbd : INbdServerUnderTest
{
    private readonly Process _process;
    private readonly string _dir;

    private PeerNbd(string name, Process process, string dir, string uri, string description)
    {
        Name = name;
        _process = process;
        _dir = dir;
        Uri = uri;
        Description = description;
    }

    public string Name { get; }

    public string Description { get; }

    public string Uri { get; }

    /// <summary>qemu-nbd with O_DIRECT and io_uring, as a production qemu-nbd export of a raw file would run.</summary>
    public static Task<PeerNbd> StartQemuNbdAsync(string file, BenchTls? tls = null) => StartAsync("qemu-nbd", "qemu-nbd", tls,
        listen => ["-f", "raw", "--persistent", "--shared=8", .. listen, "--cache=none", "--aio=io_uring", "--discard=unmap", file]);

    /// <summary>qemu-nbd through the page cache (--cache=writeback), for the copy row where every server reads from memory.</summary>
    public static Task<PeerNbd> StartQemuNbdCachedAsync(string file) => StartAsync("qemu-nbd", "qemu-nbd", null,
        listen => ["-f", "raw", "--persistent", "--shared=8", .. listen, "--cache=writeback", "--discard=unmap", file]);

    /// <summary>qemu-nbd writing through (O_DIRECT|O_DSYNC): every write durable before its reply, as Strata's are.</summary>
    public static Task<PeerNbd> StartQemuNbdDurableAsync(string file, BenchTls? tls = null) => StartAsync("qemu-nbd-dsync", "qemu-nbd", tls,
        listen => ["-f", "raw", "--persistent", "--shared=8", .. listen, "--cache=directsync", "--aio=io_uring", "--discard=unmap", file]);

    /// <summary>nbdkit's file plugin with its defaults (page cache, as `nbdkit -U SOCK file FILE` runs).</summary>
    public static Task<PeerNbd> StartNbdkitAsync(string file, BenchTls? tls = null) => StartAsync("nbdkit", "nbdkit", tls,
        listen => ["-f", "--exit-with-parent", .. listen, "file", file]);

    /// <summary>nbdkit's file plugin behind the fua filter in force mode: every write is flushed before its reply.</summary>
    public static Task<PeerNbd> StartNbdkitDurableAsync(string file, BenchTls? tls = null) => StartAsync("nbdkit-fua", "nbdkit", tls,
        listen => ["-f", "--exit-with-parent", .. listen, "--filter=fua", "file", file, "fuamode=force"]);

    /// <summary>
    /// Where the peer listens: a Unix socket, or with --tls loopback TCP requiring TLS with client
    /// certificates checked against the CA (qemu-nbd's tls-creds-x509 verify-peer, nbdkit's --tls-verify-peer).
    /// </summary>
    private static string[] ListenArgs(string exe, string sock, int port, BenchTls? tls) => (exe, tls) switch
    {
        ("qemu-nbd", null) => ["-k", sock],
        (_, null) => ["-U", sock],
        ("qemu-nbd", _) => ["-b", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture),
            "--object", $"tls-creds-x509,id=tls0,dir={tls.ServerDir},endpoint=server,verify-peer=on", "--tls-creds", "tls0"],
        _ => ["-i", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "--tls=require", $"--tls-certificates={tls.ServerDir}", "--tls-verify-peer"],
    };

    private static async Task<PeerNbd> StartAsync(string name, string exe, BenchTls? tls, Func<string[], string[]> args)
    {
        string dir = Directory.CreateTempSubdirectory("strata-nbd-peer-").FullName;
        string sock = Path.Combine(dir, "nbd.sock");
        int port = tls == null ? 0 : FreePort();
        var psi = new ProcessStartInfo(exe) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        var argv = args(ListenArgs(exe, sock, port, tls));
        foreach (var a in argv)
            psi.ArgumentList.Add(a);
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new PerfUsageException($"could not start {exe}");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new PerfUsageException($"{exe} not found on PATH: install it (apt-get install {(exe == "qemu-nbd" ? "qemu-utils" : "nbdkit")})");
        }
        var stderr = p.StandardError.ReadToEndAsync();
        _ = p.StandardOutput.ReadToEndAsync();
        for (int i = 0; i < 200; i++)
        {
            if (p.HasExited)
                throw new PerfUsageException($"{exe} exited with {p.ExitCode}: {(await stderr).Trim()}");
            if (tls == null ? File.Exists(sock) && CanConnect(sock) : CanConnect(port))
                return new PeerNbd(name, p, dir, tls == null ? $"nbd+unix:///?socket={sock}" : $"nbds://127.0.0.1:{port}/", $"{exe} {string.Join(' ', argv)}");
            await Task.Delay(50);
        }
        p.Kill(entireProcessTree: true);
        throw new PerfUsageException($"{exe} did not start listening within 10 s");
    }

    private static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    private static bool CanConnect(int port)
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.Connect(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static bool CanConnect(string sock)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(sock));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public TimeSpan CpuTime()
    {
        // utime + stime of the process (fields 14 and 15 of /proc/PID/stat, in clock ticks of 1/100 s).
        try
        {
            string stat = File.ReadAllText($"/proc/{_process.Id}/stat");
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            long ticks = long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
            return TimeSpan.FromSeconds(ticks / 100.0);
        }
        catch (IOException)
        {
            return TimeSpan.Zero;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
        Directory.Delete(_dir, recursive: true);
    }
}
