using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Control;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;
using Strata.Perf.Common;

namespace Strata.Perf.Nbd;

/// <summary>
/// Issue 17's copy row: a half-full sparse image copied out of each server with nbdcopy and with
/// qemu-img convert, which skip holes when the server reports them (base:allocation). Every server
/// serves the same bytes from the page cache: Strata on a buffered file target, qemu-nbd with
/// --cache=writeback, nbdkit's file plugin (its default).
/// </summary>
internal static class NbdCopyBenchmark
{
    public const string Usage = """
        strata-perf nbd-copy [options]
          A half-full sparse image (data in every other 4 MiB extent) copied out of Strata's NBD server,
          qemu-nbd and nbdkit with `nbdcopy URI null:` and `qemu-img convert -n URI null-co`; each copy
          runs --runs times per server, interleaved, and the fastest counts.
          --image-size SIZE  image size (default 1G)
          --chunk-size SIZE  Strata's chunk size (default 128K, the daemon's default)
          --runs N           copies per tool and server (default 3)
          --servers LIST     strata,qemu-nbd,nbdkit (default all)
          --tools LIST       nbdcopy,qemu-img (default both)
          --strata-io MODE   buffered (default: the page cache, as the peers serve) or direct (O_DIRECT,
                             the engine's default for file targets: reads are the device's, not copies)
          --hold             start the servers, print their URIs and wait for a line on stdin (to run or
                             trace a client by hand), then stop them without copying
          --dir DIR          where the target and peer files go (default perf/results)
        """;

    private const int Extent = 4 << 20;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        long size = cl.Bytes("image-size", 1L << 30);
        int chunk = (int)cl.Bytes("chunk-size", 128 << 10);
        int runs = cl.Int("runs", 3);
        bool hold = cl.Flag("hold");
        string io = cl.String("strata-io") ?? "buffered";
        if (io is not ("buffered" or "direct"))
            throw new PerfUsageException($"--strata-io: unknown mode '{io}' (buffered, direct)");
        string dir = cl.String("dir") ?? Path.Combine("perf", "results");
        var servers = (cl.String("servers") ?? "strata,qemu-nbd,nbdkit").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var toolNames = (cl.String("tools") ?? "nbdcopy,qemu-img").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (toolNames.FirstOrDefault(t => t is not ("nbdcopy" or "qemu-img")) is { } unknownTool)
            throw new PerfUsageException($"--tools: unknown tool '{unknownTool}' (nbdcopy, qemu-img)");
        cl.ThrowIfUnused();
        if (size % (2L * Extent) != 0)
            throw new PerfUsageException($"--image-size must be a multiple of {2 * Extent >> 20} MiB");
        Directory.CreateDirectory(dir);
        string peerFile = Path.GetFullPath(Path.Combine(dir, "nbd-copy-peer.raw"));
        string targetFile = Path.GetFullPath(Path.Combine(dir, "nbd-copy-target.dat"));
        WritePeerFile(peerFile, size);
        Console.WriteLine($"nbd-copy: image {size >> 20} MiB, data in every other {Extent >> 20} MiB extent ({size / 2 >> 20} MiB of data), {runs} copies per tool and server, fastest counts");
        Console.WriteLine($"tools:  {Version("nbdcopy", "--version")}; {Version("qemu-img", "--version")}");
        Console.WriteLine($"host:   {Environment.ProcessorCount} CPUs, {Environment.OSVersion.VersionString}, .NET {Environment.Version}");

