using System.Text.Json;

namespace Strata.Perf.Common;

/// <summary>What one fio job reported (the read or the write side, whichever ran).</summary>
public sealed record FioResult(double Iops, double BytesPerSecond, double ClatP50Ns, double ClatP99Ns, double ClatMeanNs, double CpuUserPct, double CpuSysPct, string CommandLine);

/// <summary>
/// Runs fio and parses its JSON report. Shared by every subcommand that
/// drives or compares against fio (device, store, nbd).
/// </summary>
public static class Fio
{
    /// <summary>Returns fio's version, or throws a one-line error when fio is missing.</summary>
    public static string RequireInstalled()
    {
        try
        {
            var (code, stdout, stderr) = Run(["--version"], TimeSpan.FromSeconds(10));
            if (code != 0)
                throw new PerfUsageException($"fio --version failed (exit {code}): {stderr.Trim()}");
            return stdout.Trim();
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new PerfUsageException("fio not found on PATH: install it (apt-get install fio) to run the comparison");
        }
    }

    /// <summary>Runs one fio job (arguments without --output-format) and parses jobs[0].</summary>
    /// <param name="prefix">A command fio runs under (env, setpriv), or null.</param>
    public static FioResult RunJob(IReadOnlyList<string> args, TimeSpan timeout, IReadOnlyList<string>? prefix = null)
    {
        var all = new List<string>(args) { "--output-format=json" };
        var (code, stdout, stderr) = prefix is { Count: > 0 }
            ? ExternalTool.Run(prefix[0], [.. prefix.Skip(1), "fio", .. all], timeout)
            : Run(all, timeout);
        string cmd = "fio " + string.Join(' ', args);
        if (code != 0)
            throw new PerfUsageException($"fio failed (exit {code}): {FirstLine(stderr)} [{cmd}]");
        return Parse(stdout, cmd);
    }

    /// <summary>Parses fio's --output-format=json report; takes whichever direction did I/O.</summary>
    /// <summary>
    /// The fio options every comparison uses: its best sensible io_uring setup on a VM
    /// without IOPOLL, and total-latency percentiles (the span Strata's figures cover).
    /// </summary>
    public static readonly IReadOnlyList<string> ComparisonArgs =
    [
        "--ioengine=io_uring", "--direct=1", "--hipri=0", "--fixedbufs", "--registerfiles",
        "--randrepeat=0", "--norandommap", "--time_based", "--ramp_time=1", "--group_reporting",
        "--percentile_list=50:99", "--lat_percentiles=1",
    ];

    public static FioResult Parse(string stdout, string commandLine)
    {
        // fio may print notes before the JSON document.
        int start = stdout.IndexOf('{');
        if (start < 0)
            throw new PerfUsageException($"fio printed no JSON report [{commandLine}]: {FirstLine(stdout)}");
        using var doc = JsonDocument.Parse(stdout.AsMemory(start));
        var job = doc.RootElement.GetProperty("jobs")[0];
        var read = job.GetProperty("read");
        var write = job.GetProperty("write");
        var side = read.GetProperty("io_bytes").GetInt64() >= write.GetProperty("io_bytes").GetInt64() ? read : write;
        // Total latency (submission + completion) when fio ran with --lat_percentiles=1:
        // that is what Strata's figure measures (call to completion); clat leaves out submission.
        var clat = side.TryGetProperty("lat_ns", out var lat) && lat.TryGetProperty("percentile", out _) ? lat : side.GetProperty("clat_ns");
        double p50 = 0, p99 = 0;
        if (clat.TryGetProperty("percentile", out var pct))
        {
            p50 = pct.TryGetProperty("50.000000", out var a) ? a.GetDouble() : 0;
            p99 = pct.TryGetProperty("99.000000", out var b) ? b.GetDouble() : 0;
        }
        return new FioResult(
            side.GetProperty("iops").GetDouble(),
            side.GetProperty("bw_bytes").GetDouble(),
            p50, p99,
            clat.GetProperty("mean").GetDouble(),
            job.TryGetProperty("usr_cpu", out var u) ? u.GetDouble() : 0,
            job.TryGetProperty("sys_cpu", out var s) ? s.GetDouble() : 0,
            commandLine);
    }

    private static string FirstLine(string s)
    {
        s = s.Trim();
        int nl = s.IndexOf('\n');
        return nl < 0 ? s : s[..nl];
    }

    public static (int Code, string Stdout, string Stderr) Run(IReadOnlyList<string> args, TimeSpan timeout) =>
        ExternalTool.Run("fio", args, timeout);
}
