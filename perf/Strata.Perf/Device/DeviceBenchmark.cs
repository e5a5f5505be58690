using System.Globalization;
using System.Text.Json;
using Strata.Engine.Device;
using Strata.Perf.Common;

namespace Strata.Perf.Device;

/// <summary>
/// The "device" subcommand: Strata's device layer (NativeBlockDevice over
/// libstrata_io/io_uring) and fio (ioengine=io_uring, direct=1) on the same
/// preconditioned file, row by row, Strata then fio, with ratios. With --uri it
/// runs against an NVMe target instead (libstrata_io's SPDK backend), and the
/// reference is SPDK's own spdk_nvme_perf on the same target.
/// </summary>
public static class DeviceBenchmark
{
    public const string Usage = """
        device options:
          --file PATH      test file (default perf/results/device-bench.dat, else /var/tmp/strata-perf/)
          --size SIZE      file size (default 2G); written fully once so reads hit allocated blocks
          --runtime SEC    measured seconds per row per engine (default 10; after 1 s warm-up)
          --quick          2 s per row per engine
          --rows LIST      comma-separated filters on row names (randread-4k-qd1, randread-4k-qd32,
                           randwrite-4k-qd1, randwrite-4k-qd32, read-1m-qd8, write-1m-qd8)
          --pollers N      Strata polling threads / queue pairs (default 1)
          --spin N         Strata poller idle spin iterations before parking (default: DeviceOptions')
          --batch N        Strata completions reaped per poll (DeviceOptions.CompletionBatch; default 8)
          --busy-poll-us N Strata poller's busy-poll window (DeviceOptions.BusyPollMicros; default 0 = adaptive,
                           negative = busy-poll while any small read or write is in flight)
          --poller-cpus L  CPUs for Strata's pollers, comma separated (default: the scheduler's choice;
                           with --uri the cores of --spdk-env's core_mask, where spdk_nvme_perf runs too)
          --sqpoll         kernel submission polling for both engines (Strata sqpoll=1, fio --sqthread_poll=1)
          --irq-cpus MODE  where Strata's poller runs relative to the CPUs taking the disk's completion
                           interrupts: join, avoid, ignore (default: DeviceOptions.InterruptPlacement, ignore)
          --engines LIST   strata,fio (default both; strata,spdk-perf with --uri)
          --fio-args ARGS  extra fio arguments, space separated (e.g. "--iodepth_batch_complete_max=32")
          --wait-idle SEC  before each run, wait up to SEC for the machine to be idle (<25% of a CPU busy)
          --json FILE      write every figure as JSON
        NVMe target (the SPDK backend; the reference is spdk_nvme_perf, not fio):
          --uri URI        nvme-tcp://HOST:PORT/SUBNQN[?ns=N] or nvme-pcie://BDF: benchmark this namespace
                           (its whole capacity; the rows default to the 4 KiB ones; writes overwrite it)
          --spdk-perf PATH spdk_nvme_perf from the SPDK installation (default: $STRATA_SPDK_NVME_PERF)
          --spdk-env OPTS  SPDK environment of both engines, in sio_env_configure's syntax
                           (default hugepages=0&mem_size_mb=1024&pci=0); its core_mask is also
                           spdk_nvme_perf's -c (keep it off the target's cores)
        """;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var options = DeviceBenchOptions.From(cl);
        cl.ThrowIfUnused();

        if (options.Nvme is not null)
            return await NvmeBenchmark.RunAsync(options, options.Nvme);

        string fioVersion = options.RunFio || options.NeedPrecondition ? Fio.RequireInstalled() : "-";
        Precondition(options);

        Console.WriteLine($"device benchmark: {options.File} ({FormatSize(options.Size)}), {options.Runtime.TotalSeconds:F0} s per row per engine after 1 s warm-up");
        Console.WriteLine($"strata: {options.StrataConfig}");
        Console.WriteLine($"fio:    {fioVersion}, {string.Join(' ', FioCommon(options))}");
        Console.WriteLine($"host:   {Environment.ProcessorCount} CPUs, {Environment.OSVersion.VersionString}, .NET {Environment.Version}");
        Console.WriteLine();

