using System.Globalization;
using System.Text.Json;
using Strata.Perf.Common;
using Strata.Perf.Device;

namespace Strata.Perf.Nbd;

/// <summary>
/// The "nbd" subcommand: fio's nbd engine against Strata's NBD server, qemu-nbd and nbdkit's
/// file plugin, each serving a same-size image on this machine, in one run; every figure and
/// Strata's ratio to the best peer per row.
/// </summary>
public static class NbdBenchmark
{
    public const string Usage = """
        nbd options:
          --dir DIR          files: DIR/nbd-target-CHUNK[-buf]-N.dat (Strata's targets), DIR/nbd-peer.raw (the peers' image)
                             (default perf/results/, else /var/tmp/strata-perf/)
          --image-size SIZE  image size for every server (default 512M)
          --targets N        Strata file targets (default 1, like the peers' one file), each --target-size (default 2G)
          --target-size SIZE
          --headroom PCT     Strata's pool: the image plus PCT% of it free for copy-on-write (default 200; writeback
                             writes hold the extents they replaced until the next flush round, a second at most)
          --writeback-flush-ms N  the engine's writeback timer: writes without FUA become durable within N ms
                             (StorageEngineOptions.WritebackFlushInterval; default the engine's 1000)
          --defer-writeback-from SIZE  small writes without FUA into durable chunks of at least SIZE are deferred
                             writes (logged and answered, then written in place) instead of copies on write
                             (default: the engine's, 128K on O_DIRECT targets, none on page-cache ones; 1G: none)
          --chunk-size LIST  Strata image chunk size(s) (default 4K,1M: small chunks suit small random I/O,
                             large ones sequential I/O); one fresh pool and image per size
          --runtime SEC      measured seconds per row per server (default 10; after 1 s fio ramp)
          --quick            3 s per row per server
          --rows LIST        comma-separated filters on row names (randread-4k-qd32, randwrite-4k-qd32,
                             read-1m-qd8, write-1m-qd8; and write-4k-qd1, run only when named)
          --servers LIST     strata,qemu-nbd,nbdkit (default all three)
          --no-durable-peers skip the write rows against qemu-nbd --cache=directsync and nbdkit --filter=fua fuamode=force
          --pollers N        queue pairs per Strata target device, all on one polling thread as in the engine (default 1)
          --busy-poll-us N   a poller's busy-poll window without completions before it waits in the kernel
                             (default: DeviceOptions.BusyPollMicros, as the engine)
          --batch N          completions a Strata poller reaps per poll (default: DeviceOptions.CompletionBatch, as the engine)
          --irq-cpus MODE    the polling thread joins, avoids or ignores (default: the engine's, ignore) the disk's interrupt CPUs
          --parallel-writes SIZE  Strata's writes of SIZE or more run on the connection's worker thread beside
                             the receive loop (NbdServerOptions.ParallelPayloadBytes; 0: none; default: the server's)
          --strata-io LIST   direct,buffered (default both): Strata's file targets with O_DIRECT (direct=1, as
                             qemu-nbd --cache=none) and without (direct=0: the page cache, as nbdkit's file plugin)
          --rate-iops N      cap every row at N I/Os per second (fio --rate_iops): compares CPU per I/O (the
                             "us/io" figure) at equal load, which varies far less than peak rates on a shared machine
          --wait-idle SEC    before each run, wait up to SEC for the machine to be idle
          --warmup SEC       before each measured row, the same fio job for SEC against the same server, not measured
                             (default 0: Strata's JIT then compiles the row's code inside the row, up to a second of
                             its CPU in a 3 s row)
          --json FILE        write every figure as JSON
          --alloc-types      sample which managed types the process allocates during each Strata row (GC
                             AllocationTick; the in-process server's, and this harness's while it awaits fio)
          --tls              every server on loopback TCP requiring TLS with client certificates (a throwaway CA
                             made for the run): Strata tls: require, qemu-nbd tls-creds-x509 verify-peer=on,
                             nbdkit --tls=require --tls-verify-peer; fio connects with nbds://
        """;

