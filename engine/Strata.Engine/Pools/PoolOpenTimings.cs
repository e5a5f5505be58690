namespace Strata.Engine.Pools;

/// <summary>
/// Where a pool's open spent its time (milliseconds; the daemon logs it, event 1015): shard headers,
/// checkpoint slots read and decoded, the log read and replayed (every shard; LogBytesRead of it read),
/// the state built (allocators rebuilt from the chunk maps), and the open-time checkpoint written; and how many
/// extents replay wrote again from deferred-write records (layout 6; docs/format.md, "Deferred writes").
/// </summary>
public sealed record PoolOpenTimings(double HeadersMs, double CheckpointReadMs, double LogMs, long LogBytesRead, int Records,
    double StateMs, double CheckpointWriteMs, double TotalMs, int DeferredExtentsRewritten = 0);
