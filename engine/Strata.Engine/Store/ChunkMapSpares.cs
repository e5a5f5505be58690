using System.Collections.Concurrent;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// Chunk maps a client write may fill and install instead of allocating one (and its replica array):
/// maps that earlier client writes superseded and whose extents are freed, once nothing can still read
/// them (ChunkTable decides it when it replaces them: <see cref="ChunkMap.Reusable"/>). docs/format.md,
/// "Chunk maps in memory".
/// </summary>
internal sealed class ChunkMapSpares
{
    /// <summary>
    /// Enough for the maps that come back at once: a writeback write's superseded map waits for the next flush
    /// round (at most StorageEngineOptions.WritebackFlushInterval, a second), so a flush returns a second's
    /// writes' maps together, and the next second's writes take them (26k on the perf nbd 4K write row; at 8,192
    /// kept, two in three of its writes made a map). About 90 B each at rf 1: 5.6 MiB per pool at most, only
    /// ever reached by a pool that had that many maps waiting at once.
    /// </summary>
    private const int MaxSpares = 65536;

    private readonly ConcurrentQueue<ChunkMap> _spares = new();
    private int _count;
    private long _created, _reused;

    /// <summary>Maps made because none was spare, and maps reused (diagnostics and white-box tests).</summary>
    internal long Created => Interlocked.Read(ref _created);

    internal long Reused => Interlocked.Read(ref _reused);

    /// <summary>
    /// A map with <paramref name="replicas"/> replica slots (filled by the caller before it is installed), no
    /// moving location, <paramref name="blocks"/> as given: a spare, or a new one. Nothing else refers to it.
    /// </summary>
    public ChunkMap Rent(int replicas, bool blocks)
    {
        if (_spares.TryDequeue(out var map))
        {
            Interlocked.Decrement(ref _count);
            Interlocked.Increment(ref _reused);
            System.Diagnostics.Debug.Assert(map.Moving == null, "a spare map has no moving location");
            if (map.Replicas.Length != replicas)
                map.Replicas = new Replica[replicas];
            map.Blocks = blocks;
            map.WritebackOrdinal = 0;
            map.CommitOrdinal = 0;
            map.DeferredEnd = 0;
            map.Reusable = false;
            map.Escaped = false;
            return map;
        }
        Interlocked.Increment(ref _created);
        return new ChunkMap(new Replica[replicas], null, blocks);
    }

    /// <summary>
    /// Takes back <paramref name="map"/>, superseded and its extents freed, by the write path that was its
    /// last user, if it is <see cref="ChunkMap.Reusable"/> (else it is left to the collector).
    /// </summary>
    public void Return(ChunkMap map)
    {
        if (!map.Reusable || map.Moving != null)
            return;
        map.Reusable = false;
        if (Interlocked.Increment(ref _count) <= MaxSpares)
            _spares.Enqueue(map);
        else
            Interlocked.Decrement(ref _count);
    }
}