    public static readonly DeviceRow[] AllRows =
    [
        new("randread-4k-qd32", "4K rand read QD32", false, true, 4096, 32),
        new("randwrite-4k-qd32", "4K rand write QD32", true, true, 4096, 32),
        new("read-1m-qd8", "1M seq read QD8", false, false, 1 << 20, 8),
        new("write-1m-qd8", "1M seq write QD8", true, false, 1 << 20, 8),
    ];

    /// <summary>Rows run only when --rows names them: sequential small writes (a run of writes into each chunk in turn).</summary>
    public static readonly DeviceRow[] ExtraRows =
    [
        new("write-4k-qd1", "4K seq write QD1", true, false, 4096, 1),
    ];

    private sealed record Run(string Server, string Description, Dictionary<string, EngineResult> Results);

    /// <summary>With --tls: what fio runs under so libnbd finds the client certificate (BenchTls.FioPrefix).</summary>
    private static IReadOnlyList<string>? _fioPrefix;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var o = NbdBenchOptions.From(cl);
        cl.ThrowIfUnused();
        string fioVersion = Fio.RequireInstalled();
        Precondition(o);

        Console.WriteLine($"nbd benchmark: image {StrataNbd.FormatSize(o.ImageSize)} per server, {o.Runtime.TotalSeconds:F0} s per row per server after fio's 1 s ramp; one fio job, one connection each");
        Console.WriteLine($"fio:    {fioVersion}, --ioengine=nbd {string.Join(' ', FioArgs())}");
        Console.WriteLine($"host:   {Environment.ProcessorCount} CPUs, {Environment.OSVersion.VersionString}, .NET {Environment.Version}");
        Console.WriteLine();

        // Every server serves every row in turn, row by row, so a change in the machine's load (it
        // is shared) falls on all of them alike. Strata's servers stay up (filling an image takes
        // a while); each peer is started for its row and stopped after it.
        var strata = new List<(string Name, StrataNbd Server)>();
        var runs = new List<Run>();
        var durable = new List<Run>();
        var writeRows = o.Rows.Where(r => r.Write).ToArray();
        using var tls = o.Tls ? BenchTls.Create() : null;
        _fioPrefix = tls?.FioPrefix;
        if (tls != null)
            Console.WriteLine($"tls:    every server on 127.0.0.1 requiring TLS with client certificates; fio runs as: {string.Join(' ', tls.FioPrefix)} fio ...");
        try
        {
            foreach (var (chunk, buffered) in o.RunStrata ? o.StrataConfigs : [])
            {
                string name = $"strata {NbdBenchOptions.ChunkLabel(chunk)}{(buffered ? " buf" : "")}";
                var server = await StrataNbd.StartAsync(o, chunk, buffered, tls);
                strata.Add((name, server));
                runs.Add(new Run(name, server.Description, []));
                Console.WriteLine($"{name}: {server.Description}");
            }
            var peers = new List<(string Name, Func<Task<PeerNbd>> Start, bool Durable)>();
            if (o.RunQemuNbd)
                peers.Add(("qemu-nbd", () => PeerNbd.StartQemuNbdAsync(o.PeerFile, tls), false));
            if (o.RunNbdkit)
                peers.Add(("nbdkit", () => PeerNbd.StartNbdkitAsync(o.PeerFile, tls), false));
            // The write rows again against peers set up to acknowledge only durable writes, as Strata does.
            if (o.DurablePeers && o.RunQemuNbd && writeRows.Length > 0)
                peers.Add(("qemu-nbd-dsync", () => PeerNbd.StartQemuNbdDurableAsync(o.PeerFile, tls), true));
            if (o.DurablePeers && o.RunNbdkit && writeRows.Length > 0)
                peers.Add(("nbdkit-fua", () => PeerNbd.StartNbdkitDurableAsync(o.PeerFile, tls), true));
            foreach (var (name, _, isDurable) in peers)
                (isDurable ? durable : runs).Add(new Run(name, "", []));
            Console.WriteLine();

            // Strata's write rows again with the write cache off, against the durable peers.
            var writethrough = o.DurablePeers && writeRows.Length > 0
                ? strata.Where(s => !s.Name.EndsWith(" buf", StringComparison.Ordinal)).Select(s => (Name: s.Name.Replace("strata", "strata-wt", StringComparison.Ordinal), Server: s.Server.Writethrough)).ToList()
                : [];
            foreach (var (name, server) in writethrough)
                durable.Add(new Run(name, server.Description, []));
            foreach (var row in o.Rows)
            {
                foreach (var (name, server) in strata)
                    runs.Single(r => r.Server == name).Results[row.Name] = await RunRowAsync(o, server, name, row);
                if (row.Write)
                    foreach (var (name, server) in writethrough)
                        durable.Single(r => r.Server == name).Results[row.Name] = await RunRowAsync(o, server, name, row);
                foreach (var (name, start, isDurable) in peers)
                {
                    if (isDurable && !row.Write)
                        continue;
                    await using var server = await start();
                    var list = isDurable ? durable : runs;
                    int at = list.FindIndex(r => r.Server == name);
                    list[at] = list[at] with { Description = server.Description };
                    list[at].Results[row.Name] = await RunRowAsync(o, server, name, row);
                }
            }
        }
        finally
        {
            foreach (var (_, server) in strata)
                await server.DisposeAsync();
        }

