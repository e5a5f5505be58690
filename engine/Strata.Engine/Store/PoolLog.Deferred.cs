using Strata.Interop;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// A deferred write's in-place part (docs/format.md, "Deferred writes"): the block table and the blocks
/// its ChunkDeferred record logs, to be written over the chunk's extents once the record is durable. A pooled
/// commit's own, reused (PoolLog.Pending.ReuseDeferred).
/// </summary>
internal sealed class DeferredWrite
{
    /// <summary>The chunk's extents, with the new table's CRC.</summary>
    public Replica[] Replicas { get; private set; } = [];

    /// <summary>Where the blocks start in the chunk (bytes, a multiple of 4 KiB).</summary>
    public int From { get; private set; }

    /// <summary>The chunk's whole new block table (4 KiB), written at each extent's start.</summary>
    public ReadOnlyMemory<byte> Table { get; private set; }

    /// <summary>The blocks, written after the table at <see cref="From"/>.</summary>
    public ReadOnlyMemory<byte> Blocks { get; private set; }

    /// <summary>Fills it (a pooled commit's, reused); returns it.</summary>
    public DeferredWrite Set(Replica[] replicas, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> blocks)
    {
        Replicas = replicas;
        From = from;
        Table = table;
        Blocks = blocks;
        return this;
    }

    /// <summary>Lets go of the writer's arrays (a pooled commit given back).</summary>
    public void Clear() => Set([], 0, default, default);
}

internal sealed partial class PoolLog
{
    private long _deferredWrites;

    /// <summary>The largest deferred write record a write may log: an eighth of the log (a round takes up to a quarter), so a small log checkpoints between a few of them rather than refusing one.</summary>
    internal long DeferredRecordRoom => _walLength / 8;

    /// <summary>
    /// Whether <paramref name="map"/>, a chunk's current mapping, may be a deferred write's base: its record is
    /// durable and at or below the durable mark the deferred record's batch will carry (or in a checkpoint), so
    /// replay never drops it as a tail record whose data did not verify and then applies the deferred record,
    /// which logs only the blocks it touches, over another mapping. A writeback commit's mapping is not, until
    /// a flush round covered it; nor is any while a dropped target holds the mark back (PoolLog.DropPending).
    /// The caller holds the chunk's lock.
    /// </summary>
    public bool IsDurableBase(ChunkMap map) =>
        !DropPending && (map.CommitOrdinal == 0 || map.CommitOrdinal <= Volatile.Read(ref _durableOrdinal));

    /// <summary>
    /// Writeback writes answered before their deferred round completed (ChunkIo.TryWriteDeferredWritebackAsync) that
    /// may be outstanding at once; past it a writeback write copies on write, so a client writing faster than the
    /// rounds flush meets the copy's cost rather than growing a queue of held chunks without bound.
    /// </summary>
    internal const int MaxEarlyDeferred = 256;

    private int _earlyDeferred;

    /// <summary>Takes one of the <see cref="MaxEarlyDeferred"/> slots; false when none is free.</summary>
    internal bool TryTakeEarlyDeferred()
    {
        if (Interlocked.Increment(ref _earlyDeferred) <= MaxEarlyDeferred)
            return true;
        Interlocked.Decrement(ref _earlyDeferred);
        return false;
    }

    internal void ReleaseEarlyDeferred() => Interlocked.Decrement(ref _earlyDeferred);

    /// <summary>Deferred writes committed so far (diagnostics and tests).</summary>
    internal long DeferredWrites => Interlocked.Read(ref _deferredWrites);

