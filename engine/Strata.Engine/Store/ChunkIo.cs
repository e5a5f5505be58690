using Strata.Engine.Pools;
using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// The chunk data path. Callers hold the chunk's stripe lock, so a chunk's
/// mapping cannot change (and its old extents cannot be reused) under them.
/// </summary>
internal sealed class ChunkIo(Pool pool)
{
    public ChunkMap? Lookup(ImageMeta meta, long index) => pool.Meta.ChunkAt(meta, index);

    /// <summary>
    /// Reads a whole chunk into buffer and verifies it against the CRC32C kept in
    /// the chunk map. With no good copy this throws; wrong bytes never leave. A
    /// replica that fails is reported (when <paramref name="report"/>) and, with
    /// <paramref name="repair"/>, rewritten from a good one: repair needs the
    /// chunk's exclusive lock, since a reader under the shared lock could read
    /// the replica mid-rewrite. Returns true when a bad replica was left unrepaired.
    /// </summary>
    public async Task<bool> ReadVerifiedAsync(ImageMeta meta, long index, ChunkMap map, Memory<byte> buffer,
        bool repair, bool report = true)
    {
        long at = index * meta.ChunkSize;
        List<Replica>? bad = null;
        Replica? good = null;
        foreach (var r in map.Replicas)
        {
            var shard = pool.Shards[r.Target];
            try
            {
                await shard.ReadDataAsync(r.Offset, buffer).ConfigureAwait(false);
            }
            catch (DeviceException e)
            {
                if (report)
                pool.Ras.Emit(new RasEvent(RasIds.DataReadFailed, RasSeverity.Error, RasType.InfoOnly,
                    $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: read of the replica on target {r.Target} failed: {e.Message}",
                    Pool: pool.Label, Image: meta.Label, Target: r.Target, Device: shard.Device.Name, Offset: at));
                (bad ??= []).Add(r);
                continue;
            }
            if (ChunkChecksum.Verify(r, meta.ChunkSize, 0, buffer.Span).Ok)
            {
                good = r;
                break;
            }
            if (report)
            pool.Ras.Emit(new RasEvent(RasIds.DataChecksumMismatch, RasSeverity.Error, RasType.InfoOnly,
                $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: the replica on target {r.Target} does not match its CRC32C",
                Pool: pool.Label, Image: meta.Label, Target: r.Target, Device: shard.Device.Name, Offset: at));
            (bad ??= []).Add(r);
        }
        if (good == null)
        {
            buffer.Span.Clear(); // wrong bytes never leave, not even in the caller's buffer
            string message = $"data integrity error in pool '{pool.Label}', image '{meta.Label}' at offset {at}: none of the {map.Replicas.Length} replica(s) of the {meta.ChunkSize}-byte chunk verifies";
            pool.Ras.Emit(new RasEvent(RasIds.DataUnrecoverable, RasSeverity.Error, RasType.InfoOnly, message, Pool: pool.Label, Image: meta.Label, Offset: at));
            throw new DataIntegrityException(pool.Label, meta.Label, at, message);
        }
        if (bad == null)
            return false;
        if (!repair)
            return true;
        if (pool.State == PoolStatus.Ready)
            await RepairAsync(meta, at, good.Value, bad, buffer).ConfigureAwait(false);
        return false;
    }

