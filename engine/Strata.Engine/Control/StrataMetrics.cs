using System.Diagnostics.Metrics;

namespace Strata.Engine.Control;

/// <summary>
/// The engine's Meter ("Strata.Engine"): I/O operations, bytes and latency by operation,
/// space, RAS events by severity and those the log could not write, control requests. Read by `strata engine counters`
/// (EventPipe, as dotnet-counters does) and by the Prometheus endpoint.
/// </summary>
public sealed class StrataMetrics : IDisposable
{
    public const string MeterName = "Strata.Engine";

    private readonly Meter _meter;
    private readonly Counter<long> _ioOps;
    private readonly Counter<long> _ioBytes;
    private readonly Counter<long> _ioErrors;
    private readonly Histogram<double> _ioLatency;
    private readonly Counter<long> _ras;
    private readonly Counter<long> _rasUnwritten;
    private readonly Counter<long> _rasLost;
    private readonly Counter<long> _requests;
    private readonly Counter<long> _rejected;

    public StrataMetrics(Func<(long Total, long Allocated, long PoolUsed)> space, Func<int> pools)
    {
        _meter = new Meter(MeterName, "1.0");
        _ioOps = _meter.CreateCounter<long>("strata.io.operations", "{operation}", "Image I/O operations completed");
        _ioBytes = _meter.CreateCounter<long>("strata.io.bytes", "By", "Image bytes read and written");
        _ioErrors = _meter.CreateCounter<long>("strata.io.errors", "{operation}", "Image I/O operations that failed");
        _ioLatency = _meter.CreateHistogram<double>("strata.io.latency", "ms", "Image I/O latency",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBucketsMs });
        _ras = _meter.CreateCounter<long>("strata.ras.events", "{event}", "RAS events raised, by severity");
        _rasUnwritten = _meter.CreateCounter<long>("strata.ras.unwritten", "{event}", "RAS events the log could not write when raised (a full disk): they wait in memory and are retried");
        _rasLost = _meter.CreateCounter<long>("strata.ras.lost", "{event}", $"RAS events left out of the log because {RasLog.BacklogCapacity} already waited for the disk");
        _requests = _meter.CreateCounter<long>("strata.control.requests", "{request}", "Control API requests served");
        _rejected = _meter.CreateCounter<long>("strata.control.rejected", "{connection}", "Control connections refused by the peer-credential check");
        _meter.CreateObservableGauge("strata.space.total", () => space().Total, "By", "Capacity of all targets");
        _meter.CreateObservableGauge("strata.space.allocated", () => space().Allocated, "By", "Target bytes allocated to pools");
        _meter.CreateObservableGauge("strata.space.used", () => space().PoolUsed, "By", "Pool bytes holding image data (open pools)");
        _meter.CreateObservableGauge("strata.pools", pools, "{pool}", "Pools on the engine's targets");
    }

    /// <summary>The tag keys each instrument records (Prometheus needs them before the first measurement); none when absent.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> LabelNames = new Dictionary<string, string[]>
    {
        ["strata.io.operations"] = ["op"],
        ["strata.io.bytes"] = ["op"],
        ["strata.io.errors"] = ["op"],
        ["strata.io.latency"] = ["op"],
        ["strata.ras.events"] = ["severity"],
        ["strata.upgrade.items.done"] = ["pool"],
        ["strata.upgrade.items.total"] = ["pool"],
        ["strata.upgrade.bytes.done"] = ["pool"],
        ["strata.upgrade.bytes.total"] = ["pool"],
        ["strata.upgrade.rate"] = ["pool"],
        ["strata.upgrade.eta"] = ["pool"],
        ["strata.pool.chunk_writes"] = ["pool", "kind"],
    };

    public static readonly double[] LatencyBucketsMs = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000];

    public Meter Meter => _meter;

    /// <summary>One image I/O; called by <see cref="MeteredImage"/> only, so every data path is counted the same way.</summary>
    public void RecordIo(string op, long bytes, double ms, bool ok)
    {
        var tag = new KeyValuePair<string, object?>("op", op);
        if (!ok)
        {
            _ioErrors.Add(1, tag);
            return;
        }
        _ioOps.Add(1, tag);
        if (op is IoOps.Read or IoOps.Write)
            _ioBytes.Add(bytes, tag);
        _ioLatency.Record(ms, tag);
    }

    /// <summary>
    /// The NBD server's memory gauges, once it runs: payload bytes in flight (bounded by the
    /// engine-wide budget, docs/nbd.md), their peak since start, and the native memory of its payload buffers.
    /// </summary>
    public void ObserveNbd(Func<long> inFlightBytes, Func<long> peakInFlightBytes, Func<long> bufferBytes)
    {
        _meter.CreateObservableGauge("strata.nbd.in_flight", inFlightBytes, "By", "NBD payload bytes in flight over all connections");
        _meter.CreateObservableGauge("strata.nbd.in_flight.peak", peakInFlightBytes, "By", "Most NBD payload bytes in flight at once since the engine started");
        _meter.CreateObservableGauge("strata.nbd.buffers", bufferBytes, "By", "Native memory of the NBD payload buffers (in use and kept for reuse)");
    }

    /// <summary>
    /// The upgrade job of each open pool that has one (<paramref name="running"/>): items and bytes
    /// done and total, bytes per second and seconds left, tagged with the pool (a migration's
    /// progress, for `strata engine counters` and Prometheus; a finished job keeps its last figures).
    /// </summary>
    public void ObserveUpgrades(Func<IReadOnlyList<Layout.UpgradeJobStatus>> running)
    {
        _meter.CreateObservableGauge("strata.upgrade.items.done", () => Each(running(), s => s.ItemsDone), "{item}", "Items (chunks) an upgrade job has done");
        _meter.CreateObservableGauge("strata.upgrade.items.total", () => Each(running(), s => s.ItemsTotal), "{item}", "Items (chunks) an upgrade job has to do");
        _meter.CreateObservableGauge("strata.upgrade.bytes.done", () => Each(running(), s => s.BytesDone), "By", "Bytes an upgrade job has scanned or moved");
        _meter.CreateObservableGauge("strata.upgrade.bytes.total", () => Each(running(), s => s.BytesTotal), "By", "Bytes an upgrade job has to scan or move");
        _meter.CreateObservableGauge("strata.upgrade.rate", () => Each(running(), s => s.BytesPerSecond ?? 0), "By/s", "Bytes per second an upgrade job scans or moves");
        _meter.CreateObservableGauge("strata.upgrade.eta", () => Each(running(), s => s.EtaSeconds ?? 0), "s", "Seconds an upgrade job expects to need still");
    }

    /// <summary>
    /// How each open pool (<paramref name="open"/>) committed its small writes into durable chunks since it
    /// was opened: `in_place` (writeback writes over an extent not yet durable) and `deferred` (layout 6:
    /// the blocks logged, then written over the durable extent; docs/format.md, "Deferred writes"). Writes
    /// that copy the chunk to a new extent are the rest of strata.io.operations{op="write"}.
    /// </summary>
    public void ObservePools(Func<IEnumerable<Pools.Pool>> open)
    {
        _meter.CreateObservableCounter("strata.pool.chunk_writes", () => ChunkWrites(open()), "{write}",
            "Writes a pool committed without copying the chunk, by kind: in_place (over an extent not yet durable) or deferred (logged, then written over the durable extent)");
    }

    private static IEnumerable<Measurement<long>> ChunkWrites(IEnumerable<Pools.Pool> pools)
    {
        foreach (var p in pools)
        {
            var log = p.Log;
            if (log == null)
                continue;
            var pool = new KeyValuePair<string, object?>("pool", p.Label);
            yield return new Measurement<long>(log.InPlaceWrites, pool, new KeyValuePair<string, object?>("kind", "in_place"));
            yield return new Measurement<long>(log.DeferredWrites, pool, new KeyValuePair<string, object?>("kind", "deferred"));
        }
    }

    private static IEnumerable<Measurement<T>> Each<T>(IReadOnlyList<Layout.UpgradeJobStatus> jobs, Func<Layout.UpgradeJobStatus, T> value) where T : struct
    {
        foreach (var s in jobs)
            yield return new Measurement<T>(value(s), new KeyValuePair<string, object?>("pool", s.Pool));
    }

    public void RecordRas(string severity) => _ras.Add(1, new KeyValuePair<string, object?>("severity", severity.ToLowerInvariant()));

    public void RecordRasUnwritten(int events) => _rasUnwritten.Add(events);

    public void RecordRasLost(int events) => _rasLost.Add(events);

    public void RecordRequest() => _requests.Add(1);

    public void RecordRejected() => _rejected.Add(1);

    public void Dispose() => _meter.Dispose();
}
