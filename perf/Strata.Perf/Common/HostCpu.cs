using System.Globalization;

namespace Strata.Perf.Common;

/// <summary>
/// Machine-wide CPU use from /proc/stat, so a result taken while something
/// else was busy (builds, tests) says so. Busy polling is sensitive to that:
/// a spinning poller competes with every runnable thread on a small machine.
/// </summary>
public readonly record struct HostCpuSample(long BusyTicks, long TotalTicks)
{
    public static HostCpuSample Now()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/stat"))
            {
                if (!line.StartsWith("cpu ", StringComparison.Ordinal))
                    continue;
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                long total = 0, idle = 0;
                for (int i = 1; i < f.Length && i <= 8; i++)
                {
                    long v = long.Parse(f[i], CultureInfo.InvariantCulture);
                    total += v;
                    if (i is 4 or 5) // idle, iowait
                        idle += v;
                }
                return new HostCpuSample(total - idle, total);
            }
        }
        catch (IOException)
        {
        }
        return default;
    }

    /// <summary>Busy CPUs between two samples, as a percentage of one CPU (0..100*ProcessorCount).</summary>
    public static double BusyPercent(HostCpuSample a, HostCpuSample b)
    {
        long total = b.TotalTicks - a.TotalTicks;
        if (total <= 0)
            return double.NaN;
        return 100.0 * Environment.ProcessorCount * (b.BusyTicks - a.BusyTicks) / total;
    }
}

/// <summary>Waits for the machine to go quiet before a measured run.</summary>
public static class HostIdle
{
    /// <summary>
    /// Samples machine-wide CPU in half-second windows until one is under
    /// thresholdPercent (of one CPU) or maxWait passes; returns the last busy figure.
    /// </summary>
    public static async Task<double> WaitAsync(TimeSpan maxWait, double thresholdPercent = 25)
    {
        var deadline = DateTime.UtcNow + maxWait;
        while (true)
        {
            var a = HostCpuSample.Now();
            await Task.Delay(500);
            double busy = HostCpuSample.BusyPercent(a, HostCpuSample.Now());
            if (!double.IsFinite(busy) || busy < thresholdPercent || DateTime.UtcNow >= deadline)
                return busy;
        }
    }
}

/// <summary>Dirty page-cache data of earlier runs, written back before the next measured run.</summary>
public static partial class HostWriteback
{
    /// <summary>
    /// Writes back every dirty page of the machine (sync(2)). A server that writes through the
    /// page cache leaves gigabytes dirty after a write row; without this their writeback falls on
    /// whichever server runs next (measured: peers' and Strata's rows after a buffered write row at
    /// half their rate, with "others" at 35-58% of a CPU in kernel writeback threads).
    /// </summary>
    public static void Sync() => SyncNative();

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "sync")]
    private static partial void SyncNative();
}