        var results = new List<RowResult>();
        foreach (var row in options.Rows)
        {
            EngineResult? strata = null, fio = null;
            if (options.RunStrata)
            {
                Console.Write($"  {row.Name,-18} strata ...");
                await WaitIdleAsync(options);
                var h0 = HostCpuSample.Now();
                strata = await RunStrataAsync(options, row);
                strata = strata with { OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - strata.CpuPercent) };
                Console.WriteLine($" {Throughput(row, strata)}, p50 {TablePrinter.Latency(strata.P50Ns)}, p99 {TablePrinter.Latency(strata.P99Ns)}, cpu {strata.CpuPercent:F0}%, others {strata.OtherCpuPercent:F0}%");
            }
            if (options.RunFio)
            {
                Console.Write($"  {row.Name,-18} fio    ...");
                await WaitIdleAsync(options);
                var h0 = HostCpuSample.Now();
                fio = RunFio(options, row);
                fio = fio with { OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - fio.CpuPercent) };
                Console.WriteLine($" {Throughput(row, fio)}, p50 {TablePrinter.Latency(fio.P50Ns)}, p99 {TablePrinter.Latency(fio.P99Ns)}, cpu {fio.CpuPercent:F0}%, others {fio.OtherCpuPercent:F0}%");
            }
            results.Add(new RowResult(row, strata, fio));
        }

        Console.WriteLine();
        Console.Write(BuildTable(results));
        Console.WriteLine("throughput ratio = Strata/fio (higher is better); p99 ratio = Strata p99 / fio p99 (lower is better).");
        Console.WriteLine("latency: Strata from the call to the end of the await; fio total latency (lat: submission + completion, --lat_percentiles=1).");
        Console.WriteLine($"cpu: % of one CPU ({Environment.ProcessorCount} here); others cpu = the rest of the machine during the strata/fio runs.");
        double worst = results.SelectMany(r => new[] { r.Strata?.OtherCpuPercent ?? 0, r.Fio?.OtherCpuPercent ?? 0 }).Where(double.IsFinite).DefaultIfEmpty(0).Max();
        if (worst > 25)
            Console.WriteLine($"warning: other processes used up to {worst:F0}% CPU during the runs; ratios on a busy machine are not comparable.");

        if (options.JsonPath is not null)
        {
            WriteJson(options, fioVersion, results);
            Console.WriteLine($"wrote {options.JsonPath}");
        }
        return 0;
    }

    /// <summary>--irq-cpus join|avoid|ignore (default: the engine's, DeviceOptions.InterruptPlacement).</summary>
    internal static InterruptPlacement ParsePlacement(string? value) => value switch
    {
        null => new DeviceOptions().InterruptPlacement,
        "join" => InterruptPlacement.Join,
        "avoid" => InterruptPlacement.Avoid,
        "ignore" => InterruptPlacement.Ignore,
        _ => throw new PerfUsageException($"--irq-cpus: '{value}' is not join, avoid or ignore"),
    };

    internal static async Task WaitIdleAsync(DeviceBenchOptions o)
    {
        if (o.WaitIdle > TimeSpan.Zero)
            await HostIdle.WaitAsync(o.WaitIdle);
    }

    private static async Task<EngineResult> RunStrataAsync(DeviceBenchOptions o, DeviceRow row)
    {
        // A fresh device per row: no poller thread lingers while fio runs.
        int qd = Math.Max(128, row.QueueDepth);
        string uri = $"file:{o.File}?direct=1&qd={qd}&sqpoll={(o.SqPoll ? 1 : 0)}";
        var deviceOptions = new DeviceOptions { Pollers = o.Pollers };
        if (o.IdleSpin is int spin)
            deviceOptions = deviceOptions with { IdleSpinIterations = spin };
        if (o.CompletionBatch is int batch)
            deviceOptions = deviceOptions with { CompletionBatch = batch };
        if (o.BusyPollMicros is int busy)
            deviceOptions = deviceOptions with { BusyPollMicros = busy };
        if (o.PollerCpus is not null)
            deviceOptions = deviceOptions with { PollerCpus = o.PollerCpus };
        deviceOptions = deviceOptions with { InterruptPlacement = o.InterruptPlacement };
        using var device = NativeBlockDevice.Open(uri, deviceOptions);
        var load = new QueueDepthLoad(row, o.Size, device.Buffers.Rent, (offset, m) => device.ReadAsync(offset, m), (offset, m) => device.WriteAsync(offset, m));
        string config = $"{uri} pollers={deviceOptions.Pollers} spin={deviceOptions.IdleSpinIterations} busy-poll-us={deviceOptions.BusyPollMicros} registered-arena={device.RegisteredArena} irq-cpus={string.Join(",", device.InterruptCpus)} ({deviceOptions.InterruptPlacement.ToString().ToLowerInvariant()})";
        return await load.RunAsync(TimeSpan.FromSeconds(1), o.Runtime, config);
    }

    /// <summary>fio arguments every row shares; the "best sensible" io_uring setup on a VM without IOPOLL.</summary>
    private static List<string> FioCommon(DeviceBenchOptions o)
    {
        var args = new List<string>(Fio.ComparisonArgs);
        if (o.SqPoll)
            args.Add("--sqthread_poll=1");
        args.AddRange(o.FioExtra);
        return args;
    }

    private static EngineResult RunFio(DeviceBenchOptions o, DeviceRow row)
    {
        var args = new List<string>
        {
            "--name=" + row.Name, "--filename=" + o.File, "--size=" + o.Size.ToString(CultureInfo.InvariantCulture),
            "--rw=" + row.FioRw, "--bs=" + row.BlockSize.ToString(CultureInfo.InvariantCulture),
            "--iodepth=" + row.QueueDepth.ToString(CultureInfo.InvariantCulture),
            "--runtime=" + o.Runtime.TotalSeconds.ToString(CultureInfo.InvariantCulture),
        };
        args.AddRange(FioCommon(o));
        var r = Fio.RunJob(args, o.Runtime + TimeSpan.FromSeconds(120));
        return new EngineResult(r.Iops, r.BytesPerSecond, r.ClatP50Ns, r.ClatP99Ns, r.ClatMeanNs, r.CpuUserPct + r.CpuSysPct, null,
            (long)(r.Iops * o.Runtime.TotalSeconds), r.CommandLine);
    }

    /// <summary>Creates the file and writes it fully once (a marker beside it records that).</summary>
    private static void Precondition(DeviceBenchOptions o)
    {
        if (!o.NeedPrecondition)
            return;
        Directory.CreateDirectory(Path.GetDirectoryName(o.File)!);
        Console.WriteLine($"preconditioning {o.File}: writing {FormatSize(o.Size)} sequentially with fio ...");
        var args = new List<string>
        {
            "--name=precondition", "--filename=" + o.File, "--size=" + o.Size.ToString(CultureInfo.InvariantCulture),
            "--rw=write", "--bs=1M", "--iodepth=16", "--ioengine=io_uring", "--direct=1", "--end_fsync=1",
        };
        var r = Fio.RunJob(args, TimeSpan.FromMinutes(30));
        File.WriteAllText(o.MarkerPath, o.Size.ToString(CultureInfo.InvariantCulture));
        Console.WriteLine($"preconditioned at {r.BytesPerSecond / 1e6:F0} MB/s");
    }

    internal static string Throughput(DeviceRow row, EngineResult r) =>
        row.ReportBandwidth ? $"{r.BytesPerSecond / 1e6:F0} MB/s" : $"{r.Iops:F0} IOPS";

    internal static string BuildTable(List<RowResult> results, string reference = "fio")
    {
        var t = new TablePrinter("row", "strata", reference, "ratio", "strata p50", $"{reference} p50", "strata p99", $"{reference} p99", "p99 ratio", "strata cpu", $"{reference} cpu", "others cpu");
        foreach (var r in results)
        {
            t.Add(
                r.Row.Label,
                r.Strata is null ? "-" : Throughput(r.Row, r.Strata),
                r.Fio is null ? "-" : Throughput(r.Row, r.Fio),
                TablePrinter.Ratio(r.ThroughputRatio),
                TablePrinter.Latency(r.Strata?.P50Ns ?? 0),
                TablePrinter.Latency(r.Fio?.P50Ns ?? 0),
                TablePrinter.Latency(r.Strata?.P99Ns ?? 0),
                TablePrinter.Latency(r.Fio?.P99Ns ?? 0),
                TablePrinter.Ratio(r.P99Ratio),
                r.Strata is null ? "-" : $"{r.Strata.CpuPercent:F0}%",
                r.Fio is null || !double.IsFinite(r.Fio.CpuPercent) ? "-" : $"{r.Fio.CpuPercent:F0}%",
                OtherCpu(r));
        }
        return t.ToString();
    }

    private static void WriteJson(DeviceBenchOptions o, string fioVersion, List<RowResult> results)
    {
        var doc = new
        {
            benchmark = "device",
            timestamp = DateTimeOffset.UtcNow,
            host = new { cpus = Environment.ProcessorCount, os = Environment.OSVersion.VersionString, dotnet = Environment.Version.ToString(), fio = fioVersion },
            file = o.File,
            sizeBytes = o.Size,
            runtimeSeconds = o.Runtime.TotalSeconds,
            warmupSeconds = 1,
            strataConfig = o.StrataConfig,
            fioConfig = string.Join(' ', FioCommon(o)),
            rows = results.Select(r => RowJson(r, "fio")).ToArray(),
        };
        SaveJson(o.JsonPath!, doc);
    }

    /// <summary>One row of the JSON report; the reference engine's figures under referenceKey.</summary>
    internal static Dictionary<string, object?> RowJson(RowResult r, string referenceKey) => new()
    {
        ["name"] = r.Row.Name,
        ["label"] = r.Row.Label,
        ["rw"] = r.Row.FioRw,
        ["blockSize"] = r.Row.BlockSize,
        ["queueDepth"] = r.Row.QueueDepth,
        ["strata"] = r.Strata,
        [referenceKey] = r.Fio,
        ["throughputRatio"] = Finite(r.ThroughputRatio),
        ["p99Ratio"] = Finite(r.P99Ratio),
        ["p50Ratio"] = Finite(r.P50Ratio),
    };

    /// <summary>Writes a JSON report (camelCase; NaN stands for a figure a tool does not report).</summary>
    internal static void SaveJson(string path, object doc)
    {
        var json = JsonSerializer.Serialize(doc, new JsonSerializerOptions
        {
            WriteIndented = true,
            PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
            NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        });
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null)
            Directory.CreateDirectory(dir);
        File.WriteAllText(path, json);
    }

    internal static string OtherCpu(RowResult r)
    {
        var values = new[] { r.Strata?.OtherCpuPercent, r.Fio?.OtherCpuPercent }.Where(v => v is double d && double.IsFinite(d)).Select(v => v!.Value).ToArray();
        return values.Length == 0 ? "-" : string.Join("/", values.Select(v => $"{v:F0}%"));
    }

    internal static double? Finite(double v) => double.IsFinite(v) ? v : null;

    internal static string FormatSize(long bytes) => bytes switch
    {
        >= 1L << 30 when bytes % (1L << 30) == 0 => $"{bytes >> 30} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F0} MiB",
        _ => $"{bytes} bytes",
    };

    /// <summary>One row's figures; Fio is the reference engine (fio, or spdk_nvme_perf on an NVMe target).</summary>
    internal sealed record RowResult(DeviceRow Row, EngineResult? Strata, EngineResult? Fio)
    {
        public double ThroughputRatio => Strata is null || Fio is null || Fio.Iops <= 0 ? double.NaN : Strata.Iops / Fio.Iops;
        public double P99Ratio => Strata is null || Fio is null || Fio.P99Ns <= 0 ? double.NaN : Strata.P99Ns / Fio.P99Ns;
        public double P50Ratio => Strata is null || Fio is null || Fio.P50Ns <= 0 ? double.NaN : Strata.P50Ns / Fio.P50Ns;
    }
}