    /// <summary>Rewrites bad replicas in place with verified bytes; the CRC in the map stays right.</summary>
    private async Task RepairAsync(ImageMeta meta, long at, Replica good, List<Replica> bad, ReadOnlyMemory<byte> data)
    {
        foreach (var r in bad)
        {
            var shard = pool.Shards[r.Target];
            try
            {
                await shard.WriteDataAsync(r.Offset, data).ConfigureAwait(false);
                try
                {
                    await shard.FlushAsync().ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    pool.Fail(e, "a flush after a replica repair");
                    throw;
                }
                pool.Ras.Emit(new RasEvent(RasIds.ReplicaRepaired, RasSeverity.Notice, RasType.StateChange,
                    $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: replica on target {r.Target} rewritten from target {good.Target}",
                    Pool: pool.Label, Image: meta.Label, Target: r.Target, Device: shard.Device.Name, Offset: at));
            }
            catch (IOException e)
            {
                pool.Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
                    $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: repair of the replica on target {r.Target} failed: {e.Message}",
                    Pool: pool.Label, Image: meta.Label, Target: r.Target, Device: shard.Device.Name, Offset: at));
            }
        }
    }

    /// <summary>
    /// Copy-on-write of one chunk: merge with the verified old contents when the
    /// write is partial, write every replica to a fresh extent, commit the new
    /// mapping (with its CRC32C; the commit's flush makes data and record durable)
    /// and only then free the old extents.
    /// </summary>
    /// <param name="durable">False: writeback (PoolLog.CommitWriteback); the old extents are freed once the new mapping is durable.</param>
    public async Task WriteAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data, bool durable = true)
    {
        pool.ThrowIfNotWritable();
        int cs = meta.ChunkSize;
        var old = Lookup(meta, index);
        byte[]? rented = null;
        ReadOnlyMemory<byte> chunk;
        if (data.Length == cs)
        {
            // A whole chunk: nothing to read or merge.
            chunk = data;
        }
        else
        {
            rented = System.Buffers.ArrayPool<byte>.Shared.Rent(cs);
            var merged = rented.AsMemory(0, cs);
            if (old != null)
                await ReadVerifiedAsync(meta, index, old, merged, repair: true).ConfigureAwait(false);
            else
                merged.Span.Clear();
            data.Span.CopyTo(merged.Span[within..]);
            chunk = merged;
        }
        try
        {
            await WriteReplicasAsync(meta, index, within, chunk, durable, old).ConfigureAwait(false);
        }
        finally
        {
            if (rented != null)
                System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// Allocates one extent of <paramref name="size"/> bytes on target <paramref name="t"/>; when the
    /// pool has none free, runs flush rounds that return extents writeback writes superseded, or waits
    /// for writes in flight to commit (PoolLog.FlushForSpaceAsync), up to PoolLog.SpaceRetries times;
    /// -1 when there is still none.
    /// </summary>
    internal async ValueTask<long> AllocateAsync(int t, long size)
    {
        long frees = pool.ExtentFrees;
        long off = pool.Shards[t].Allocator.Allocate(size);
        for (int i = 0; off < 0 && i < PoolLog.SpaceRetries && await pool.Log.FlushForSpaceAsync(frees).ConfigureAwait(false); i++)
        {
            frees = pool.ExtentFrees;
            off = pool.Shards[t].Allocator.Allocate(size);
        }
        return off;
    }

    /// <summary>Writes the chunk to fresh extents, commits their mapping, then frees (or defers) the old extents.</summary>
    private async Task WriteReplicasAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> chunk, bool durable, ChunkMap? old)
    {
        int cs = meta.ChunkSize;
        uint crc = ChunkChecksum.Of(chunk.Span);
        int rf = Math.Min(pool.Rf, pool.Shards.Length);
        var replicas = new Replica[rf];
        var placement = pool.Placement;
        int allocated = 0;
        try
        {
            for (; allocated < rf; allocated++)
            {
                int t = placement.Target(meta.Id, index, allocated, pool.Shards.Length);
                long off = await AllocateAsync(t, cs).ConfigureAwait(false);
                if (off < 0)
                    throw new NoSpaceException($"no space left in pool '{pool.Label}': target {t} has no free {cs}-byte extent for image '{meta.Label}' at offset {index * cs}");
                replicas[allocated] = new Replica((ushort)t, off, crc);
            }
        }
        catch
        {
            FreeReplicas(replicas, allocated, cs);
            throw;
        }
        // From here until the old extents are freed or deferred the write holds fresh extents: a writer
        // out of space waits for it (PoolLog.HoldFresh) instead of reporting ENOSPC.
        pool.Log.HoldFresh();
        try
        {
            await WriteAndCommitAsync(meta, index, within, chunk, durable, replicas).ConfigureAwait(false);
            if (old == null)
                return;
            if (durable)
                pool.FreeChunk(old, cs);
            else
                pool.Log.FreeWhenDurable(() => pool.FreeChunk(old, cs));
        }
        finally
        {
            pool.Log.ReleaseFresh();
        }
    }

    private async Task WriteAndCommitAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> chunk, bool durable, Replica[] replicas)
    {
        int cs = meta.ChunkSize;
        int rf = replicas.Length;
        if (!durable)
        {
            // Writeback: once the data is written the record is applied and queued (PoolLog.CommitWriteback);
            // the write is answered without waiting for the log.
            try
            {
                await WriteDataAsync(replicas, chunk).ConfigureAwait(false);
            }
            catch (DeviceException e)
            {
                FreeReplicas(replicas, rf, cs);
                throw WriteFailed(meta, index * cs + within, e);
            }
            try
            {
                pool.Log.CommitWriteback([MetaRecords.ChunkMap(meta.Id, index, replicas)]);
            }
            catch
            {
                FreeReplicas(replicas, rf, cs); // nothing was applied or queued
                throw;
            }
            return;
        }
        Task data = WriteDataAsync(replicas, chunk);
        // Durable: the record is logged while the data writes run; the commit round's flush waits for
        // them and covers both (PoolLog.CommitAfterAsync). A crash may keep the record and lose
        // the data: replay checks the data of records past the last durable mark (PoolOpener).
        Task commit;
        try
        {
            commit = pool.Log.CommitAfterAsync(MetaRecords.ChunkMap(meta.Id, index, replicas), data);
        }
        catch
        {
            // Not enqueued (the pool cannot log): the extents are reusable once the writes are done.
            try
            {
                await data.ConfigureAwait(false);
            }
            catch (Exception)
            {
                // The enqueue's own error is the one to report; the writes are done either way.
            }
            FreeReplicas(replicas, rf, cs);
            throw;
        }
        try
        {
            await commit.ConfigureAwait(false);
        }
        catch (DeviceException e) when (data.IsFaulted)
        {
            // The data writes failed and the record was voided in the log (a pad in its place);
            // the round's flush made the pad durable, nothing refers to the new extents.
            FreeReplicas(replicas, rf, cs);
            throw WriteFailed(meta, index * cs + within, e);
        }
        // Any other failure: the record may or may not be durable, so the extents stay allocated.
    }

    /// <summary>Writes the chunk to every replica's extent at once.</summary>
    private Task WriteDataAsync(Replica[] replicas, ReadOnlyMemory<byte> chunk) =>
        replicas.Length == 1
            ? pool.Shards[replicas[0].Target].WriteDataAsync(replicas[0].Offset, chunk).AsTask()
            : Task.WhenAll(replicas.Select(r => pool.Shards[r.Target].WriteDataAsync(r.Offset, chunk).AsTask()));

    private StoreException WriteFailed(ImageMeta meta, long at, DeviceException e)
    {
        pool.Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
            $"pool '{pool.Label}' image '{meta.Label}' write at offset {at} failed: {e.Message}",
            Pool: pool.Label, Image: meta.Label, Device: e.Device, Offset: at));
        return new StoreException(Errno.EIO, $"write to pool '{pool.Label}' image '{meta.Label}' at offset {at} failed: {e.Message}", e);
    }

    private void FreeReplicas(Replica[] replicas, int count, int cs)
    {
        for (int i = 0; i < count; i++)
            pool.Shards[replicas[i].Target].Allocator.Free(replicas[i].Offset, cs);
    }
}