        Console.WriteLine();
        foreach (var r in runs.Concat(durable))
            Console.WriteLine($"{r.Server,-14} {r.Description}");
        Console.WriteLine();
        Console.Write(BuildTable(o.Rows, runs));
        Console.WriteLine("ratio = Strata / the best peer on that row (higher is better; target >= 1.00x). Latency: fio's total latency (--lat_percentiles=1).");
        if (durable.Count > 0)
        {
            Console.WriteLine();
            Console.WriteLine("write rows with every write durable before its reply (Strata with the write cache off, nbd_write_cache: writethrough):");
            Console.Write(BuildTable(writeRows, durable));
        }
        Console.WriteLine($"server cpu: CPU time the server process used during the row, % of one CPU ({Environment.ProcessorCount} here; Strata's includes this harness, idle while fio runs).");
        Console.WriteLine("fio sends no FLUSH or FUA here: Strata (writeback), qemu-nbd --cache=none and nbdkit answer writes before any device flush; the second table's servers flush first.");
        double worst = runs.SelectMany(r => r.Results.Values).Select(r => r.OtherCpuPercent).Where(double.IsFinite).DefaultIfEmpty(0).Max();
        if (worst > 25)
            Console.WriteLine($"warning: other processes used up to {worst:F0}% CPU during the runs; ratios on a busy machine are not comparable.");
        if (o.JsonPath != null)
        {
            WriteJson(o, fioVersion, runs, durable);
            Console.WriteLine($"wrote {o.JsonPath}");
        }
        return 0;
    }

    private static async Task<EngineResult> RunRowAsync(NbdBenchOptions o, INbdServerUnderTest server, string name, DeviceRow row)
    {
        Console.Write($"  {row.Name,-18} {name,-14} ...");
        // Unmeasured: the server's code for this row is compiled (Strata's JIT) and its caches warm.
        if (o.Warmup > TimeSpan.Zero)
            await Task.Run(() => Fio.RunJob(JobArgs(o, row, server.Uri, o.Warmup), o.Warmup + TimeSpan.FromSeconds(120), _fioPrefix));
        // The previous row's page-cache writes reach the disk before this one is measured.
        await Task.Run(HostWriteback.Sync);
        if (o.WaitIdle > TimeSpan.Zero)
            await HostIdle.WaitAsync(o.WaitIdle);
        var h0 = HostCpuSample.Now();
        var c0 = server.CpuTime();
        long inPlace0 = (server as StrataNbd)?.InPlaceWrites ?? 0;
        var rounds0 = (server as StrataNbd)?.LogRounds ?? default;
        // Strata's server is in this process: what it allocated during the row (the harness itself only awaits fio).
        long alloc0 = GC.GetTotalAllocatedBytes(precise: true);
        int[] gcs0 = [GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2)];
        using var sampler = o.AllocTypes && server.Name.StartsWith("strata", StringComparison.Ordinal) ? new AllocationSampler() : null;
        // fio runs as a child process; awaiting it off this thread leaves the in-process server its threads.
        var f = await Task.Run(() => Fio.RunJob(JobArgs(o, row, server.Uri), o.Runtime + TimeSpan.FromSeconds(120), _fioPrefix));
        sampler?.Report($"{row.Name} {server.Name}");
        double serverCpu = 100.0 * (server.CpuTime() - c0).TotalSeconds / (o.Runtime.TotalSeconds + 1);
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - alloc0;
        // fio counts I/Os after its 1 s ramp; the server also served the ramp's (at about the same rate).
        double? bytesPerOp = server.Name.StartsWith("strata", StringComparison.Ordinal) && f.Iops > 0 ? allocated / (f.Iops * (o.Runtime.TotalSeconds + 1)) : null;
        double fioCpu = f.CpuUserPct + f.CpuSysPct;
        var r = new EngineResult(f.Iops, f.BytesPerSecond, f.ClatP50Ns, f.ClatP99Ns, f.ClatMeanNs, serverCpu, bytesPerOp,
            (long)(f.Iops * o.Runtime.TotalSeconds), f.CommandLine)
        {
            OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - serverCpu - fioCpu),
        };
        Console.WriteLine($" {Throughput(row, r)}, p50 {TablePrinter.Latency(r.P50Ns)}, p99 {TablePrinter.Latency(r.P99Ns)}, server cpu {serverCpu:F0}% ({CpuMicrosPerIo(serverCpu, r.Iops):F1} us/io), fio cpu {fioCpu:F0}%, others {r.OtherCpuPercent:F0}%"
            + (bytesPerOp is { } b ? $", {b:F0} B/op, GCs {GC.CollectionCount(0) - gcs0[0]}/{GC.CollectionCount(1) - gcs0[1]}/{GC.CollectionCount(2) - gcs0[2]}" : "")
            + (server is StrataNbd s && s.InPlaceWrites > inPlace0 ? $", writes in place {s.InPlaceWrites - inPlace0}" : "")
            + (server is StrataNbd l ? $", log rounds {l.LogRounds.Rounds - rounds0.Rounds} ({l.LogRounds.Records - rounds0.Records} records)" : ""));
        return r;
    }

    /// <summary>Server CPU time per I/O in microseconds, from the row's CPU percentage (of one CPU) and rate.</summary>
    private static double CpuMicrosPerIo(double cpuPercent, double iops) => iops > 0 ? cpuPercent / 100 * 1e6 / iops : double.NaN;

    /// <summary>fio options common to every server.</summary>
    private static List<string> FioArgs() =>
    [
        "--randrepeat=0", "--norandommap", "--time_based", "--ramp_time=1", "--group_reporting",
        "--percentile_list=50:99", "--lat_percentiles=1",
    ];

    private static List<string> JobArgs(NbdBenchOptions o, DeviceRow row, string uri, TimeSpan? runtime = null)
    {
        var args = new List<string>
        {
            "--name=" + row.Name, "--ioengine=nbd", "--uri=" + uri,
            "--rw=" + row.FioRw, "--bs=" + row.BlockSize.ToString(CultureInfo.InvariantCulture),
            "--iodepth=" + row.QueueDepth.ToString(CultureInfo.InvariantCulture),
            "--size=" + o.ImageSize.ToString(CultureInfo.InvariantCulture),
            "--runtime=" + (runtime ?? o.Runtime).TotalSeconds.ToString(CultureInfo.InvariantCulture),
        };
        if (o.RateIops > 0)
            args.Add("--rate_iops=" + o.RateIops.ToString(CultureInfo.InvariantCulture));
        args.AddRange(FioArgs());
        return args;
    }

    private static string BuildTable(DeviceRow[] rows, List<Run> runs)
    {
        var strata = runs.Where(r => r.Server.StartsWith("strata", StringComparison.Ordinal)).ToList();
        var peers = runs.Where(r => !r.Server.StartsWith("strata", StringComparison.Ordinal)).ToList();
        var headers = new List<string> { "row" };
        headers.AddRange(runs.Select(r => r.Server));
        headers.Add("best peer");
        headers.AddRange(strata.Select(s => $"{s.Server} ratio"));
        headers.AddRange(runs.Select(r => $"{r.Server} p99"));
        headers.AddRange(runs.Select(r => $"{r.Server} cpu"));
        var t = new TablePrinter([.. headers]);
        foreach (var row in rows)
        {
            var cells = new List<string> { row.Label };
            cells.AddRange(runs.Select(r => r.Results.TryGetValue(row.Name, out var x) ? Throughput(row, x) : "-"));
            var best = peers.Where(p => p.Results.ContainsKey(row.Name)).Select(p => (p.Server, R: (EngineResult?)p.Results[row.Name]))
                .DefaultIfEmpty((Server: "-", R: null)).MaxBy(p => p.R?.Iops ?? 0);
            cells.Add(best.Server);
            cells.AddRange(strata.Select(s => s.Results.TryGetValue(row.Name, out var x) && best.R != null ? TablePrinter.Ratio(x.Iops / best.R.Iops) : "-"));
            cells.AddRange(runs.Select(r => TablePrinter.Latency(r.Results.GetValueOrDefault(row.Name)?.P99Ns ?? 0)));
            cells.AddRange(runs.Select(r => r.Results.TryGetValue(row.Name, out var x) ? $"{x.CpuPercent:F0}%" : "-"));
            t.Add([.. cells]);
        }
        return t.ToString();
    }

    private static string Throughput(DeviceRow row, EngineResult r) =>
        row.ReportBandwidth ? $"{r.BytesPerSecond / 1e6:F0} MB/s" : $"{r.Iops:F0} IOPS";

    /// <summary>Creates the files once and writes them fully with fio, so no server reads holes.</summary>
    private static void Precondition(NbdBenchOptions o)
    {
        Directory.CreateDirectory(o.Dir);
        var files = new List<(string Path, long Size)> { (o.PeerFile, o.ImageSize) };
        if (o.RunStrata)
            files.AddRange(o.StrataConfigs.SelectMany(c => Enumerable.Range(0, o.Targets).Select(i => (o.TargetPath(c.Chunk, c.Buffered, i), o.TargetSize))));
        foreach (var (path, size) in files)
        {
            string marker = path + ".preconditioned", sz = size.ToString(CultureInfo.InvariantCulture);
            var fi = new FileInfo(path);
            if (fi.Exists && fi.Length == size && File.Exists(marker) && File.ReadAllText(marker).Trim() == sz)
                continue;
            Console.WriteLine($"preconditioning {path}: writing {StrataNbd.FormatSize(size)} with fio ...");
            Fio.RunJob(["--name=precondition", "--filename=" + path, "--size=" + sz, "--rw=write", "--bs=1M", "--iodepth=16",
                "--ioengine=io_uring", "--direct=1", "--end_fsync=1"], TimeSpan.FromMinutes(30));
            File.WriteAllText(marker, sz);
        }
    }

    private static void WriteJson(NbdBenchOptions o, string fioVersion, List<Run> runs, List<Run> durable)
    {
        var doc = new
        {
            benchmark = "nbd",
            timestamp = DateTimeOffset.UtcNow,
            host = new { cpus = Environment.ProcessorCount, os = Environment.OSVersion.VersionString, dotnet = Environment.Version.ToString(), fio = fioVersion },
            imageSizeBytes = o.ImageSize,
            runtimeSeconds = o.Runtime.TotalSeconds,
            fioConfig = "--ioengine=nbd " + string.Join(' ', FioArgs()),
            servers = runs.Concat(durable).Select(r => new { name = r.Server, description = r.Description, rows = r.Results }).ToArray(),
        };
        Device.DeviceBenchmark.SaveJson(o.JsonPath!, doc);
    }
}