/// <summary>Parsed options of the device subcommand.</summary>
internal sealed class DeviceBenchOptions
{
    public required string File { get; init; }
    public required long Size { get; init; }
    public required TimeSpan Runtime { get; init; }
    public required DeviceRow[] Rows { get; init; }
    public required int Pollers { get; init; }
    public int? IdleSpin { get; init; }
    public int? CompletionBatch { get; init; }
    public int? BusyPollMicros { get; init; }
    public int[]? PollerCpus { get; init; }
    /// <summary>--irq-cpus: the poller joins, avoids or ignores the device's interrupt CPUs (A/B).</summary>
    public InterruptPlacement InterruptPlacement { get; init; } = new DeviceOptions().InterruptPlacement;
    public required bool SqPoll { get; init; }
    public required bool RunStrata { get; init; }
    public required bool RunFio { get; init; }
    public required string[] FioExtra { get; init; }
    public string? JsonPath { get; init; }
    public TimeSpan WaitIdle { get; init; }

    /// <summary>Set with --uri: the NVMe target run instead of the file.</summary>
    public NvmeBenchOptions? Nvme { get; init; }

    public string MarkerPath => File + ".preconditioned";

    public bool NeedPrecondition
    {
        get
        {
            var fi = new FileInfo(File);
            if (!fi.Exists || fi.Length != Size || !System.IO.File.Exists(MarkerPath))
                return true;
            return System.IO.File.ReadAllText(MarkerPath).Trim() != Size.ToString(CultureInfo.InvariantCulture);
        }
    }

