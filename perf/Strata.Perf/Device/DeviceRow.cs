namespace Strata.Perf.Device;

/// <summary>One workload of the device benchmark, run by both engines.</summary>
public sealed record DeviceRow(string Name, string Label, bool Write, bool Random, int BlockSize, int QueueDepth)
{
    /// <summary>fio's --rw value for this row.</summary>
    public string FioRw => (Random, Write) switch
    {
        (true, false) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        _ => "write",
    };

    /// <summary>Large-block rows are reported in MB/s, small ones in IOPS.</summary>
    public bool ReportBandwidth => BlockSize >= 1 << 20;

    public static readonly DeviceRow[] All =
    [
        new("randread-4k-qd1", "4K rand read QD1", false, true, 4096, 1),
        new("randread-4k-qd32", "4K rand read QD32", false, true, 4096, 32),
        new("randwrite-4k-qd1", "4K rand write QD1", true, true, 4096, 1),
        new("randwrite-4k-qd32", "4K rand write QD32", true, true, 4096, 32),
        new("read-1m-qd8", "1M seq read QD8", false, false, 1 << 20, 8),
        new("write-1m-qd8", "1M seq write QD8", true, false, 1 << 20, 8),
    ];

    /// <summary>Rows whose name contains any of the comma-separated filters (all when null).</summary>
    public static DeviceRow[] Select(string? filter)
    {
        if (string.IsNullOrWhiteSpace(filter))
            return All;
        var parts = filter.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var rows = All.Where(r => parts.Any(p => r.Name.Contains(p, StringComparison.OrdinalIgnoreCase))).ToArray();
        if (rows.Length == 0)
            throw new Common.PerfUsageException($"--rows '{filter}' matches no row (rows: {string.Join(", ", All.Select(r => r.Name))})");
        return rows;
    }
}

/// <summary>What one engine achieved on one row.</summary>
public sealed record EngineResult(
    double Iops,
    double BytesPerSecond,
    double P50Ns,
    double P99Ns,
    double MeanNs,
    double CpuPercent,
    double? AllocatedBytesPerOp,
    long Operations,
    string Config)
{
    /// <summary>CPU used by everything else on the machine during the run (% of one CPU).</summary>
    public double OtherCpuPercent { get; init; } = double.NaN;
}
