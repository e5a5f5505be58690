using System.Globalization;
using System.Text.Json;
using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Perf.Common;
using Strata.Perf.Device;

namespace Strata.Perf.Store;

/// <summary>
/// The "store" subcommand: image I/O through the whole store (chunk map, CRC32C
/// verified on every read, copy-on-write, metadata log and its flush on every
/// write) on file targets, against fio on the raw target files, with ratios.
/// </summary>
public static class StoreBenchmark
{
    public const string Usage = """
        store options:
          --dir DIR          target files DIR/store-target-N.dat (default perf/results/, else /var/tmp/strata-perf/)
          --targets N        file targets (default 2)
          --target-size SIZE size of each target file (default 2G); written fully once with fio
          --image-size SIZE  image size (default 1G); written fully through the store before the rows
          --chunk-size LIST  image chunk size(s), e.g. 4K or 4K,16K,64K (default 4K); one fresh pool per size
          --rf N             replicas per chunk (default 1)
          --layout N         pool layout version (default: the newest this build supports); at 3 and later chunks
                             above 4K carry a block table and a 4K read verifies only the blocks it touches
          --runtime SEC      measured seconds per row per engine (default 10; after 1 s warm-up)
          --quick            2 s per row per engine
          --rows LIST        comma-separated filters on row names (randread-4k-qd32, randwrite-4k-qd32,
                             randread-4k-qd1, read-1m-qd8, write-1m-qd8)
          --pollers N        queue pairs per target device (default 1)
          --poller-threads N polling threads shared by all the targets' queue pairs, as in the engine
                             (default 1; 0 = a thread of its own per queue pair)
          --busy-poll-us N   a poller's busy-poll window without completions before it waits in the kernel
                             (default DeviceOptions.BusyPollMicros = 0: adaptive; negative: busy-poll while reads or writes are in flight)
          --irq-cpus MODE    the pollers join, avoid or ignore (default: the engine's, ignore) the disk's interrupt CPUs
          --batch N          completions reaped per poll (DeviceOptions.CompletionBatch; default 8)
          --engines LIST     strata,fio (default both)
          --wait-idle SEC    before each run, wait up to SEC for the machine to be idle
          --alloc-types      sample which managed types the Strata rows allocate in the measured window
                             (GC AllocationTick; printed per row)
          --json FILE        write every figure as JSON
        """;

    public static readonly DeviceRow[] AllRows =
    [
        new("randread-4k-qd32", "4K rand read QD32", false, true, 4096, 32),
        new("randwrite-4k-qd32", "4K rand write QD32", true, true, 4096, 32),
        new("randread-4k-qd1", "4K rand read QD1", false, true, 4096, 1),
        new("read-1m-qd8", "1M seq read QD8", false, false, 1 << 20, 8),
        new("write-1m-qd8", "1M seq write QD8", true, false, 1 << 20, 8),
    ];

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var o = StoreBenchOptions.From(cl);
        cl.ThrowIfUnused();
        string fioVersion = Fio.RequireInstalled();
        PreconditionFiles(o);

        Console.WriteLine($"store benchmark: {o.Targets} file target(s) of {DeviceBenchmark.FormatSize(o.TargetSize)} in {o.Dir}, image {DeviceBenchmark.FormatSize(o.ImageSize)}, rf {o.Rf}, chunk size(s) {string.Join(", ", o.ChunkSizes.Select(FormatChunk))}");
        Console.WriteLine($"  {o.Runtime.TotalSeconds:F0} s per row per engine after 1 s warm-up; strata rows first, then fio (fio writes over the raw files destroy the pool)");
        Console.WriteLine($"strata: StorageEngine over NativeBlockDevice file:...?direct=1, pollers={o.Pollers}, batch={o.CompletionBatch?.ToString() ?? "default"}, Image.ReadAsync/WriteAsync QD worker loops (CRC32C verified per chunk; COW + log commit per write, one flush per commit round covering data and log)");
        Console.WriteLine($"fio:    {fioVersion}, on the raw target files (--filename=f0:f1..), limited to each shard's data area, {string.Join(' ', FioCommon())}");
        Console.WriteLine($"host:   {Environment.ProcessorCount} CPUs, {Environment.OSVersion.VersionString}, .NET {Environment.Version}");
        Console.WriteLine();