    public string StrataConfig =>
        $"NativeBlockDevice io_uring, pollers={Pollers}, spin={(IdleSpin?.ToString(CultureInfo.InvariantCulture) ?? "default")}, sqpoll={(SqPoll ? 1 : 0)}, registered DMA arena, QD worker loops";

    public static DeviceBenchOptions From(CommandLine cl)
    {
        bool quick = cl.Flag("quick");
        double seconds = cl.Seconds("runtime", quick ? 2 : 10);
        var nvme = NvmeBenchOptions.From(cl);
        string reference = nvme is null ? "fio" : "spdk-perf";
        string engines = cl.String("engines") ?? $"strata,{reference}";
        var engineSet = engines.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var e in engineSet)
            if (e != "strata" && e != reference)
                throw new PerfUsageException($"--engines: unknown engine '{e}' (strata, {reference}{(nvme is null ? "; spdk-perf needs --uri" : "; fio needs a file, not --uri")})");
        int pollers = cl.Int("pollers", 1);
        if (pollers < 1)
            throw new PerfUsageException("--pollers must be at least 1");
        int? spin = cl.Has("spin") ? cl.Int("spin", 0) : null;
        int? batch = cl.Has("batch") ? cl.Int("batch", 1) : null;
        if (batch is < 1)
            throw new PerfUsageException("--batch must be at least 1");
        return new DeviceBenchOptions
        {
            File = Path.GetFullPath(cl.String("file") ?? DefaultFile()),
            Size = cl.Bytes("size", 2L << 30),
            Runtime = TimeSpan.FromSeconds(seconds),
            Rows = DeviceRow.Select(cl.String("rows") ?? (nvme is null ? null : "4k")),
            Pollers = pollers,
            IdleSpin = spin,
            CompletionBatch = batch,
            BusyPollMicros = cl.Has("busy-poll-us") ? cl.SignedInt("busy-poll-us", 0) : null,
            PollerCpus = cl.String("poller-cpus") is string list
                ? list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(c => int.TryParse(c, out int v) && v >= 0 ? v : throw new PerfUsageException($"--poller-cpus: '{c}' is not a CPU number")).ToArray()
                : nvme?.CoreMaskCpus,
            SqPoll = cl.Flag("sqpoll"),
            InterruptPlacement = DeviceBenchmark.ParsePlacement(cl.String("irq-cpus")),
            RunStrata = engineSet.Contains("strata"),
            RunFio = engineSet.Contains(reference),
            FioExtra = (cl.String("fio-args") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries),
            JsonPath = cl.String("json"),
            WaitIdle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero,
            Nvme = nvme,
        };
    }

    /// <summary>perf/results/ of the checkout this binary was built from, else /var/tmp.</summary>
    private static string DefaultFile()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (System.IO.File.Exists(Path.Combine(dir.FullName, "Directory.Build.props")) && Directory.Exists(Path.Combine(dir.FullName, "perf")))
                return Path.Combine(dir.FullName, "perf", "results", "device-bench.dat");
        }
        return "/var/tmp/strata-perf/device-bench.dat";
    }
}