    /// <summary>
    /// Commits a ChunkDeferred record (<paramref name="record"/>) and writes <paramref name="write"/> in place:
    /// its round flushes (whether or not the write is durable: the extents' durable contents are at stake),
    /// and only after that flush does the round write the table and the blocks over every replica's extent
    /// that is not excluded; then it applies the record and acknowledges it. So the record is durable before
    /// the first byte of the extent changes, and replay writes the blocks again from it after any crash.
    /// Completes when the blocks are written (not flushed: the record keeps them until a checkpoint, whose
    /// flush covers them, moves the log's head past it). The caller holds the chunk's exclusive lock
    /// throughout, so no reader meets the extent between the record's apply and the end of its writes, or
    /// between those writes and the apply. A failure of the in-place writes fails the round and the pool
    /// (read-only); the next open writes them again from the record.
    /// </summary>
    /// <remarks>
    /// The record is <paramref name="payload"/> (a ChunkDeferred payload naming <paramref name="map"/>'s replicas,
    /// made for this write: the state installs <paramref name="map"/>); the in-place part is <paramref name="table"/>
    /// and <paramref name="blocks"/> (<paramref name="from"/> bytes into the chunk). The commit is pooled (no
    /// allocation per write); the ValueTask is awaited exactly once. The caller's arrays stay in use until it completes.
    /// </remarks>
    /// <param name="writeback">
    /// A writeback write answered once this returns (ChunkIo.TryWriteDeferredWritebackAsync): the record counts as a
    /// writeback commit, so a FLUSH waits for its round.
    /// </param>
    public ValueTask CommitDeferredAsync(byte[] payload, ChunkMap map, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> blocks, bool writeback = false)
    {
        _pool.ThrowIfNotLoggable();
        var p = RentPooled();
        p.ReuseDeferred(payload, map, from, table, blocks);
        QueuePooled(p, writeback);
        Interlocked.Increment(ref _deferredWrites);
        return new ValueTask(p, p.Version);
    }

    /// <summary>
    /// The in-place writes of the round's deferred writes, after its flush and before it is applied: on every
    /// replica not on an excluded target, the table at the extent's start and the blocks after it, all at once.
    /// A replica whose write fails on its device, where another replica of the same write was written, takes
    /// its target out of the pool as a failed replica write of new data does (<see cref="TryDropShard"/>: reads
    /// avoid it from now on, acknowledgements wait for the exclusion's checkpoint). Any other failure fails the
    /// round, and so the pool: the extents may be torn, and only the log can repair them.
    /// </summary>
    private async ValueTask WriteDeferredAsync(Round round)
    {
        // Pooled writes, each awaited exactly once: all started, then awaited in turn (no task per write).
        int count = 0;
        foreach (var p in round.Batch)
            if (p.Deferred is { } w)
                count += w.Replicas.Length;
        var writes = System.Buffers.ArrayPool<ValueTask>.Shared.Rent(count);
        // Per write started: its deferred write's number in the round and its target.
        var owners = System.Buffers.ArrayPool<(int Write, int Target)>.Shared.Rent(count);
        int started = 0, deferred = 0;
        Exception? failed = null;
        List<(int Write, int Target, Exception Error)>? replicaErrors = null;
        try
        {
            foreach (var p in round.Batch)
            {
                if (p.Deferred is not { } w)
                    continue;
                foreach (var r in w.Replicas)
                {
                    if (_pool.IsExcluded(r.Target))
                        continue;
                    owners[started] = (deferred, r.Target);
                    writes[started] = ChunkIo.WriteTableAndBlocksAsync(_pool.Shards[r.Target], r.Offset, w.From, w.Table, w.Blocks);
                    started++;
                }
                deferred++;
            }
        }
        catch (Exception e)
        {
            failed = e;
        }
        for (int i = 0; i < started; i++)
        {
            try
            {
                await writes[i].ConfigureAwait(false);
            }
            catch (Exception e)
            {
                (replicaErrors ??= []).Add((owners[i].Write, owners[i].Target, e));
            }
        }
        if (replicaErrors != null && failed == null)
        {
            // Survived only if every deferred write with a failed replica has one written, and each failed
            // target can leave the pool (rf 2 or more, no chunk only there, not the last log shard).
            var written = new HashSet<int>();
            for (int i = 0; i < started; i++)
                if (!replicaErrors.Exists(x => x.Write == owners[i].Write && x.Target == owners[i].Target))
                    written.Add(owners[i].Write);
            foreach (var (write, target, error) in replicaErrors)
            {
                if (!written.Contains(write) || error is not DeviceException d || !TryDropShard(target, d))
                {
                    failed = error;
                    break;
                }
                _pool.Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
                    $"pool '{_pool.Label}': the in-place write of a deferred write failed on target {target}: {d.Message}; the other replicas were written and the target leaves the pool",
                    Pool: _pool.Label, Target: target, Device: d.Device));
            }
        }
        else if (replicaErrors != null)
        {
            failed ??= replicaErrors[0].Error;
        }
        System.Buffers.ArrayPool<ValueTask>.Shared.Return(writes, clearArray: true);
        System.Buffers.ArrayPool<(int, int)>.Shared.Return(owners);
        if (failed != null)
            throw new StoreException(Errno.EIO,
                $"an in-place write of a deferred write in pool '{_pool.Label}' failed after its record was durable; the extent may be torn, so the pool is read-only and its next open writes the blocks again from the log: {failed.Message}", failed);
    }
}