        var runs = new List<ChunkRun>();
        (long Offset, long Length)? region = null;
        foreach (int chunk in o.ChunkSizes)
        {
            var run = await RunStrataAsync(o, chunk);
            runs.Add(run);
            region = run.DataRegion;
        }
        var fio = new Dictionary<string, EngineResult>();
        var fioDsync = new Dictionary<string, EngineResult>();
        if (o.RunFio)
        {
            region ??= await LayoutOnlyAsync(o);
            foreach (var row in o.Rows)
            {
                fio[row.Name] = await RunFioRowAsync(o, row, region.Value, dsync: false);
                // Strata's writes are durable on ack: fio with O_DSYNC is the like-for-like figure.
                if (row.Write)
                    fioDsync[row.Name] = await RunFioRowAsync(o, row, region.Value, dsync: true);
            }
        }

        Console.WriteLine();
        var t = new TablePrinter("row", "chunk", "strata", "fio", "ratio", "fio dsync", "dsync ratio", "target", "strata p50", "fio p50", "strata p99", "fio p99", "strata cpu", "fio cpu", "others cpu", "B/op");
        foreach (var run in runs)
            foreach (var row in o.Rows)
            {
                run.Results.TryGetValue(row.Name, out var s);
                fio.TryGetValue(row.Name, out var f);
                fioDsync.TryGetValue(row.Name, out var fd);
                t.Add(row.Label, FormatChunk(run.ChunkSize),
                    s is null ? "-" : Throughput(row, s), f is null ? "-" : Throughput(row, f),
                    TablePrinter.Ratio(Ratio(s, f)),
                    fd is null ? "-" : Throughput(row, fd), TablePrinter.Ratio(Ratio(s, fd)),
                    TargetOf(row),
                    TablePrinter.Latency(s?.P50Ns ?? 0), TablePrinter.Latency(f?.P50Ns ?? 0),
                    TablePrinter.Latency(s?.P99Ns ?? 0), TablePrinter.Latency(f?.P99Ns ?? 0),
                    s is null ? "-" : $"{s.CpuPercent:F0}%", f is null ? "-" : $"{f.CpuPercent:F0}%",
                    $"{OtherCpu(s)}/{OtherCpu(f)}",
                    s?.AllocatedBytesPerOp is double b ? $"{b:F0}" : "-");
            }
        Console.Write(t.ToString());
        Console.WriteLine("ratio = Strata image I/O / fio on the raw target files (higher is better); target = issues 3 and 17's requirements.");
        Console.WriteLine("fio writes are volatile (no flush); fio dsync = the same job with --sync=dsync (O_DSYNC: every write durable before it completes, as Strata's).");
        Console.WriteLine("latency: Strata from the call to the end of the await; fio total latency (--lat_percentiles=1). B/op: managed bytes allocated per Strata operation.");
        Console.WriteLine($"cpu: % of one CPU ({Environment.ProcessorCount} here); others cpu = the rest of the machine during the strata/fio runs (compare only quiet runs; --wait-idle).");
        double worst = runs.SelectMany(r => r.Results.Values).Concat(fio.Values).Select(r => r.OtherCpuPercent).Where(double.IsFinite).DefaultIfEmpty(0).Max();
        if (worst > 25)
            Console.WriteLine($"warning: other processes used up to {worst:F0}% CPU during the runs; ratios on a busy machine are not comparable.");
        foreach (var run in runs)
            Console.WriteLine($"memory per allocated chunk ({FormatChunk(run.ChunkSize)} chunks, rf {o.Rf}): {run.BytesPerChunk:F0} bytes of managed heap ({run.Chunks} chunks mapped; {run.BytesPerChunk / run.ChunkSize * (1L << 30) / (1 << 20):F1} MiB per GiB of image)");

