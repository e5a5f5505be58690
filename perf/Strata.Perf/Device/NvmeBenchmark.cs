using Strata.Engine.Device;
using Strata.Perf.Common;

namespace Strata.Perf.Device;

/// <summary>Options of `device --uri`: an NVMe target through the SPDK backend, against spdk_nvme_perf.</summary>
internal sealed class NvmeBenchOptions
{
    public const string DefaultEnv = "hugepages=0&mem_size_mb=1024&pci=0";

    public required string Uri { get; init; }
    public required string? SpdkPerfPath { get; init; }
    public required string EnvText { get; init; }
    public required bool Hugepages { get; init; }
    public required int MemSizeMb { get; init; }
    public required string? IovaMode { get; init; }
    public required string CoreMask { get; init; }

    /// <summary>The CPUs of the core mask: spdk_nvme_perf's -c, and Strata's pollers unless --poller-cpus says otherwise.</summary>
    public int[] CoreMaskCpus => (new SpdkEnvOptions { CoreMask = CoreMask }.CoreMaskCpus() ?? []).ToArray();

    public static NvmeBenchOptions? From(CommandLine cl)
    {
        string? uri = cl.String("uri");
        string? perf = cl.String("spdk-perf");
        string env = cl.String("spdk-env") ?? DefaultEnv;
        if (uri is null)
        {
            if (perf is not null || cl.Has("spdk-env"))
                throw new PerfUsageException("--spdk-perf and --spdk-env need --uri (an NVMe target)");
            return null;
        }
        if (!SpdkEnvironment.IsNvmeUri(uri))
            throw new PerfUsageException($"--uri {uri}: expected nvme-tcp://HOST:PORT/SUBNQN or nvme-pcie://BDF (a file is --file)");
        // The same key=value text the shim takes, read back for spdk_nvme_perf's flags.
        var kv = env.Split('&', StringSplitOptions.RemoveEmptyEntries)
            .Select(p => p.Split('=', 2))
            .ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "");
        return new NvmeBenchOptions
        {
            Uri = uri,
            SpdkPerfPath = perf,
            EnvText = env,
            Hugepages = !kv.TryGetValue("hugepages", out var h) || h != "0",
            MemSizeMb = kv.TryGetValue("mem_size_mb", out var m) && int.TryParse(m, out int mb) ? mb : 0,
            IovaMode = kv.GetValueOrDefault("iova_mode"),
            CoreMask = kv.GetValueOrDefault("core_mask") ?? "0x1",
        };
    }
}

/// <summary>
/// `device --uri`: Strata's NativeBlockDevice on the SPDK backend and spdk_nvme_perf, row by
/// row on the same namespace, one after the other, in the same SPDK environment options.
/// </summary>
internal static class NvmeBenchmark
{
    public static async Task<int> RunAsync(DeviceBenchOptions options, NvmeBenchOptions nvme)
    {
        string? perfBinary = options.RunFio ? SpdkPerf.Locate(nvme.SpdkPerfPath) : null;
        string trid = SpdkPerf.TransportId(nvme.Uri);
        var envArgs = SpdkPerf.EnvArgs(nvme.Hugepages, nvme.MemSizeMb, nvme.IovaMode, nvme.CoreMask);
        SpdkEnvironment.Configure(nvme.EnvText);
        var (capacity, blockSize, maxTransfer) = Probe(nvme.Uri);
        foreach (var row in options.Rows)
            if (row.BlockSize > maxTransfer || row.BlockSize % blockSize != 0)
                throw new PerfUsageException($"row {row.Name}: {row.BlockSize}-byte commands do not fit {nvme.Uri} (block {blockSize}, max transfer {maxTransfer})");

        Console.WriteLine($"device benchmark: {nvme.Uri} ({DeviceBenchmark.FormatSize(capacity)}, {blockSize}-byte blocks), {options.Runtime.TotalSeconds:F0} s per row per engine after 1 s warm-up");
        string pollerCpus = options.PollerCpus is null ? "any CPU" : $"CPU {string.Join(",", options.PollerCpus)}";
        Console.WriteLine($"strata: NativeBlockDevice SPDK backend, pollers={options.Pollers} on {pollerCpus}, batch={options.CompletionBatch?.ToString() ?? "default"}, env {nvme.EnvText}, QD worker loops");
        Console.WriteLine($"spdk_nvme_perf: {perfBinary ?? "-"} -r '{trid}' {string.Join(' ', envArgs)} -a 1 -L");
        Console.WriteLine($"host:   {Environment.ProcessorCount} CPUs, {Environment.OSVersion.VersionString}, .NET {Environment.Version}");
        Console.WriteLine();

        var results = new List<DeviceBenchmark.RowResult>();
        foreach (var row in options.Rows)
        {
            EngineResult? strata = null, perf = null;
            if (options.RunStrata)
            {
                Console.Write($"  {row.Name,-18} strata ...");
                await DeviceBenchmark.WaitIdleAsync(options);
                var h0 = HostCpuSample.Now();
                strata = await RunStrataAsync(options, nvme, row, capacity);
                strata = strata with { OtherCpuPercent = Math.Max(0, HostCpuSample.BusyPercent(h0, HostCpuSample.Now()) - strata.CpuPercent) };
                Console.WriteLine($" {DeviceBenchmark.Throughput(row, strata)}, p50 {TablePrinter.Latency(strata.P50Ns)}, p99 {TablePrinter.Latency(strata.P99Ns)}, cpu {strata.CpuPercent:F0}%, others {strata.OtherCpuPercent:F0}%");
            }
            if (perfBinary is not null)
            {
                Console.Write($"  {row.Name,-18} spdk   ...");
                await DeviceBenchmark.WaitIdleAsync(options);
                var h0 = HostCpuSample.Now();
                var r = SpdkPerf.Run(perfBinary, trid, row.FioRw, row.BlockSize, row.QueueDepth, options.Runtime, envArgs);
                // spdk_nvme_perf busy-polls its core for the whole run, warm-up and attach included.
                perf = new EngineResult(r.Iops, r.BytesPerSecond, r.P50Ns, r.P99Ns, r.MeanNs, double.NaN, null,
                    (long)(r.Iops * options.Runtime.TotalSeconds), r.CommandLine)
                {
                    OtherCpuPercent = HostCpuSample.BusyPercent(h0, HostCpuSample.Now()),
                };
                Console.WriteLine($" {DeviceBenchmark.Throughput(row, perf)}, p50 {TablePrinter.Latency(perf.P50Ns)}, p99 {TablePrinter.Latency(perf.P99Ns)}, machine {perf.OtherCpuPercent:F0}%");
            }
            results.Add(new DeviceBenchmark.RowResult(row, strata, perf));
        }

        Console.WriteLine();
        Console.Write(DeviceBenchmark.BuildTable(results, "spdk_nvme_perf"));
        Console.WriteLine("throughput ratio = Strata/spdk_nvme_perf (higher is better); p99 ratio = Strata p99 / spdk_nvme_perf p99 (lower is better).");
        Console.WriteLine("latency: Strata from the call to the end of the await; spdk_nvme_perf from submission to its completion callback (-L).");
        Console.WriteLine($"cpu: % of one CPU ({Environment.ProcessorCount} here). others cpu = the rest of the machine during the run (for spdk_nvme_perf: the whole machine,");
        Console.WriteLine("its own polling core included); an SPDK target on this machine busy-polls its cores throughout, so it is never idle.");

        if (options.JsonPath is not null)
        {
            WriteJson(options, nvme, trid, envArgs, results);
            Console.WriteLine($"wrote {options.JsonPath}");
        }
        return 0;
    }

