using System.Globalization;
using System.Text.RegularExpressions;

namespace Strata.Perf.Common;

/// <summary>What one spdk_nvme_perf run reported (its "Total" line and -L percentiles).</summary>
public sealed record SpdkPerfResult(double Iops, double BytesPerSecond, double P50Ns, double P99Ns, double MeanNs, string CommandLine);

/// <summary>
/// Runs SPDK's spdk_nvme_perf (from an SPDK installation; the path comes from --spdk-perf or
/// STRATA_SPDK_NVME_PERF) against the same NVMe target Strata uses, and parses its text report.
/// </summary>
public static partial class SpdkPerf
{
    public const string PathVariable = "STRATA_SPDK_NVME_PERF";

    /// <summary>The binary to run, or a one-line error naming how to give it.</summary>
    public static string Locate(string? option)
    {
        string? path = option ?? Environment.GetEnvironmentVariable(PathVariable);
        if (string.IsNullOrEmpty(path))
            throw new PerfUsageException($"spdk_nvme_perf not given: pass --spdk-perf PATH or set {PathVariable} (it is in SPDK's build/bin)");
        if (!File.Exists(path))
            throw new PerfUsageException($"spdk_nvme_perf not found at {path}");
        return Path.GetFullPath(path);
    }

    /// <summary>
    /// SPDK's transport id text for a Strata nvme URI: nvme-tcp://HOST:PORT/SUBNQN[?ns=N] or
    /// nvme-pcie://BDF[?ns=N].
    /// </summary>
    public static string TransportId(string uri)
    {
        string rest;
        string? ns = null;
        int q = uri.IndexOf('?');
        string query = q < 0 ? "" : uri[(q + 1)..];
        string main = q < 0 ? uri : uri[..q];
        foreach (var kv in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
            if (kv.StartsWith("ns=", StringComparison.Ordinal))
                ns = kv[3..];
        string nsPart = ns is null ? "" : $" ns:{ns}";
        if (main.StartsWith("nvme-pcie://", StringComparison.Ordinal))
            return $"trtype:PCIe traddr:{main["nvme-pcie://".Length..]}{nsPart}";
        if (!main.StartsWith("nvme-tcp://", StringComparison.Ordinal))
            throw new PerfUsageException($"--uri {uri}: expected nvme-tcp://HOST:PORT/SUBNQN or nvme-pcie://BDF");
        rest = main["nvme-tcp://".Length..];
        int slash = rest.IndexOf('/');
        if (slash <= 0 || slash == rest.Length - 1)
            throw new PerfUsageException($"--uri {uri}: expected nvme-tcp://HOST:PORT/SUBNQN");
        string hostPort = rest[..slash], nqn = rest[(slash + 1)..];
        string host = hostPort, port = "4420", adrfam = "IPv4";
        if (hostPort.StartsWith('['))
        {
            int end = hostPort.IndexOf(']');
            host = hostPort[1..end];
            adrfam = "IPv6";
            if (end + 1 < hostPort.Length && hostPort[end + 1] == ':')
                port = hostPort[(end + 2)..];
        }
        else if (hostPort.LastIndexOf(':') is int c and > 0)
        {
            host = hostPort[..c];
            port = hostPort[(c + 1)..];
        }
        return $"trtype:TCP adrfam:{adrfam} traddr:{host} trsvcid:{port} subnqn:{nqn}{nsPart}";
    }

    /// <summary>spdk_nvme_perf's options for the environment Strata runs in (hugepages, memory, IOVA mode, cores).</summary>
    public static List<string> EnvArgs(bool hugepages, int memSizeMb, string? iovaMode, string coreMask)
    {
        var args = new List<string> { "-c", coreMask };
        if (!hugepages)
            args.Add("--no-huge");
        if (memSizeMb > 0)
            args.AddRange(["-s", memSizeMb.ToString(CultureInfo.InvariantCulture)]);
        if (!string.IsNullOrEmpty(iovaMode))
            args.AddRange(["--iova-mode", iovaMode]);
        return args;
    }

    /// <summary>Runs one workload: rw (randread, randwrite, read, write), block size, queue depth, seconds after a 1 s warm-up.</summary>
    public static SpdkPerfResult Run(string binary, string transportId, string rw, int blockSize, int queueDepth, TimeSpan runtime,
        IReadOnlyList<string> envArgs)
    {
        var args = new List<string>
        {
            "-q", queueDepth.ToString(CultureInfo.InvariantCulture),
            "-o", blockSize.ToString(CultureInfo.InvariantCulture),
            "-w", rw,
            "-t", ((int)Math.Ceiling(runtime.TotalSeconds)).ToString(CultureInfo.InvariantCulture),
            "-a", "1",
            "-L",
            "-r", transportId,
        };
        args.AddRange(envArgs);
        string cmd = binary + " " + string.Join(' ', args.Select(a => a.Contains(' ') ? $"'{a}'" : a));
        var (code, stdout, stderr) = ExternalTool.Run(binary, args, runtime + TimeSpan.FromSeconds(60));
        if (code != 0)
            throw new PerfUsageException($"spdk_nvme_perf failed (exit {code}): {LastLines(stderr + stdout)} [{cmd}]");
        return Parse(stdout, blockSize, cmd);
    }

    [GeneratedRegex(@"^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", RegexOptions.Multiline)]
    private static partial Regex TotalLine();

    [GeneratedRegex(@"^\s*([\d.]+)%\s*:\s*([\d.]+)us", RegexOptions.Multiline)]
    private static partial Regex PercentileLine();

    /// <summary>Parses the "Total : IOPS MiB/s avg min max" line and the -L summary percentiles.</summary>
    public static SpdkPerfResult Parse(string stdout, int blockSize, string commandLine)
    {
        var total = TotalLine().Match(stdout);
        if (!total.Success)
            throw new PerfUsageException($"spdk_nvme_perf printed no Total line [{commandLine}]: {LastLines(stdout)}");
        double iops = double.Parse(total.Groups[1].Value, CultureInfo.InvariantCulture);
        double meanUs = double.Parse(total.Groups[3].Value, CultureInfo.InvariantCulture);
        double p50 = 0, p99 = 0;
        foreach (Match m in PercentileLine().Matches(stdout))
        {
            double pct = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            double us = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
            if (Math.Abs(pct - 50) < 1e-6 && p50 == 0)
                p50 = us * 1000;
            if (Math.Abs(pct - 99) < 1e-6 && p99 == 0)
                p99 = us * 1000;
        }
        return new SpdkPerfResult(iops, iops * blockSize, p50, p99, meanUs * 1000, commandLine);
    }

    private static string LastLines(string s)
    {
        var lines = s.Trim().Split('\n');
        return string.Join(" | ", lines.Skip(Math.Max(0, lines.Length - 3)).Select(l => l.Trim()));
    }

}