        if (o.JsonPath is not null)
        {
            WriteJson(o, fioVersion, runs, fio, fioDsync);
            Console.WriteLine($"wrote {o.JsonPath}");
        }
        return 0;
    }

    /// <summary>The log committer's rounds during a row (warm-up included): batch size, log write and flush time per round, time waiting for work.</summary>
    internal static string CommitSummary(PoolLog.CommitStats a, PoolLog.CommitStats b)
    {
        long rounds = b.Rounds - a.Rounds;
        if (rounds <= 0)
            return "commit: no rounds";
        double us(long ticks) => ticks * 1e6 / System.Diagnostics.Stopwatch.Frequency / rounds;
        return $"commit: {rounds} rounds ({b.Flushes - a.Flushes} flushed), {(b.Records - a.Records) / (double)rounds:F1} records and {(b.LogBytes - a.LogBytes) / 1024.0 / rounds:F1} KiB of log per round; per round: log write {us(b.WriteTicks - a.WriteTicks):F0} us, then its and earlier rounds' data writes {us(b.SettleTicks - a.SettleTicks):F0} us, then flush {us(b.FlushTicks - a.FlushTicks):F0} us; committer waiting for a round slot {us(b.SlotTicks - a.SlotTicks):F0} us; {b.Checkpoints - a.Checkpoints} checkpoints ({(b.CheckpointTicks - a.CheckpointTicks) * 1e3 / System.Diagnostics.Stopwatch.Frequency:F0} ms with no round started, {b.RoundsBesideCheckpoint - a.RoundsBesideCheckpoint} rounds started while one was written)";
    }

    private static string OtherCpu(EngineResult? r) => r is null || !double.IsFinite(r.OtherCpuPercent) ? "-" : $"{r.OtherCpuPercent:F0}%";

    private static string TargetOf(DeviceRow row) => row.Name switch
    {
        "randread-4k-qd32" => ">=0.80x",
        "randwrite-4k-qd32" => ">=0.50x, dsync >=1.00x",
        _ => "",
    };

    private static double Ratio(EngineResult? s, EngineResult? f) =>
        s is null || f is null || f.Iops <= 0 ? double.NaN : s.Iops / f.Iops;

    private static string FormatChunk(int bytes) => bytes >= 1 << 20 ? $"{bytes >> 20}M" : $"{bytes >> 10}K";

    private sealed record ChunkRun(int ChunkSize, Dictionary<string, EngineResult> Results, double BytesPerChunk, long Chunks, (long Offset, long Length) DataRegion);

    /// <summary>The target devices, on a shared poller group of --poller-threads threads (the engine's default) unless that is 0.</summary>
    private static BenchDevices OpenDevices(StoreBenchOptions o) =>
        new(Enumerable.Range(0, o.Targets).Select(i => $"file:{o.TargetPath(i)}?direct=1&qd=128"), o.Pollers, o.PollerThreads, o.BusyPollMicros, o.CompletionBatch, o.InterruptPlacement);

    /// <summary>Formats the targets, creates pool, container and image, fills the image, then runs every row.</summary>
    private static async Task<ChunkRun> RunStrataAsync(StoreBenchOptions o, int chunkSize)
    {
        using var bench = OpenDevices(o);
        {
            await using var engine = await StorageEngine.FormatAsync(bench.Devices, force: true);
            // Copy-on-write needs free extents beside the image's chunks: 25% headroom.
            long poolSize = o.ImageSize * o.Rf / 4 * 5;
            var pool = await engine.CreatePoolAsync("bench", poolSize, o.Rf, new PoolCreateOptions { MinChunkSize = Math.Min(chunkSize, 64 * 1024), LayoutVersion = o.Layout });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "img", o.ImageSize, chunkSize);
            Console.WriteLine($"  pool at layout {pool.LayoutVersion}");
            var shard = pool.Shards[0];
            var region = (shard.Base + shard.Header.DataOffset, shard.Header.DataLength);

            Console.Write($"  filling the {DeviceBenchmark.FormatSize(o.ImageSize)} image with {FormatChunk(chunkSize)} chunks through the store ...");
            long before = GC.GetTotalMemory(forceFullCollection: true);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            await ImageFill.FillAsync(image);
            // A checkpoint now, as a server running for a while has taken many: the first one makes the
            // arrays checkpoints are captured and laid out in (a few MiB, once per pool), which otherwise
            // fell in the first row's measured window as large-object allocations and a gen-2 collection.
            await pool.Log.CheckpointAsync();
            long after = GC.GetTotalMemory(forceFullCollection: true);
            long chunks;
            lock (pool.Meta.Sync)
                chunks = pool.Meta.Images.Values.Sum(i => (long)i.Chunks.Count);
            double perChunk = (after - before) / (double)Math.Max(1, chunks);
            Console.WriteLine($" {o.ImageSize / 1e6 / sw.Elapsed.TotalSeconds:F0} MB/s; {chunks} chunks, {perChunk:F0} managed bytes per chunk");

            var results = new Dictionary<string, EngineResult>();
            if (o.RunStrata)
            {
                foreach (var row in o.Rows)
                {
                    Console.Write($"  {row.Name,-18} strata {FormatChunk(chunkSize),-6} ...");
                    await WaitIdleAsync(o);
                    var h0 = HostCpuSample.Now();
                    var c0 = pool.Log.Stats;
                    var load = new QueueDepthLoad(row, image.Size, ArrayBuffer.Rent, (offset, m) => image.ReadAsync(offset, m), (offset, m) => image.WriteAsync(offset, m));
                    using var sampler = o.AllocTypes ? new AllocationSampler(start: false) : null;
                    var r = await load.RunAsync(TimeSpan.FromSeconds(1), o.Runtime, $"chunk={chunkSize} rf={o.Rf} targets={o.Targets} pollers={o.Pollers}", sampler == null ? null : sampler.Start);
                    sampler?.Report(row.Name);
                    r = r with { OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - r.CpuPercent) };
                    Console.WriteLine($" {Throughput(row, r)}, p50 {TablePrinter.Latency(r.P50Ns)}, p99 {TablePrinter.Latency(r.P99Ns)}, cpu {r.CpuPercent:F0}%, others {r.OtherCpuPercent:F0}%, {r.AllocatedBytesPerOp:F0} B/op");
                    if (row.Write)
                        Console.WriteLine($"    {CommitSummary(c0, pool.Log.Stats)}");
                    results[row.Name] = r;
                }
            }
            return new ChunkRun(chunkSize, results, perChunk, chunks, region);
        }
    }

    /// <summary>The data area fio should use when no Strata run computed it (--engines fio).</summary>
    private static async Task<(long, long)> LayoutOnlyAsync(StoreBenchOptions o)
    {
        using var bench = OpenDevices(o);
        await using var engine = await StorageEngine.FormatAsync(bench.Devices, force: true);
        var pool = await engine.CreatePoolAsync("bench", o.ImageSize * o.Rf / 4 * 5, o.Rf, new PoolCreateOptions { MinChunkSize = Math.Min(o.ChunkSizes.Min(), 64 * 1024) });
        return (pool.Shards[0].Base + pool.Shards[0].Header.DataOffset, pool.Shards[0].Header.DataLength);
    }

    private static List<string> FioCommon() => [.. Fio.ComparisonArgs];

    /// <summary>One fio row, volatile or with --sync=dsync, with the rest of the machine's CPU beside it.</summary>
    private static async Task<EngineResult> RunFioRowAsync(StoreBenchOptions o, DeviceRow row, (long Offset, long Length) region, bool dsync)
    {
        Console.Write($"  {row.Name,-18} {(dsync ? "fio dsync" : "fio"),-14} ...");
        await WaitIdleAsync(o);
        var h0 = HostCpuSample.Now();
        var r = RunFio(o, row, region, dsync);
        r = r with { OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - r.CpuPercent) };
        Console.WriteLine($" {Throughput(row, r)}, p50 {TablePrinter.Latency(r.P50Ns)}, p99 {TablePrinter.Latency(r.P99Ns)}, cpu {r.CpuPercent:F0}%, others {r.OtherCpuPercent:F0}%");
        return r;
    }

    private static EngineResult RunFio(StoreBenchOptions o, DeviceRow row, (long Offset, long Length) region, bool dsync)
    {
        var args = new List<string>
        {
            "--name=" + row.Name,
            "--filename=" + string.Join(':', Enumerable.Range(0, o.Targets).Select(o.TargetPath)),
            // Per file: [offset, offset + size/files), the shard's data area.
            "--offset=" + region.Offset.ToString(CultureInfo.InvariantCulture),
            "--size=" + (region.Length * o.Targets).ToString(CultureInfo.InvariantCulture),
            "--rw=" + row.FioRw, "--bs=" + row.BlockSize.ToString(CultureInfo.InvariantCulture),
            "--iodepth=" + row.QueueDepth.ToString(CultureInfo.InvariantCulture),
            "--runtime=" + o.Runtime.TotalSeconds.ToString(CultureInfo.InvariantCulture),
        };
        args.AddRange(FioCommon());
        if (dsync)
            args.Add("--sync=dsync");
        var r = Fio.RunJob(args, o.Runtime + TimeSpan.FromSeconds(120));
        return new EngineResult(r.Iops, r.BytesPerSecond, r.ClatP50Ns, r.ClatP99Ns, r.ClatMeanNs, r.CpuUserPct + r.CpuSysPct, null,
            (long)(r.Iops * o.Runtime.TotalSeconds), r.CommandLine);
    }

    /// <summary>Creates the target files and writes them fully once, so fio's reads hit allocated blocks too.</summary>
    private static void PreconditionFiles(StoreBenchOptions o)
    {
        Directory.CreateDirectory(o.Dir);
        for (int i = 0; i < o.Targets; i++)
        {
            string path = o.TargetPath(i), marker = path + ".preconditioned";
            string size = o.TargetSize.ToString(CultureInfo.InvariantCulture);
            var fi = new FileInfo(path);
            if (fi.Exists && fi.Length == o.TargetSize && File.Exists(marker) && File.ReadAllText(marker).Trim() == size)
                continue;
            Console.WriteLine($"preconditioning {path}: writing {DeviceBenchmark.FormatSize(o.TargetSize)} with fio ...");
            Fio.RunJob(["--name=precondition", "--filename=" + path, "--size=" + size, "--rw=write", "--bs=1M", "--iodepth=16",
                "--ioengine=io_uring", "--direct=1", "--end_fsync=1"], TimeSpan.FromMinutes(30));
            File.WriteAllText(marker, size);
        }
    }

    private static async Task WaitIdleAsync(StoreBenchOptions o)
    {
        if (o.WaitIdle > TimeSpan.Zero)
            await HostIdle.WaitAsync(o.WaitIdle);
    }

    private static string Throughput(DeviceRow row, EngineResult r) =>
        row.ReportBandwidth ? $"{r.BytesPerSecond / 1e6:F0} MB/s" : $"{r.Iops:F0} IOPS";

    private static void WriteJson(StoreBenchOptions o, string fioVersion, List<ChunkRun> runs, Dictionary<string, EngineResult> fio, Dictionary<string, EngineResult> fioDsync)
    {
        var doc = new
        {
            benchmark = "store",
            timestamp = DateTimeOffset.UtcNow,
            host = new { cpus = Environment.ProcessorCount, os = Environment.OSVersion.VersionString, dotnet = Environment.Version.ToString(), fio = fioVersion },
            targets = Enumerable.Range(0, o.Targets).Select(o.TargetPath).ToArray(),
            targetSizeBytes = o.TargetSize,
            imageSizeBytes = o.ImageSize,
            rf = o.Rf,
            runtimeSeconds = o.Runtime.TotalSeconds,
            warmupSeconds = 1,
            fioConfig = string.Join(' ', FioCommon()),
            fioDsyncConfig = string.Join(' ', FioCommon()) + " --sync=dsync",
            runs = runs.Select(run => new
            {
                chunkSize = run.ChunkSize,
                managedBytesPerChunk = run.BytesPerChunk,
                chunksMapped = run.Chunks,
                rows = o.Rows.Select(row => new
                {
                    name = row.Name,
                    label = row.Label,
                    blockSize = row.BlockSize,
                    queueDepth = row.QueueDepth,
                    strata = run.Results.GetValueOrDefault(row.Name),
                    fio = fio.GetValueOrDefault(row.Name),
                    ratio = Ratio(run.Results.GetValueOrDefault(row.Name), fio.GetValueOrDefault(row.Name)) is var x && double.IsFinite(x) ? x : (double?)null,
                    // Write rows only: fio with --sync=dsync on the same files (durable writes, as Strata's).
                    fioDsync = fioDsync.GetValueOrDefault(row.Name),
                    dsyncRatio = Ratio(run.Results.GetValueOrDefault(row.Name), fioDsync.GetValueOrDefault(row.Name)) is var y && double.IsFinite(y) ? y : (double?)null,
                }).ToArray(),
            }).ToArray(),
        };
        Device.DeviceBenchmark.SaveJson(o.JsonPath!, doc);
    }
}