/// <summary>Parsed options of the nbd subcommand.</summary>
internal sealed class NbdBenchOptions
{
    public required string Dir { get; init; }
    public required long ImageSize { get; init; }
    /// <summary>Free space in Strata's pool beside the image, in % of the image.</summary>
    public required int Headroom { get; init; }
    /// <summary>The engine's writeback timer (StorageEngineOptions.WritebackFlushInterval; null: the engine's default, 1 s).</summary>
    public TimeSpan? WritebackFlush { get; init; }

    /// <summary>StorageEngineOptions.DeferWritebackFromChunkSize (null: the engine's default).</summary>
    public int? DeferWritebackFrom { get; init; }
    public long PoolSize => ImageSize / 100 * (100 + Headroom);
    public required int Targets { get; init; }
    public required long TargetSize { get; init; }
    public required int[] ChunkSizes { get; init; }
    public required TimeSpan Runtime { get; init; }
    public required DeviceRow[] Rows { get; init; }
    public required int Pollers { get; init; }
    public int? BusyPollMicros { get; init; }

    /// <summary>--batch: DeviceOptions.CompletionBatch of Strata's targets, or null for the engine's default.</summary>
    public int? CompletionBatch { get; init; }

    /// <summary>--irq-cpus: the polling thread joins, avoids or ignores (default: the engine's, ignore) the disk's interrupt CPUs.</summary>
    public Strata.Engine.Device.InterruptPlacement InterruptPlacement { get; init; } = new Strata.Engine.Device.DeviceOptions().InterruptPlacement;
    /// <summary>NbdServerOptions.ParallelPayloadBytes of Strata's server; null for the default.</summary>
    public int? ParallelPayloadBytes { get; init; }
    public required bool RunStrata { get; init; }
    public required bool RunQemuNbd { get; init; }
    public required bool RunNbdkit { get; init; }
    public required bool DurablePeers { get; init; }
    public required bool[] IoModes { get; init; }

