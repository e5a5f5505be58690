using System.Numerics;

namespace Strata.Perf.Common;

/// <summary>
/// Log-linear latency histogram in nanoseconds (HdrHistogram's bucketing, 128
/// sub-buckets per power of two: under 0.8% error). Preallocated; Record never
/// allocates. One per worker, merged at the end, so no sharing on the hot path.
/// </summary>
public sealed class LatencyHistogram
{
    private const int SubBits = 7;
    private const int Sub = 1 << SubBits; // values below 2*Sub are exact
    private readonly long[] _counts = new long[(64 - SubBits) * Sub + 2 * Sub];

    public long Count { get; private set; }
    public long Sum { get; private set; }
    public long Max { get; private set; }

    public void Record(long nanoseconds)
    {
        long v = nanoseconds < 0 ? 0 : nanoseconds;
        _counts[Index(v)]++;
        Count++;
        Sum += v;
        if (v > Max)
            Max = v;
    }

    private static int Index(long v)
    {
        if (v < 2 * Sub)
            return (int)v;
        int shift = BitOperations.Log2((ulong)v) - SubBits;
        return shift * Sub + (int)(v >> shift);
    }

    private static long ValueOf(int index)
    {
        if (index < 2 * Sub)
            return index;
        int shift = index / Sub - 1;
        long m = index % Sub + Sub;
        return (m << shift) + ((1L << shift) >> 1); // bucket midpoint
    }

    public void Add(LatencyHistogram other)
    {
        for (int i = 0; i < _counts.Length; i++)
            _counts[i] += other._counts[i];
        Count += other.Count;
        Sum += other.Sum;
        Max = Math.Max(Max, other.Max);
    }

    public void Clear()
    {
        Array.Clear(_counts);
        Count = Sum = Max = 0;
    }

    /// <summary>The value at percentile p (0..100), in nanoseconds; 0 when empty.</summary>
    public long Percentile(double p)
    {
        if (Count == 0)
            return 0;
        long rank = Math.Max(1, (long)Math.Ceiling(p / 100.0 * Count));
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= rank)
                return Math.Min(ValueOf(i), Max);
        }
        return Max;
    }

    public double Mean => Count == 0 ? 0 : (double)Sum / Count;
}