/// <summary>Parsed options of the store subcommand.</summary>
internal sealed class StoreBenchOptions
{
    public required string Dir { get; init; }
    public required int Targets { get; init; }
    public required long TargetSize { get; init; }
    public required long ImageSize { get; init; }
    public required int[] ChunkSizes { get; init; }
    public required int Rf { get; init; }
    /// <summary>Layout of the benchmark pool; 0 = the newest this build supports.</summary>
    public uint Layout { get; init; }
    public required TimeSpan Runtime { get; init; }
    public required DeviceRow[] Rows { get; init; }
    public required int Pollers { get; init; }
    public required int PollerThreads { get; init; }
    public int? BusyPollMicros { get; init; }

    /// <summary>--irq-cpus: the pollers join, avoid or ignore (default: the engine's, ignore) the disk's interrupt CPUs.</summary>
    public InterruptPlacement InterruptPlacement { get; init; } = new DeviceOptions().InterruptPlacement;
    public int? CompletionBatch { get; init; }
    public required bool RunStrata { get; init; }
    public required bool RunFio { get; init; }
    public string? JsonPath { get; init; }
    public TimeSpan WaitIdle { get; init; }
    /// <summary>--alloc-types: sample which types the Strata rows allocate (AllocationSampler; the measured window, as B/op).</summary>
    public bool AllocTypes { get; init; }