    /// <summary>Every Strata server of the run: chunk size by I/O mode (buffered = without O_DIRECT).</summary>
    public IEnumerable<(int Chunk, bool Buffered)> StrataConfigs => IoModes.SelectMany(b => ChunkSizes.Select(c => (c, b)));
    public string? JsonPath { get; init; }
    public TimeSpan WaitIdle { get; init; }
    /// <summary>An unmeasured run of each row's fio job before the measured one (0: none).</summary>
    public TimeSpan Warmup { get; init; }
    public int RateIops { get; init; }
    public bool Tls { get; init; }
    /// <summary>--alloc-types: sample which types a Strata row allocates (AllocationSampler).</summary>
    public bool AllocTypes { get; init; }

    /// <summary>Each chunk size's engine has its own target files: all of Strata's servers run at once.</summary>
    public string TargetPath(int chunkSize, bool buffered, int i) => Path.Combine(Dir, $"nbd-target-{ChunkLabel(chunkSize)}{(buffered ? "-buf" : "")}-{i}.dat");

    public static string ChunkLabel(int bytes) => bytes >= 1 << 20 ? $"{bytes >> 20}M" : $"{bytes >> 10}K";

    public string PeerFile => Path.Combine(Dir, "nbd-peer.raw");

    public static NbdBenchOptions From(CommandLine cl)
    {
        bool quick = cl.Flag("quick");
        var servers = (cl.String("servers") ?? "strata,qemu-nbd,nbdkit").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var s in servers)
            if (s is not ("strata" or "qemu-nbd" or "nbdkit"))
                throw new PerfUsageException($"--servers: unknown server '{s}' (strata, qemu-nbd, nbdkit)");
        int targets = cl.Int("targets", 1), pollers = cl.Int("pollers", 1);
        if (targets < 1 || pollers < 1)
            throw new PerfUsageException("--targets and --pollers must be at least 1");
        var chunks = (cl.String("chunk-size") ?? "4K,1M").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => CommandLine.ParseBytes(s, "chunk-size")).ToArray();
        foreach (var c in chunks)
            if (c < 4096 || c > 1 << 20 || (c & (c - 1)) != 0)
                throw new PerfUsageException($"--chunk-size {c}: a power of two from 4K to 1M");
        long imageSize = cl.Bytes("image-size", 512L << 20), targetSize = cl.Bytes("target-size", 2L << 30);
        if (imageSize % (1 << 20) != 0)
            throw new PerfUsageException("--image-size must be a multiple of 1M");
        int headroom = cl.Int("headroom", 200);
        if (headroom < 10 || headroom > 1000)
            throw new PerfUsageException("--headroom must be 10..1000 (% of the image)");
        long need = imageSize / 100 * (100 + headroom) / targets + (256L << 20);
        if (targetSize < need)
            throw new PerfUsageException($"--target-size {targetSize} is too small for a {imageSize}-byte image on {targets} target(s); use at least {need >> 20}M");
        var filter = cl.String("rows");
        var rows = NbdBenchmark.AllRows;
        if (!string.IsNullOrWhiteSpace(filter))
        {
            var parts = filter.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            rows = rows.Concat(NbdBenchmark.ExtraRows).Where(r => parts.Any(p => r.Name.Contains(p, StringComparison.OrdinalIgnoreCase))).ToArray();
            if (rows.Length == 0)
                throw new PerfUsageException($"--rows '{filter}' matches no row (rows: {string.Join(", ", NbdBenchmark.AllRows.Concat(NbdBenchmark.ExtraRows).Select(r => r.Name))})");
        }
        return new NbdBenchOptions
        {
            Dir = Path.GetFullPath(cl.String("dir") ?? DefaultDir()),
            ImageSize = imageSize,
            Headroom = headroom,
            WritebackFlush = cl.Has("writeback-flush-ms") ? TimeSpan.FromMilliseconds(cl.Int("writeback-flush-ms", 1000)) : null,
            DeferWritebackFrom = cl.Has("defer-writeback-from") ? checked((int)cl.Bytes("defer-writeback-from", 0)) : null,
            Targets = targets,
            TargetSize = targetSize,
            ChunkSizes = chunks.Select(c => (int)c).ToArray(),
            Runtime = TimeSpan.FromSeconds(cl.Seconds("runtime", quick ? 3 : 10)),
            Rows = rows,
            Pollers = pollers,
            BusyPollMicros = cl.Has("busy-poll-us") ? cl.SignedInt("busy-poll-us", 0) : null,
            CompletionBatch = cl.Has("batch") ? cl.Int("batch", 8) : null,
            InterruptPlacement = Device.DeviceBenchmark.ParsePlacement(cl.String("irq-cpus")),
            ParallelPayloadBytes = !cl.Has("parallel-writes") ? null : cl.String("parallel-writes") == "0" ? 0 : (int)cl.Bytes("parallel-writes", 0),
            RateIops = cl.Int("rate-iops", 0),
            RunStrata = servers.Contains("strata"),
            RunQemuNbd = servers.Contains("qemu-nbd"),
            RunNbdkit = servers.Contains("nbdkit"),
            DurablePeers = !cl.Flag("no-durable-peers"),
            IoModes = ParseIoModes(cl.String("strata-io") ?? "direct,buffered"),
            JsonPath = cl.String("json"),
            WaitIdle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero,
            Warmup = TimeSpan.FromSeconds(cl.Seconds("warmup", 0)),
            Tls = cl.Flag("tls"),
            AllocTypes = cl.Flag("alloc-types"),
        };
    }

    private static bool[] ParseIoModes(string list)
    {
        var modes = new List<bool>();
        foreach (var m in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            modes.Add(m switch
            {
                "direct" => false,
                "buffered" => true,
                _ => throw new PerfUsageException($"--strata-io: unknown mode '{m}' (direct, buffered)"),
            });
        if (modes.Count == 0)
            throw new PerfUsageException("--strata-io needs direct, buffered or both");
        return [.. modes.Distinct()];
    }

    private static string DefaultDir()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Directory.Build.props")) && Directory.Exists(Path.Combine(dir.FullName, "perf")))
                return Path.Combine(dir.FullName, "perf", "results");
        }
        return "/var/tmp/strata-perf";
    }
}
