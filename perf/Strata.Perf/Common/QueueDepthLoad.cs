using System.Buffers;
using System.Diagnostics;
using Strata.Perf.Device;

namespace Strata.Perf.Common;

/// <summary>
/// Drives a target the way fio drives a file: QueueDepth worker loops, each
/// keeping one command outstanding on its own buffer, so QueueDepth commands
/// are always in flight, at random block-aligned offsets or on one shared
/// sequential cursor (fio's single job). Latency is measured per command from
/// the call to the end of the await (what a caller sees) into per-worker
/// preallocated histograms; nothing allocates per operation on the load's side.
/// The device and store benchmarks differ only in the target they pass in.
/// </summary>
public sealed class QueueDepthLoad
{
    private const int Warmup = 0, Measure = 1, Stop = 2;

    private readonly Func<int, IMemoryOwner<byte>> _rent;
    private readonly Func<long, Memory<byte>, ValueTask> _read;
    private readonly Func<long, ReadOnlyMemory<byte>, ValueTask> _write;
    private readonly DeviceRow _row;
    private readonly long _blocks;
    private readonly long _span;
    private readonly LatencyHistogram[] _histograms;
    private int _phase;
    private long _cursor;

    /// <param name="rent">A buffer of the row's block size for one worker (a DMA buffer for a device).</param>
    /// <param name="read">One read at a byte offset.</param>
    /// <param name="write">One write at a byte offset.</param>
    public QueueDepthLoad(DeviceRow row, long size, Func<int, IMemoryOwner<byte>> rent,
        Func<long, Memory<byte>, ValueTask> read, Func<long, ReadOnlyMemory<byte>, ValueTask> write)
    {
        _rent = rent;
        _read = read;
        _write = write;
        _row = row;
        _blocks = size / row.BlockSize;
        _span = _blocks * row.BlockSize;
        _histograms = new LatencyHistogram[row.QueueDepth];
        for (int i = 0; i < _histograms.Length; i++)
            _histograms[i] = new LatencyHistogram();
    }

    /// <param name="measuring">Called as the measured window starts, after the warm-up.</param>
    public async Task<EngineResult> RunAsync(TimeSpan warmup, TimeSpan runtime, string config, Action? measuring = null)
    {
        var workers = new Task[_row.QueueDepth];
        ulong seed = (ulong)Environment.TickCount64 * 0x9E3779B97F4A7C15UL | 1;
        for (int i = 0; i < workers.Length; i++)
        {
            int id = i;
            ulong s = seed + (ulong)id * 0xD1B54A32D192ED03UL;
            workers[i] = Task.Run(() => WorkerAsync(id, s));
        }
        await Task.Delay(warmup);

        var process = Process.GetCurrentProcess();
        process.Refresh();
        var cpu0 = process.TotalProcessorTime;
        measuring?.Invoke();
        long alloc0 = GC.GetTotalAllocatedBytes(precise: true);
        long t0 = Stopwatch.GetTimestamp();
        Volatile.Write(ref _phase, Measure);
        await Task.Delay(runtime);
        Volatile.Write(ref _phase, Stop);
        long t1 = Stopwatch.GetTimestamp();
        long alloc1 = GC.GetTotalAllocatedBytes(precise: true);
        process.Refresh();
        var cpu1 = process.TotalProcessorTime;
        await Task.WhenAll(workers);

        var total = new LatencyHistogram();
        foreach (var h in _histograms)
            total.Add(h);
        double seconds = Stopwatch.GetElapsedTime(t0, t1).TotalSeconds;
        double iops = total.Count / seconds;
        return new EngineResult(
            iops,
            iops * _row.BlockSize,
            total.Percentile(50),
            total.Percentile(99),
            total.Mean,
            100.0 * (cpu1 - cpu0).TotalSeconds / seconds,
            total.Count == 0 ? null : (double)(alloc1 - alloc0) / total.Count,
            total.Count,
            config);
    }

    private async Task WorkerAsync(int id, ulong rng)
    {
        using var buffer = _rent(_row.BlockSize);
        var memory = buffer.Memory[.._row.BlockSize];
        if (_row.Write)
            System.Security.Cryptography.RandomNumberGenerator.Fill(memory.Span);
        var histogram = _histograms[id];
        double ticksToNs = 1e9 / Stopwatch.Frequency;
        int bs = _row.BlockSize;
        while (true)
        {
            int phase = Volatile.Read(ref _phase);
            if (phase == Stop)
                break;
            long offset;
            if (_row.Random)
            {
                // xorshift64*: cheap, no sharing between workers.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                offset = (long)((rng * 0x2545F4914F6CDD1DUL) % (ulong)_blocks) * bs;
            }
            else
            {
                // One sequential stream shared by all workers, as fio's single job.
                offset = (Interlocked.Add(ref _cursor, bs) - bs) % _span;
            }
            long start = Stopwatch.GetTimestamp();
            if (_row.Write)
                await _write(offset, memory).ConfigureAwait(false);
            else
                await _read(offset, memory).ConfigureAwait(false);
            long end = Stopwatch.GetTimestamp();
            if (phase == Measure)
                histogram.Record((long)((end - start) * ticksToNs));
        }
    }
}