    public string TargetPath(int i) => Path.Combine(Dir, $"store-target-{i}.dat");

    public static StoreBenchOptions From(CommandLine cl)
    {
        bool quick = cl.Flag("quick");
        var engines = (cl.String("engines") ?? "strata,fio").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var e in engines)
            if (e is not ("strata" or "fio"))
                throw new PerfUsageException($"--engines: unknown engine '{e}' (strata, fio)");
        int targets = cl.Int("targets", 2), rf = cl.Int("rf", 1), pollers = cl.Int("pollers", 1);
        if (targets < 1)
            throw new PerfUsageException("--targets must be at least 1");
        if (rf is not (1 or 2) || rf > targets)
            throw new PerfUsageException($"--rf {rf}: use 1 or 2 (at most --targets)");
        if (pollers < 1)
            throw new PerfUsageException("--pollers must be at least 1");
        if (cl.Int("poller-threads", 1) < 0)
            throw new PerfUsageException("--poller-threads must be 0 (a thread per queue pair) or more");
        int? batch = cl.Has("batch") ? cl.Int("batch", 1) : null;
        if (batch is < 1)
            throw new PerfUsageException("--batch must be at least 1");
        var chunks = (cl.String("chunk-size") ?? "4K").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => CommandLine.ParseBytes(s, "chunk-size")).ToArray();
        foreach (var c in chunks)
            if (c < 4096 || c > 1 << 20 || (c & (c - 1)) != 0)
                throw new PerfUsageException($"--chunk-size {c}: a power of two from 4K to 1M");
        long imageSize = cl.Bytes("image-size", 1L << 30), targetSize = cl.Bytes("target-size", 2L << 30);
        if (imageSize % (1 << 20) != 0)
            throw new PerfUsageException("--image-size must be a multiple of 1M");
        // Superblock, WAL (at most 64 MiB), two checkpoint slots and the data area must fit.
        long need = imageSize * rf / 4 * 5 / targets + (256L << 20);
        if (targetSize < need)
            throw new PerfUsageException($"--target-size {targetSize} is too small for a {imageSize}-byte image at rf {rf} on {targets} target(s); use at least {need >> 20}M");
        return new StoreBenchOptions
        {
            Dir = Path.GetFullPath(cl.String("dir") ?? DefaultDir()),
            Targets = targets,
            TargetSize = targetSize,
            ImageSize = imageSize,
            ChunkSizes = chunks.Select(c => (int)c).ToArray(),
            Rf = rf,
            Layout = (uint)cl.Int("layout", 0),
            Runtime = TimeSpan.FromSeconds(cl.Seconds("runtime", quick ? 2 : 10)),
            Rows = SelectRows(cl.String("rows")),
            Pollers = pollers,
            PollerThreads = cl.Int("poller-threads", 1),
            BusyPollMicros = cl.Has("busy-poll-us") ? cl.SignedInt("busy-poll-us", 0) : null,
            InterruptPlacement = Device.DeviceBenchmark.ParsePlacement(cl.String("irq-cpus")),
            CompletionBatch = batch,
            RunStrata = engines.Contains("strata"),
            RunFio = engines.Contains("fio"),
            JsonPath = cl.String("json"),
            WaitIdle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero,
            AllocTypes = cl.Flag("alloc-types"),
        };
    }

    private static DeviceRow[] SelectRows(string? filter)
    {
        if (string.IsNullOrWhiteSpace(filter))
            return StoreBenchmark.AllRows;
        var parts = filter.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var rows = StoreBenchmark.AllRows.Where(r => parts.Any(p => r.Name.Contains(p, StringComparison.OrdinalIgnoreCase))).ToArray();
        if (rows.Length == 0)
            throw new PerfUsageException($"--rows '{filter}' matches no row (rows: {string.Join(", ", StoreBenchmark.AllRows.Select(r => r.Name))})");
        return rows;
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

/// <summary>A plain managed buffer as an owner: the store copies into its own DMA buffers.</summary>
internal sealed class ArrayBuffer(int length) : System.Buffers.IMemoryOwner<byte>
{
    public Memory<byte> Memory { get; } = new byte[length];

    public static System.Buffers.IMemoryOwner<byte> Rent(int length) => new ArrayBuffer(length);

    public void Dispose() { }
}