    private static (long Capacity, int BlockSize, int MaxTransfer) Probe(string uri)
    {
        using var dev = NativeBlockDevice.Open(uri, new DeviceOptions { ArenaBytes = 1 << 20 });
        var g = dev.Geometry;
        if (g.Kind != DeviceKind.Spdk)
            throw new PerfUsageException($"{uri} did not open on the SPDK backend");
        return (g.Capacity, g.LogicalBlockSize, g.MaxTransfer);
    }

    private static async Task<EngineResult> RunStrataAsync(DeviceBenchOptions o, NvmeBenchOptions nvme, DeviceRow row, long capacity)
    {
        int qd = Math.Max(128, row.QueueDepth);
        string uri = nvme.Uri + (nvme.Uri.Contains('?') ? "&" : "?") + $"qd={qd}";
        var deviceOptions = new DeviceOptions { Pollers = o.Pollers };
        if (o.IdleSpin is int spin)
            deviceOptions = deviceOptions with { IdleSpinIterations = spin };
        if (o.CompletionBatch is int batch)
            deviceOptions = deviceOptions with { CompletionBatch = batch };
        if (o.PollerCpus is not null)
            deviceOptions = deviceOptions with { PollerCpus = o.PollerCpus };
        using var device = NativeBlockDevice.Open(uri, deviceOptions);
        var load = new QueueDepthLoad(row, capacity, device.Buffers.Rent, (offset, m) => device.ReadAsync(offset, m), (offset, m) => device.WriteAsync(offset, m));
        string cpus = deviceOptions.PollerCpus is null ? "any" : string.Join(",", deviceOptions.PollerCpus);
        string config = $"{uri} pollers={deviceOptions.Pollers} cpus={cpus} spin={deviceOptions.IdleSpinIterations} batch={deviceOptions.CompletionBatch} env={nvme.EnvText}";
        return await load.RunAsync(TimeSpan.FromSeconds(1), o.Runtime, config);
    }

    private static void WriteJson(DeviceBenchOptions o, NvmeBenchOptions nvme, string trid, List<string> envArgs, List<DeviceBenchmark.RowResult> results)
    {
        var doc = new
        {
            benchmark = "device-nvme",
            timestamp = DateTimeOffset.UtcNow,
            host = new { cpus = Environment.ProcessorCount, os = Environment.OSVersion.VersionString, dotnet = Environment.Version.ToString() },
            uri = nvme.Uri,
            transportId = trid,
            spdkEnv = nvme.EnvText,
            spdkPerfArgs = string.Join(' ', envArgs),
            runtimeSeconds = o.Runtime.TotalSeconds,
            warmupSeconds = 1,
            rows = results.Select(r => DeviceBenchmark.RowJson(r, "spdkNvmePerf")).ToArray(),
        };
        DeviceBenchmark.SaveJson(o.JsonPath!, doc);
    }
}