        var list = new List<(string Name, INbdServerUnderTest Server)>();
        try
        {
            if (servers.Contains("strata"))
                list.Add(("strata", await StrataSparse.StartAsync(targetFile, size, chunk, direct: io == "direct")));
            if (servers.Contains("qemu-nbd"))
                list.Add(("qemu-nbd", await PeerNbd.StartQemuNbdCachedAsync(peerFile)));
            if (servers.Contains("nbdkit"))
                list.Add(("nbdkit", await PeerNbd.StartNbdkitAsync(peerFile)));
            foreach (var (name, s) in list)
                Console.WriteLine($"{name}: {s.Description}");
            Console.WriteLine();
            if (hold)
            {
                foreach (var (name, s) in list)
                    Console.WriteLine($"{name} {s.Uri}");
                Console.WriteLine($"holding (this process: pid {Environment.ProcessId}): press Enter (or close stdin) to stop");
                Console.ReadLine();
                return 0;
            }

            var tools = new (string Name, Func<string, string[]> Args, string Exe)[]
            {
                ("nbdcopy", uri => [uri, "null:"], "nbdcopy"),
                ("qemu-img convert", uri => ["convert", "-n", "-f", "raw", uri, "--target-image-opts", $"driver=null-co,size={size}"], "qemu-img"),
            }.Where(t => toolNames.Contains(t.Exe)).ToArray();
            var best = new Dictionary<(string, string), (double Seconds, double Cpu, double Others)>();
            for (int run = 0; run < runs; run++)
            {
                foreach (var tool in tools)
                {
                    foreach (var (name, s) in list)
                    {
                        HostWriteback.Sync();
                        var cpu0 = s.CpuTime();
                        var host0 = HostCpuSample.Now();
                        var sw = Stopwatch.StartNew();
                        var (code, _, err) = ExternalTool.Run(tool.Exe, tool.Args(s.Uri), TimeSpan.FromMinutes(10));
                        double seconds = sw.Elapsed.TotalSeconds;
                        if (code != 0)
                            throw new PerfUsageException($"{tool.Name} from {name} failed ({code}): {err.Trim()}");
                        double cpu = (s.CpuTime() - cpu0).TotalSeconds;
                        double others = HostCpuSample.BusyPercent(host0, HostCpuSample.Now());
                        Console.WriteLine($"  {tool.Name,-16} {name,-9} run {run + 1}: {seconds:F2} s, {size / 1e6 / seconds:F0} MB/s of image, server cpu {cpu:F2} s, machine busy {others:F0}% of a CPU");
                        if (!best.TryGetValue((tool.Name, name), out var b) || seconds < b.Seconds)
                            best[(tool.Name, name)] = (seconds, cpu, others);
                    }
                }
            }

            Console.WriteLine();
            var table = new TablePrinter(["copy", .. list.Select(l => l.Name), "best peer", "strata / best peer"]);
            foreach (var tool in tools)
            {
                var cells = new List<string> { tool.Name };
                cells.AddRange(list.Select(l => $"{best[(tool.Name, l.Name)].Seconds:F2} s ({size / 1e6 / best[(tool.Name, l.Name)].Seconds:F0} MB/s, cpu {best[(tool.Name, l.Name)].Cpu:F2} s)"));
                var peers = list.Where(l => l.Name != "strata").Select(l => (l.Name, best[(tool.Name, l.Name)].Seconds)).ToList();
                if (peers.Count > 0 && list.Any(l => l.Name == "strata"))
                {
                    var bp = peers.MinBy(p => p.Seconds);
                    cells.Add(bp.Name);
                    cells.Add($"{bp.Seconds / best[(tool.Name, "strata")].Seconds:F2}x");
                }
                else
                {
                    cells.Add("-");
                    cells.Add("-");
                }
                table.Add([.. cells]);
            }
            Console.WriteLine(table);
            Console.WriteLine("ratio = the best peer's time / Strata's (higher is better; target >= 1.00x). server cpu: CPU time of the server process during the copy (Strata's includes this idle harness).");
            return 0;
        }
        finally
        {
            foreach (var (_, s) in list)
                await s.DisposeAsync();
        }
    }

    private static string Version(string tool, string arg)
    {
        try
        {
            var (_, o, _) = ExternalTool.Run(tool, [arg], TimeSpan.FromSeconds(10));
            return o.Split('\n')[0].Trim();
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new PerfUsageException($"{tool} not found on PATH (apt-get install {(tool == "nbdcopy" ? "libnbd-bin" : "qemu-utils")})");
        }
    }

    /// <summary>The data of extent <paramref name="index"/> (the same bytes for every server).</summary>
    private static void FillExtent(long index, byte[] buffer) => new Random((int)index + 17).NextBytes(buffer);

    /// <summary>The peers' raw file: sparse, data in every other extent (rewritten each run: the page cache then holds it, as Strata's does).</summary>
    private static void WritePeerFile(string path, long size)
    {
        File.Delete(path);
        using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        f.SetLength(size);
        var buffer = new byte[Extent];
        for (long i = 0; i < size / Extent; i += 2)
        {
            FillExtent(i, buffer);
            f.Position = i * Extent;
            f.Write(buffer);
        }
    }

    /// <summary>Strata's NBD server over one file target (buffered unless --strata-io direct) holding the same sparse image.</summary>
    private sealed class StrataSparse : INbdServerUnderTest
    {
        private readonly BenchDevices _devices;
        private readonly StorageEngine _engine;
        private readonly StrataMetrics _metrics;
        private readonly NbdServer _server;
        private readonly string _dir;

        private StrataSparse(BenchDevices devices, StorageEngine engine, StrataMetrics metrics, NbdServer server, string dir, string description)
        {
            _devices = devices;
            _engine = engine;
            _metrics = metrics;
            _server = server;
            _dir = dir;
            Description = description;
        }

        public string Name => "strata";
        public string Description { get; }
        public string Uri => _server.Listeners[0].UriFor("bench/c/img");
        public TimeSpan CpuTime() => Process.GetCurrentProcess().TotalProcessorTime;

        public static async Task<StrataSparse> StartAsync(string targetFile, long size, int chunk, bool direct)
        {
            File.Delete(targetFile);
            using (var f = new FileStream(targetFile, FileMode.CreateNew, FileAccess.Write))
                f.SetLength(size + size / 2 + (256L << 20));
            string opts = $"direct={(direct ? 1 : 0)}&qd=128";
            var devices = new BenchDevices([$"file:{targetFile}?{opts}"], pollers: 1, pollerThreads: 1, busyPollMicros: null);
            try
            {
                var engine = await StorageEngine.FormatAsync(devices.Devices, force: true);
                var pool = await engine.CreatePoolAsync("bench", size + size / 4, 1, new PoolCreateOptions { MinChunkSize = Math.Min(chunk, 64 * 1024) });
                await pool.CreateContainerAsync("c");
                var image = await pool.CreateImageAsync("c", "img", size, chunk);
                var buffer = new byte[Extent];
                for (long i = 0; i < size / Extent; i += 2)
                {
                    FillExtent(i, buffer);
                    for (int at = 0; at < Extent; at += 1 << 20)
                        await image.WriteAsync(i * Extent + at, buffer.AsMemory(at, 1 << 20));
                }
                var metrics = new StrataMetrics(() => (0, 0, 0), () => 1);
                string dir = Directory.CreateTempSubdirectory("strata-nbd-copy-").FullName;
                var catalog = new NbdExportCatalog(engine, async Task<IImageIo> (p, c, i) => new MeteredImage((await engine.OpenPoolAsync(p)).OpenImage(c, i), metrics));
                var server = NbdServer.Start([NbdListenerAddress.Unix(Path.Combine(dir, "strata.sock"))], catalog);
                string desc = $"in-process NbdServer (unix socket), StorageEngine on one file target file:...?{opts} ({(direct ? "O_DIRECT" : "page cache")}), image {size >> 20} MiB with {chunk >> 10} KiB chunks, CRC32C verified on every read";
                return new StrataSparse(devices, engine, metrics, server, dir, desc);
            }
            catch
            {
                devices.Dispose();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _server.DisposeAsync();
            await _engine.DisposeAsync();
            _metrics.Dispose();
            _devices.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }
}
