using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Strata.Engine.Migration;

/// <summary>
/// Where a migration's chunks spend their time (perf migrate --stages): per stage of a chunk's
/// move, a histogram of its durations and their sum. The sum over the job's wall time is the
/// stage's mean occupancy (Little's law): how many of the window's places it held on average.
/// Off unless <see cref="Current"/> is set (by the benchmark, before the loop starts): the
/// engine's own runs read no clock for it.
/// </summary>
internal sealed class MigrationStageTimes
{
    /// <summary>Collects for every loop started while set; null: off.</summary>
    internal static MigrationStageTimes? Current { get; set; }

    public enum Stage
    {
        /// <summary>From the loop's enqueue to the move starting on the thread pool.</summary>
        Queue,
        /// <summary>Taking the chunk's exclusive hold.</summary>
        Lock,
        /// <summary>Waiting for a read slot on the source targets.</summary>
        ReadSlot,
        /// <summary>Reserving the destination extents.</summary>
        Allocate,
        /// <summary>The verified read of the source.</summary>
        Read,
        /// <summary>The transform and the copy's checksum check.</summary>
        Produce,
        /// <summary>Waiting for write slots on the destination targets.</summary>
        WriteSlot,
        /// <summary>The destination writes.</summary>
        Write,
        /// <summary>The map switch: its commit round made durable, the source freed.</summary>
        Switch,
        /// <summary>Done, until the loop took it off the window's head (an earlier chunk was not done).</summary>
        Drain,
        /// <summary>Loop: blocked on the window's head because the window of results was full.</summary>
        WindowFull,
        /// <summary>Loop: waiting for a copy place (every one taken by a chunk not yet written).</summary>
        Place,
        /// <summary>Loop: in the throttle (waiting for the window to empty, then for its turn).</summary>
        Throttle,
    }

    private const int Stages = (int)Stage.Throttle + 1;
    /// <summary>Four buckets per power of two of microseconds, up to 2^32 µs.</summary>
    private const int Buckets = 4 * 32;

    private readonly long[,] _buckets = new long[Stages, Buckets];
    private readonly long[] _count = new long[Stages], _sum = new long[Stages], _max = new long[Stages];
    /// <summary>Summed time per stage and target, for the stages that wait on or use one target (the first, for several).</summary>
    private const int Targets = 16;
    private readonly long[,] _perTarget = new long[Stages, Targets];
    private long _start = Stopwatch.GetTimestamp(), _end;

    /// <summary>What the pool's commit rounds did meanwhile (filled in by the benchmark).</summary>
    public string? Commits { get; set; }

    private long _runTicks;

    /// <summary>Starts the job's wall time.</summary>
    public void Begin() => _start = Stopwatch.GetTimestamp();

    public void End() => _end = Stopwatch.GetTimestamp();

    /// <summary>A loop's pass over the chunks took this long (the occupancies are over the passes' time).</summary>
    public void Ran(long ticks) => Interlocked.Add(ref _runTicks, ticks);

    public void Add(Stage stage, long ticks, int target = -1)
    {
        int s = (int)stage;
        ticks = Math.Max(0, ticks);
        if (target is >= 0 and < Targets)
            Interlocked.Add(ref _perTarget[s, target], ticks);
        Interlocked.Increment(ref _count[s]);
        Interlocked.Add(ref _sum[s], ticks);
        long max;
        while (ticks > (max = Volatile.Read(ref _max[s])) && Interlocked.CompareExchange(ref _max[s], ticks, max) != max)
        {
        }
        Interlocked.Increment(ref _buckets[s, Bucket(ticks)]);
    }

    private static int Bucket(long ticks)
    {
        double us = ticks * 1e6 / Stopwatch.Frequency;
        if (us < 1)
            return 0;
        int b = (int)(Math.Log2(us) * 4) + 1;
        return Math.Min(b, Buckets - 1);
    }

    /// <summary>The upper edge of bucket <paramref name="b"/> in milliseconds.</summary>
    private static double UpperMs(int b) => b == 0 ? 0.001 : Math.Pow(2, b / 4.0) / 1000;

    private double Percentile(int s, double p)
    {
        long n = Interlocked.Read(ref _count[s]);
        if (n == 0)
            return 0;
        long want = (long)Math.Ceiling(n * p), seen = 0;
        for (int b = 0; b < Buckets; b++)
        {
            seen += _buckets[s, b];
            if (seen >= want)
                return UpperMs(b);
        }
        return UpperMs(Buckets - 1);
    }

    /// <summary>A table: per stage its count, mean, p50, p90, p99, max (ms) and mean occupancy over the job.</summary>
    public override string ToString()
    {
        double job = (Math.Max(_end, _start) - _start) / (double)Stopwatch.Frequency;
        double wall = _runTicks > 0 ? _runTicks / (double)Stopwatch.Frequency : job;
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{"stage",-11} {"count",7} {"mean ms",8} {"p50",8} {"p90",8} {"p99",8} {"max",8} {"occupancy",9}");
        for (int s = 0; s < Stages; s++)
        {
            long n = _count[s];
            if (n == 0)
                continue;
            double ms = 1000.0 / Stopwatch.Frequency;
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"{(Stage)s,-11} {n,7} {_sum[s] * ms / n,8:0.000} {Percentile(s, 0.5),8:0.000} {Percentile(s, 0.9),8:0.000} {Percentile(s, 0.99),8:0.000} {_max[s] * ms,8:0.000} {(wall > 0 ? _sum[s] / (double)Stopwatch.Frequency / wall : 0),9:0.00}");
        }
        for (int s = 0; s < Stages; s++)
        {
            var per = Enumerable.Range(0, Targets).Where(t => _perTarget[s, t] > 0).ToList();
            if (per.Count > 0 && wall > 0)
                sb.AppendLine(CultureInfo.InvariantCulture, $"{(Stage)s,-11} occupancy per target: {string.Join(", ", per.Select(t => string.Create(CultureInfo.InvariantCulture, $"{t}: {_perTarget[s, t] / (double)Stopwatch.Frequency / wall:0.00}")))}");
        }
        sb.Append(CultureInfo.InvariantCulture, $"(durations: upper bucket edges, 4 per power of two; occupancy: the stage's summed time over the {wall:0.00} s of the loop's first pass, of the job's {job:0.00} s)");
        return sb.ToString();
    }
}
