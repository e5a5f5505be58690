using Strata.Engine.Device;
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

    /// <summary>Whether the chunk is mapped (an existence check: no map is handed out, none is kept from reuse).</summary>
    public bool IsMapped(ImageMeta meta, long index) => pool.Meta.IsMapped(meta, index);

    /// <summary>
    /// Reads a whole chunk into buffer and verifies it against the chunk map (its CRC32C, or its block
    /// table and every block). With no good copy this throws; wrong bytes never leave. A
    /// replica that fails is reported (when <paramref name="report"/>) and, with
    /// <paramref name="repair"/>, rewritten from a good one: repair needs the
    /// chunk's exclusive lock, since a reader under the shared lock could read
    /// the replica mid-rewrite. Returns true when a bad replica was left unrepaired.
    /// </summary>
    /// <param name="blockCrcs">For a chunk with a block table: receives the good replica's verified block CRCs (chunk size / 4 KiB of them).</param>
    /// <remarks>Pooled (a ValueTask to await once): the read paths keep no state machine box per call.</remarks>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> ReadVerifiedAsync(ImageMeta meta, long index, ChunkMap map, Memory<byte> buffer,
        bool repair, bool report = true, uint[]? blockCrcs = null)
    {
        long at = index * meta.ChunkSize;
        List<Replica>? bad = null;
        Replica? good = null;
        foreach (var r in map.Replicas)
        {
            if (pool.IsExcluded(r.Target))
                continue; // not read, not repaired: the rebuild copies it elsewhere
            ChunkVerdict verdict;
            try
            {
                if (map.Blocks)
                {
                    verdict = await ReadReplicaAsync(meta, index, blocks: true, r, 0, buffer, blockCrcs).ConfigureAwait(false);
                }
                else
                {
                    // ReadReplicaAsync's whole-chunk case, here: one async frame less per read (issue 17).
                    await pool.Shards[r.Target].ReadDataAsync(r.Offset, buffer).ConfigureAwait(false);
                    verdict = ChunkChecksum.Verify(r, meta.ChunkSize, 0, buffer.Span);
                }
            }
            catch (DeviceException e)
            {
                if (report)
                    ReadFailed(meta, at, r, e);
                (bad ??= []).Add(r);
                continue;
            }
            if (verdict.Ok)
            {
                good = r;
                break;
            }
            if (report)
                Mismatch(meta, at, verdict);
            (bad ??= []).Add(r);
        }
        if (good == null)
        {
            buffer.Span.Clear(); // wrong bytes never leave, not even in the caller's buffer
            throw Unrecoverable(meta, at, map);
        }
        if (bad == null)
            return false;
        if (!repair)
            return true;
        if (pool.State == PoolStatus.Ready)
        {
            byte[]? extent = null;
            try
            {
                ReadOnlyMemory<byte> data = buffer;
                if (map.Blocks)
                {
                    // The table is a function of the image, the chunk and its data: rebuilt, it is the good replica's.
                    extent = System.Buffers.ArrayPool<byte>.Shared.Rent(ChunkChecksum.TableSize + meta.ChunkSize);
                    ChunkChecksum.BuildTable(meta.Id, index, buffer.Span, extent.AsSpan(0, ChunkChecksum.TableSize));
                    buffer.Span.CopyTo(extent.AsSpan(ChunkChecksum.TableSize));
                    data = extent.AsMemory(0, ChunkChecksum.TableSize + meta.ChunkSize);
                }
                await RepairAsync(meta, at, good.Value, bad, data).ConfigureAwait(false);
            }
            finally
            {
                if (extent != null)
                    System.Buffers.ArrayPool<byte>.Shared.Return(extent);
            }
        }
        return false;
    }

    /// <summary>
    /// Reads bytes [<paramref name="within"/>, within + dest.Length) of a mapped chunk and verifies
    /// them: a chunk with a block table reads its table (or takes it from the pool's cache) and only
    /// the 4 KiB blocks the range touches; one without reads and verifies all of it. Replicas are
    /// tried in order; bad ones are reported and left for the caller to repair under the chunk's
    /// exclusive lock (returns true). With no good copy this throws.
    /// </summary>
    public ValueTask<bool> ReadAsync(ImageMeta meta, long index, ChunkMap map, int within, Memory<byte> dest)
    {
        // A whole chunk without a table (every read of a 4 KiB chunk): the verified read itself, no frame of its own.
        if (!map.Blocks && within == 0 && dest.Length == meta.ChunkSize)
            return ReadVerifiedAsync(meta, index, map, dest, repair: false);
        return ReadPartAsync(meta, index, map, within, dest);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ReadPartAsync(ImageMeta meta, long index, ChunkMap map, int within, Memory<byte> dest)
    {
        int cs = meta.ChunkSize;
        var (from, length) = ChunkChecksum.VerifiedRange(map.Blocks, cs, within, dest.Length);
        if ((from, length) == (within, dest.Length) && !map.Blocks)
            return await ReadVerifiedAsync(meta, index, map, dest, repair: false).ConfigureAwait(false);
        bool direct = (from, length) == (within, dest.Length);
        byte[]? rented = direct ? null : System.Buffers.ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var part = direct ? dest : rented.AsMemory(0, length);
            if (!map.Blocks)
            {
                bool unrepaired = await ReadVerifiedAsync(meta, index, map, part, repair: false).ConfigureAwait(false);
                part.Span.Slice(within - from, dest.Length).CopyTo(dest.Span);
                return unrepaired;
            }
            long at = index * cs;
            bool bad = false;
            foreach (var r in map.Replicas)
            {
                if (pool.IsExcluded(r.Target))
                    continue;
                ChunkVerdict verdict;
                try
                {
                    verdict = await ReadReplicaAsync(meta, index, blocks: true, r, from, part).ConfigureAwait(false);
                }
                catch (DeviceException e)
                {
                    ReadFailed(meta, at, r, e);
                    bad = true;
                    continue;
                }
                if (verdict.Ok)
                {
                    if (!direct)
                        part.Span.Slice(within - from, dest.Length).CopyTo(dest.Span);
                    return bad;
                }
                Mismatch(meta, at, verdict);
                bad = true;
            }
            part.Span.Clear();
            throw Unrecoverable(meta, at, map);
        }
        finally
        {
            if (rented != null)
                System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// Reads data bytes [<paramref name="from"/>, from + part.Length) of one replica into
    /// <paramref name="part"/> and verifies them: the whole chunk against its CRC, or the replica's
    /// block table (cached, or read: together with the data when they are adjacent) and each block read.
    /// </summary>
    /// <param name="crcsOut">When the replica has a block table and verifies: receives its block CRCs.</param>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ChunkVerdict> ReadReplicaAsync(ImageMeta meta, long index, bool blocks, Replica r, int from, Memory<byte> part, uint[]? crcsOut = null)
    {
        var shard = pool.Shards[r.Target];
        if (!blocks)
        {
            await shard.ReadDataAsync(r.Offset, part).ConfigureAwait(false);
            return ChunkChecksum.Verify(r, meta.ChunkSize, from, part.Span);
        }
        const int T = ChunkChecksum.TableSize;
        if (pool.Tables.TryGet(r, out var crcs))
        {
            await shard.ReadDataAsync(r.Offset + T + from, part).ConfigureAwait(false);
            return BlocksVerdict(crcs);
        }
        ChunkVerdict table;
        if (from == 0 && DeviceIo.AnyBuffer(shard.Device) && (shard.Device.Geometry.Features & DeviceFeatures.CachedRead) != 0)
        {
            // Adjacent, on a buffered file: the table and the blocks in one device call (one preadv2
            // when the page cache holds them), the blocks straight into part with no copy.
            var tableBytes = System.Buffers.ArrayPool<byte>.Shared.Rent(T);
            try
            {
                await shard.ReadDataScatterAsync(r.Offset, tableBytes.AsMemory(0, T), part).ConfigureAwait(false);
                table = ChunkChecksum.VerifyTable(r, meta.Id, index, meta.ChunkSize, tableBytes.AsSpan(0, T), out crcs);
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(tableBytes);
            }
        }
        else if (from == 0 && part.Length <= 64 * 1024)
        {
            // Adjacent and small: one read of the table and the blocks.
            var both = System.Buffers.ArrayPool<byte>.Shared.Rent(T + part.Length);
            try
            {
                await shard.ReadDataAsync(r.Offset, both.AsMemory(0, T + part.Length)).ConfigureAwait(false);
                table = ChunkChecksum.VerifyTable(r, meta.Id, index, meta.ChunkSize, both.AsSpan(0, T), out crcs);
                both.AsSpan(T, part.Length).CopyTo(part.Span);
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(both);
            }
        }
        else
        {
            var tableBytes = System.Buffers.ArrayPool<byte>.Shared.Rent(T);
            try
            {
                // Two reads at once: the table and the blocks.
                var readTable = shard.ReadDataAsync(r.Offset, tableBytes.AsMemory(0, T));
                var readData = shard.ReadDataAsync(r.Offset + T + from, part);
                try
                {
                    await readTable.ConfigureAwait(false);
                }
                finally
                {
                    await readData.ConfigureAwait(false);
                }
                table = ChunkChecksum.VerifyTable(r, meta.Id, index, meta.ChunkSize, tableBytes.AsSpan(0, T), out crcs);
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(tableBytes);
            }
        }
        if (!table.Ok)
            return table;
        pool.Tables.Add(r, crcs!);
        return BlocksVerdict(crcs!);

        ChunkVerdict BlocksVerdict(uint[] table)
        {
            var v = ChunkChecksum.VerifyBlocks(r, table, from / ChunkChecksum.BlockSize, part.Span);
            if (v.Ok && crcsOut != null)
                table.AsSpan(0, meta.ChunkSize / ChunkChecksum.BlockSize).CopyTo(crcsOut);
            return v;
        }
    }

    private void ReadFailed(ImageMeta meta, long at, Replica r, DeviceException e)
    {
        var shard = pool.Shards[r.Target];
        pool.OnDeviceError(r.Target, null);
        pool.Ras.Emit(new RasEvent(RasIds.DataReadFailed, RasSeverity.Error, RasType.InfoOnly,
            $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: read of the replica on target {r.Target} failed: {e.Message}",
            Pool: pool.Label, Image: meta.Label, Target: r.Target, Device: shard.Device.Name, Offset: at));
    }

    /// <summary>A replica whose bytes do not match: the event names the replica and, for a block-checksummed chunk, the block (its image offset).</summary>
    private void Mismatch(ImageMeta meta, long at, ChunkVerdict v)
    {
        var shard = pool.Shards[v.Replica.Target];
        string what = v.Block switch
        {
            ChunkVerdict.WholeChunk => "does not match its CRC32C",
            ChunkVerdict.TableBlock => "has a block table that does not match the chunk map",
            _ => $"does not match its CRC32C in 4 KiB block {v.Block} (image offset {at + (long)v.Block * ChunkChecksum.BlockSize})",
        };
        pool.Ras.Emit(new RasEvent(RasIds.DataChecksumMismatch, RasSeverity.Error, RasType.InfoOnly,
            $"pool '{pool.Label}' image '{meta.Label}' chunk at offset {at}: the replica on target {v.Replica.Target} {what}",
            Pool: pool.Label, Image: meta.Label, Target: v.Replica.Target, Device: shard.Device.Name,
            Offset: v.Block >= 0 ? at + (long)v.Block * ChunkChecksum.BlockSize : at));
    }

    private DataIntegrityException Unrecoverable(ImageMeta meta, long at, ChunkMap map)
    {
        string message = map.Replicas.All(r => pool.IsExcluded(r.Target))
            ? $"data lost in pool '{pool.Label}', image '{meta.Label}' at offset {at}: every replica of the {meta.ChunkSize}-byte chunk was on excluded target(s) {string.Join(", ", map.Replicas.Select(r => r.Target))}"
            : $"data integrity error in pool '{pool.Label}', image '{meta.Label}' at offset {at}: none of the {map.Replicas.Length} replica(s) of the {meta.ChunkSize}-byte chunk verifies";
        pool.Ras.Emit(new RasEvent(RasIds.DataUnrecoverable, RasSeverity.Error, RasType.InfoOnly, message, Pool: pool.Label, Image: meta.Label, Offset: at));
        return new DataIntegrityException(pool.Label, meta.Label, at, message);
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
    /// <param name="expect">
    /// A whole chunk's checksum as its reader verified it (an image migration's copy): checked against
    /// the bytes about to be written, before any replica is written or the map switched. Block CRCs
    /// are checked against the new block table's entries, computed anyway.
    /// </param>
    /// <param name="room">
    /// Optional, for a whole chunk: a buffer of table size + chunk size whose last chunk-size bytes are
    /// <paramref name="data"/> (a migration's copy reads the source into it so). The block table is
    /// built in front and the extent written from it, without copying the chunk.
    /// </param>
    /// <remarks>Pooled (a ValueTask to await once), as the write path's other steps: no state machine box per write.</remarks>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data, bool durable = true, CopyChecksum? expect = null,
        Memory<byte> room = default)
    {
        pool.ThrowIfNotWritable();
        int cs = meta.ChunkSize;
        // Under the chunk's exclusive lock, dropped before it is released: a map this write supersedes may be reused.
        var old = pool.Meta.ChunkAtLocked(meta, index);
        bool blocks = pool.WritesBlockTables(cs);
        // A writeback write to a chunk whose extents no flush covers yet rewrites them in place.
        if (!durable && old != null && pool.Log.MayOverwriteInPlace(old) && SameForm(meta, index, old, blocks)
            && await TryWriteInPlaceAsync(meta, index, within, data, old).ConfigureAwait(false))
        {
            // Superseded, its extents now the new map's: this write was its last user.
            pool.MapSpares.Return(old);
            return;
        }
        // A small write into a durable chunk with a block table: its blocks logged, then written in place.
        if (old != null && expect == null && MayDefer(meta, index, old, within, data.Length, durable, blocks)
            && await TryWriteDeferredAsync(meta, index, within, data, old).ConfigureAwait(false))
        {
            pool.MapSpares.Return(old);
            return;
        }
        int head = blocks ? ChunkChecksum.TableSize : 0;
        byte[]? rented = null;
        // A partial write merged into a verified chunk with a table: that table's block CRCs, so only the
        // blocks the write touches are summed again (a 4 KiB write into a 1 MiB chunk: one block, not 256).
        uint[]? verified = null;
        try
        {
            ReadOnlyMemory<byte> extent;
            // The block table when it is written apart from the chunk (extent then holds the chunk only).
            ReadOnlyMemory<byte> table = default;
            if (data.Length == cs && !blocks)
            {
                // A whole chunk without a table: nothing to read, merge or copy.
                extent = data;
            }
            else if (data.Length == cs && room.Length == head + cs
                && data.Span.Overlaps(room.Span[head..], out int at) && at == 0)
            {
                // A whole chunk with room for its table in front: the table goes there, nothing is copied.
                extent = room;
            }
            else if (data.Length == cs)
            {
                // A whole chunk without room: the table is built apart and written beside the chunk, which
                // goes to the device from the caller's memory (an NBD payload is not copied again).
                rented = System.Buffers.ArrayPool<byte>.Shared.Rent(head);
                table = rented.AsMemory(0, head);
                extent = data;
            }
            else
            {
                // The new extent: the block table (when there is one) then the chunk, merged with the
                // verified old contents when the write is partial, written with one device write.
                rented = System.Buffers.ArrayPool<byte>.Shared.Rent(head + cs);
                var merged = rented.AsMemory(head, cs);
                if (data.Length == cs)
                    data.CopyTo(merged);
                else if (old != null)
                {
                    if (blocks && old.Blocks)
                        verified = System.Buffers.ArrayPool<uint>.Shared.Rent(cs / ChunkChecksum.BlockSize);
                    await ReadVerifiedAsync(meta, index, old, merged, repair: true, blockCrcs: verified).ConfigureAwait(false);
                }
                else
                    merged.Span.Clear();
                if (data.Length != cs)
                    data.Span.CopyTo(merged.Span[within..]);
                extent = rented.AsMemory(0, head + cs);
            }
            var chunk = table.IsEmpty ? extent.Span[head..] : extent.Span;
            var tableBytes = rented != null ? rented.AsSpan(0, head) : room.Span[..head];
            uint crc = !blocks ? ChunkChecksum.Of(chunk)
                : verified != null ? TableOfMerged(meta, index, within, data.Length, chunk, verified, tableBytes)
                : ChunkChecksum.BuildTable(meta.Id, index, chunk, tableBytes);
            if (expect is { } e && !(blocks ? e.MatchesTable(tableBytes) ?? e.Matches(chunk)
                    : e.Blocks.IsEmpty ? crc == e.Crc : e.Matches(chunk)))
                throw new DataIntegrityException(pool.Label, meta.Label, index * cs,
                    $"data integrity error in pool '{pool.Label}', image '{meta.Label}' at offset {index * cs}: the copy does not match the source's "
                    + (e.Blocks.IsEmpty ? $"checksum 0x{e.Crc:x8}" : "block checksums") + " before it was written; nothing was written");
            // The superseded mapping's cached table array (taken now: the write may reuse the old map), for the new one.
            var reuse = blocks && old is { Blocks: true } ? pool.Tables.Take(old.Replicas) : null;
            await WriteReplicasAsync(meta, index, within, table, extent, crc, blocks, durable, old).ConfigureAwait(false);
            if (blocks)
                CacheNewTable(meta, index, reuse, rented != null ? rented.AsSpan(0, head) : room.Span[..head]);
        }
        finally
        {
            if (rented != null)
                System.Buffers.ArrayPool<byte>.Shared.Return(rented);
            if (verified != null)
                System.Buffers.ArrayPool<uint>.Shared.Return(verified);
        }
    }

    /// <summary>
    /// Caches the table a copy on write just committed under the chunk's new replicas, in the superseded
    /// mapping's array when it had one: the next small write into the chunk (in place until a flush) then
    /// neither reads the table nor allocates one (issue 17: a 1 MiB chunk's 1 KiB array per copy).
    /// </summary>
    private void CacheNewTable(ImageMeta meta, long index, uint[]? reuse, ReadOnlySpan<byte> table)
    {
        int n = meta.ChunkSize / ChunkChecksum.BlockSize;
        if (pool.Meta.ChunkAtLocked(meta, index) is not { Blocks: true } map)
            return;
        var crcs = reuse is { Length: var l } && l == n ? reuse : new uint[n];
        for (int k = 0; k < n; k++)
            crcs[k] = ChunkChecksum.TableEntry(table, k);
        pool.Tables.Replace([], map.Replicas, crcs);
    }

    /// <summary>
    /// The block table of a chunk merged from verified old contents (whose block CRCs are
    /// <paramref name="crcs"/>, as read) and a write of <paramref name="length"/> bytes at
    /// <paramref name="within"/>: the touched blocks summed again, the others kept. Returns the table's CRC.
    /// </summary>
    private static uint TableOfMerged(ImageMeta meta, long index, int within, int length, ReadOnlySpan<byte> chunk, uint[] crcs, Span<byte> table)
    {
        var (from, span) = ChunkChecksum.VerifiedRange(true, meta.ChunkSize, within, length);
        return TableWithBlocks(meta, index, crcs.AsSpan(0, meta.ChunkSize / ChunkChecksum.BlockSize), from, chunk.Slice(from, span), table);
    }

    /// <summary>
    /// Sums <paramref name="blocks"/>, whole blocks that start <paramref name="from"/> bytes into the chunk, into their
    /// entries of <paramref name="crcs"/> (the chunk's block CRCs, the others kept) and writes the table of all of them
    /// into <paramref name="table"/>; returns the table's CRC. A partial copy on write and an in-place write both make
    /// their new table so.
    /// </summary>
    private static uint TableWithBlocks(ImageMeta meta, long index, Span<uint> crcs, int from, ReadOnlySpan<byte> blocks, Span<byte> table)
    {
        const int B = ChunkChecksum.BlockSize;
        Crc32C.ComputeBlocks(blocks, B, crcs.Slice(from / B, blocks.Length / B));
        return ChunkChecksum.WriteTable(meta.Id, index, crcs, table);
    }

    /// <summary>Whether a new copy of the chunk would take <paramref name="old"/>'s form: table or not, the same replica targets.</summary>
    private bool SameForm(ImageMeta meta, long index, ChunkMap old, bool blocks)
    {
        int rf = Math.Min(pool.WriteRf, pool.LiveTargets);
        if (old.Blocks != blocks || old.Replicas.Length != rf)
            return false;
        var placement = pool.Placement;
        int targets = pool.TargetCount;
        for (int r = 0; r < rf; r++)
            if (old.Replicas[r].Target != placement.Target(meta.Id, index, r, targets) || pool.IsExcluded(old.Replicas[r].Target))
                return false;
        return true;
    }

    /// <summary>
    /// Writes into the extents of <paramref name="old"/>, a writeback mapping no flush covers yet, instead of
    /// fresh ones (docs/format.md, "Overwriting a writeback extent in place"): with a block table only the
    /// touched 4 KiB blocks (edges merged with verified old bytes) and the table, else the whole merged chunk.
    /// The new mapping is applied and queued (PoolLog.TryCommitInPlace) before the write starts; the round
    /// that logs it flushes only after the write. Returns false, having written nothing, when the write must
    /// copy on write instead (the claim was refused, or the old bytes it needs do not verify: the
    /// copy-on-write path reads, reports and repairs them).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> TryWriteInPlaceAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data, ChunkMap old)
    {
        const int T = ChunkChecksum.TableSize;
        int cs = meta.ChunkSize;
        byte[]? rented = null;
        uint[]? newCrcs = null;
        try
        {
            uint crc;
            uint[]? crcs = null;
            ReadOnlyMemory<byte> bytes;
            // The block table when it is written apart from the blocks (bytes then holds the blocks only).
            ReadOnlyMemory<byte> table = default;
            // The blocks the write touches (bytes into the chunk), with a block table.
            int from = 0, length = 0;
            if (!old.Blocks)
            {
                if (data.Length == cs)
                {
                    bytes = data;
                }
                else
                {
                    rented = System.Buffers.ArrayPool<byte>.Shared.Rent(cs);
                    var merged = rented.AsMemory(0, cs);
                    await ReadVerifiedAsync(meta, index, old, merged, repair: true).ConfigureAwait(false);
                    data.Span.CopyTo(merged.Span[within..]);
                    bytes = merged;
                }
                crc = ChunkChecksum.Of(bytes.Span);
            }
            else
            {
                (from, length) = ChunkChecksum.VerifiedRange(true, cs, within, data.Length);
                int n = cs / ChunkChecksum.BlockSize;
                // A write of every block needs nothing of the old table or data (its cached array is reused when there is one).
                var current = length == cs ? CachedTable(old) ?? new uint[n] : await CurrentTableAsync(meta, index, old).ConfigureAwait(false);
                if (current == null)
                    return false;
                ReadOnlyMemory<byte> touched;
                if ((from, length) == (within, data.Length))
                {
                    // Whole blocks: they go to the device from the caller's memory, the table apart.
                    rented = System.Buffers.ArrayPool<byte>.Shared.Rent(T);
                    touched = data;
                    table = rented.AsMemory(0, T);
                }
                else
                {
                    // [table | touched blocks], the edges merged with the verified old bytes: one write when
                    // the blocks start at block 0, else two.
                    rented = System.Buffers.ArrayPool<byte>.Shared.Rent(T + length);
                    var merged = rented.AsMemory(T, length);
                    if (!await ReadBlocksAsync(old, current, from, merged).ConfigureAwait(false))
                        return false;
                    data.Span.CopyTo(merged.Span[(within - from)..]);
                    touched = merged;
                }
                // The new table is made beside the cached one, which takes the new CRCs only once the write is
                // done (below): a claim refused or a write failed leaves the cache as the device is.
                newCrcs = System.Buffers.ArrayPool<uint>.Shared.Rent(n);
                current.AsSpan(0, n).CopyTo(newCrcs);
                crc = TableWithBlocks(meta, index, newCrcs.AsSpan(0, n), from, touched.Span, rented.AsSpan(0, T));
                crcs = current;
                bytes = table.IsEmpty ? rented.AsMemory(0, T + length) : touched;
            }
            var map = pool.MapSpares.Rent(old.Replicas.Length, old.Blocks);
            var replicas = map.Replicas;
            for (int r = 0; r < replicas.Length; r++)
                replicas[r] = old.Replicas[r] with { Crc = crc };
            // The round that logs the record waits for this signal (pooled with the commit) before it flushes.
            if (pool.Log.TryCommitInPlace(old, meta.Id, index, map) is not { } written)
                return false;
            try
            {
                await WriteInPlaceAsync(replicas, old.Blocks, from, table, bytes, meta, index * cs + within).ConfigureAwait(false);
                written.Complete(null);
            }
            catch (Exception e)
            {
                // The extents may be torn, and they held an acknowledged writeback write: no flush may claim
                // it durable now, so the pool fails (its round fails too: PoolLog.SettleDataAsync).
                pool.Fail(e, "an in-place write of a writeback extent");
                written.Complete(e);
                if (e is DeviceException d)
                    throw WriteFailed(meta, index * cs + within, d);
                throw;
            }
            finally
            {
                pool.Log.EndInPlace();
            }
            if (crcs != null)
                KeepTouchedCrcs(old.Replicas, replicas, crcs, newCrcs!, from, length);
            return true;
        }
        finally
        {
            if (rented != null)
                System.Buffers.ArrayPool<byte>.Shared.Return(rented);
            if (newCrcs != null)
                System.Buffers.ArrayPool<uint>.Shared.Return(newCrcs);
        }
    }

    /// <summary>The most a deferred write logs: its blocks' bytes (and at most a quarter of the chunk).</summary>
    internal const int MaxDeferredBytes = 64 * 1024;

    /// <summary>
    /// Whether a write of <paramref name="length"/> bytes at <paramref name="within"/> into <paramref name="old"/>
    /// takes the deferred path (docs/format.md, "Deferred writes"): the pool's layout has it, the chunk has a
    /// block table and keeps its form, no move holds it, the blocks touched are at most
    /// <see cref="MaxDeferredBytes"/> and a quarter of the chunk and their record fits one log record (and an eighth of the log),
    /// the chunk's mapping is durable (PoolLog.IsDurableBase: else a copy on write); a
    /// writeback write only into chunks of at least <see cref="Pool.DeferWritebackFromChunkSize"/>.
    /// </summary>
    private bool MayDefer(ImageMeta meta, long index, ChunkMap old, int within, int length, bool durable, bool blocks)
    {
        int cs = meta.ChunkSize;
        if (!blocks || !old.Blocks || old.Moving != null || length >= cs || !pool.DefersSmallWrites)
            return false;
        // A writeback write only into large enough chunks, and not one that starts where the deferred write that
        // made this mapping ended: a run of small writes into one chunk would wait a round each (every one finds
        // the last one's lock); copied once, the chunk takes the rest of the run in place until the next flush.
        if (!durable && (cs < pool.DeferWritebackFromChunkSize || (old.DeferredEnd != 0 && within == old.DeferredEnd)))
            return false;
        var (_, span) = ChunkChecksum.VerifiedRange(true, cs, within, length);
        const int B = ChunkChecksum.BlockSize;
        int record = MetaRecords.ChunkDeferredLength(old.Replicas.Length, cs / B, span / B);
        return span <= MaxDeferredBytes && span <= cs / 4 && record <= WalFormat.MaxPayload && record <= pool.Log.DeferredRecordRoom
            && SameForm(meta, index, old, blocks) && pool.Log.IsDurableBase(old);
    }

    /// <summary>
    /// A deferred write (docs/format.md, "Deferred writes"): the touched blocks (edges merged with verified old
    /// bytes) and the chunk's new block table go into a ChunkDeferred record; its round flushes, writes them over
    /// the extents of <paramref name="old"/> and applies the record (PoolLog.CommitDeferredAsync). The caller
    /// holds the chunk's exclusive lock throughout. Returns false, having logged nothing, when the old table or
    /// the edge blocks do not verify (the copy on write reads, reports and repairs them).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> TryWriteDeferredAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data, ChunkMap old)
    {
        if (await PrepareDeferredAsync(meta, index, within, data, old).ConfigureAwait(false) is not { } d)
            return false;
        bool committed = false;
        try
        {
            await pool.Log.CommitDeferredAsync(d.Payload, d.Map, d.From, d.Table.AsMemory(0, ChunkChecksum.TableSize), d.Blocks).ConfigureAwait(false);
            committed = true;
            KeepTouchedCrcs(old.Replicas, d.Map.Replicas, d.Current, d.NewCrcs, d.From, d.Blocks.Length);
            return true;
        }
        finally
        {
            d.Return(arraysFree: committed);
        }
    }

    /// <summary>
    /// A writeback write into a durable chunk (the caller holds its exclusive lock, <paramref name="held"/>, and the
    /// pool's pass, <paramref name="pass"/>), deferred and answered as soon as its record is queued (docs/format.md,
    /// "Deferred writes", item 9): the lock and the pass go to a continuation that waits for the record's round
    /// (flush, the in-place writes, the apply) and only then lets them go, so readers and later writers of the
    /// chunk, a gate that drains the pool and a job waiting for earlier writes all wait for the blocks to be in
    /// place, as they wait for a writer today; a FLUSH covers the record (it counts as a writeback commit). Returns
    /// false, having taken nothing, when the write may not take this path (not a durable chunk with a block table,
    /// too large, in place is possible, <see cref="PoolLog.MaxEarlyDeferred"/> such writes outstanding, or the old
    /// table or edge blocks do not verify): the caller writes as usual. A failure of the round fails the pool
    /// (read-only), and the client learns at its next FLUSH, as for any writeback write.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> TryWriteDeferredWritebackAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data,
        ImageLocks.Held held, PoolGate.Ticket pass)
    {
        pool.ThrowIfNotWritable();
        var old = pool.Meta.ChunkAtLocked(meta, index);
        bool blocks = pool.WritesBlockTables(meta.ChunkSize);
        if (old == null || pool.Log.MayOverwriteInPlace(old)
            || !MayDefer(meta, index, old, within, data.Length, durable: false, blocks) || !pool.Log.TryTakeEarlyDeferred())
            return false;
        Deferred d;
        try
        {
            if (await PrepareDeferredAsync(meta, index, within, data, old).ConfigureAwait(false) is not { } ready)
            {
                pool.Log.ReleaseEarlyDeferred();
                return false;
            }
            d = ready;
        }
        catch
        {
            pool.Log.ReleaseEarlyDeferred();
            throw;
        }
        // The next write that starts here continues a run (MayDefer): it copies the chunk rather than wait.
        d.Map.DeferredEnd = within + data.Length;
        ValueTask commit;
        try
        {
            commit = pool.Log.CommitDeferredAsync(d.Payload, d.Map, d.From, d.Table.AsMemory(0, ChunkChecksum.TableSize), d.Blocks, writeback: true);
        }
        catch
        {
            // Not queued: nothing was written; the caller still holds the lock and the pass.
            d.Return(arraysFree: true);
            pool.Log.ReleaseEarlyDeferred();
            throw;
        }
        EarlyFinish.Rent(this).Start(commit, d, old, held, pass);
        return true;
    }

    /// <summary>
    /// The rest of an early-answered deferred writeback write, run when its commit completes: the cached table, the
    /// old map, the arrays, the lock and the pass. Pooled, with its completion delegate made once, so a deferred
    /// writeback write allocates no continuation (issue 17: no managed allocation per write).
    /// </summary>
    private sealed class EarlyFinish
    {
        private static readonly System.Collections.Concurrent.ConcurrentQueue<EarlyFinish> Spares = new();
        private readonly Action _run;
        private ChunkIo _io = null!;
        private ValueTask _commit;
        private Deferred _d;
        private ChunkMap _old = null!;
        private ImageLocks.Held _held;
        private PoolGate.Ticket _pass;

        private EarlyFinish() => _run = Run;

        public static EarlyFinish Rent(ChunkIo io)
        {
            var f = Spares.TryDequeue(out var spare) ? spare : new EarlyFinish();
            f._io = io;
            return f;
        }

        /// <summary>Runs <see cref="Run"/> once <paramref name="commit"/> completes (at once if it has).</summary>
        public void Start(ValueTask commit, Deferred d, ChunkMap old, ImageLocks.Held held, PoolGate.Ticket pass)
        {
            (_commit, _d, _old, _held, _pass) = (commit, d, old, held, pass);
            var awaiter = commit.ConfigureAwait(false).GetAwaiter();
            if (awaiter.IsCompleted)
                Run();
            else
                awaiter.UnsafeOnCompleted(_run);
        }

        private void Run()
        {
            var (io, d, old, held, pass) = (_io, _d, _old, _held, _pass);
            bool committed = false;
            try
            {
                // The commit's ValueTask is pooled: its result is read exactly once, here.
                _commit.ConfigureAwait(false).GetAwaiter().GetResult();
                committed = true;
            }
            catch (Exception)
            {
                // The round failed: the pool is read-only (its RAS event says why) and the next FLUSH fails.
            }
            try
            {
                io.AfterDeferredWriteback(committed, d, old);
            }
            finally
            {
                (_io, _commit, _d, _old, _held, _pass) = (null!, default, default, null!, default, default);
                Spares.Enqueue(this);
                held.Dispose();
                pass.Dispose();
            }
        }
    }

    /// <summary>
    /// After an early-answered deferred writeback write's round, under the chunk's lock still: the cached table takes
    /// the new CRCs and the superseded map goes back (when it committed), the arrays go back, and its slot.
    /// </summary>
    private void AfterDeferredWriteback(bool committed, Deferred d, ChunkMap old)
    {
        try
        {
            if (committed)
            {
                KeepTouchedCrcs(old.Replicas, d.Map.Replicas, d.Current, d.NewCrcs, d.From, d.Blocks.Length);
                // Superseded, its extents now the new map's: this write was its last user.
                pool.MapSpares.Return(old);
            }
        }
        finally
        {
            d.Return(arraysFree: committed);
            pool.Log.ReleaseEarlyDeferred();
        }
    }

    /// <summary>A deferred write made ready to commit: its record's payload (holding the blocks), the new table, its CRCs and map.</summary>
    private readonly struct Deferred(byte[] payload, byte[] table, uint[] newCrcs, uint[] current, ChunkMap map, int from, int length)
    {
        public byte[] Payload => payload;
        public byte[] Table => table;
        public uint[] NewCrcs => newCrcs;
        public uint[] Current => current;
        public ChunkMap Map => map;
        public int From => from;
        public ReadOnlyMemory<byte> Blocks => payload.AsMemory(payload.Length - length, length);

        /// <summary>
        /// Gives the arrays back. The record's payload and the table only when nothing was enqueued or the commit
        /// succeeded: a round that failed after an earlier one may still be writing them (PoolLog.CompleteLoopAsync
        /// does not wait for it).
        /// </summary>
        public void Return(bool arraysFree)
        {
            DeferredCrcs.Return(newCrcs);
            if (arraysFree)
            {
                DeferredTables.Return(table);
                DeferredPayloads.Return(payload);
            }
        }
    }

    /// <summary>
    /// The record and in-place part of a deferred write (docs/format.md, "Deferred writes"): the touched blocks (edges
    /// merged with verified old bytes) and the chunk's new block table, with a new map made for it (the state
    /// installs it). Null, having logged nothing and holding nothing, when the old table or the edge blocks do not
    /// verify (the copy on write reads, reports and repairs them).
    /// </summary>
    private async ValueTask<Deferred?> PrepareDeferredAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> data, ChunkMap old)
    {
        const int T = ChunkChecksum.TableSize, B = ChunkChecksum.BlockSize;
        int cs = meta.ChunkSize, n = cs / B;
        var (from, length) = ChunkChecksum.VerifiedRange(true, cs, within, data.Length);
        var current = await CurrentTableAsync(meta, index, old).ConfigureAwait(false);
        if (current == null)
            return null;
        int rf = old.Replicas.Length;
        // The record's payload holds the blocks: they are merged there and written in place from there.
        var payload = DeferredPayloads.Rent(MetaRecords.ChunkDeferredLength(rf, n, length / B));
        var blocks = payload.AsMemory(payload.Length - length, length);
        var table = DeferredTables.Rent(T);
        var newCrcs = DeferredCrcs.Rent(n);
        bool ready = false;
        try
        {
            if ((from, length) != (within, data.Length) && !await ReadBlocksAsync(old, current, from, blocks).ConfigureAwait(false))
                return null;
            data.Span.CopyTo(blocks.Span[(within - from)..]);
            current.AsSpan(0, n).CopyTo(newCrcs);
            uint crc = TableWithBlocks(meta, index, newCrcs.AsSpan(0, n), from, blocks.Span, table.AsSpan(0, T));
            var map = pool.MapSpares.Rent(rf, blocks: true);
            var replicas = map.Replicas;
            for (int r = 0; r < rf; r++)
                replicas[r] = old.Replicas[r] with { Crc = crc };
            MetaRecords.EncodeChunkDeferred(payload, meta.Id, index, replicas, from / B, length / B, newCrcs.AsSpan(0, n));
            ready = true;
            return new Deferred(payload, table, newCrcs, current, map, from, length);
        }
        finally
        {
            if (!ready)
            {
                DeferredCrcs.Return(newCrcs);
                DeferredTables.Return(table);
                DeferredPayloads.Return(payload);
            }
        }
    }

    /// <summary>Deferred writes' record payloads, reused by length (a record's payload is an array of exactly its length).</summary>
    private static readonly ExactArrays<byte> DeferredPayloads = new(512);

    /// <summary>Deferred writes' tables and new block CRCs (held until the round is done: ArrayPool.Shared drops arrays given back on another thread).</summary>
    private static readonly ExactArrays<byte> DeferredTables = new(512);

    private static readonly ExactArrays<uint> DeferredCrcs = new(512);

    /// <summary>
    /// After a write over the chunk's own extents (in place, or deferred): the cached table array
    /// <paramref name="cached"/> takes the new CRCs of the blocks [<paramref name="from"/>, from + <paramref name="length"/>)
    /// from <paramref name="newCrcs"/> and is cached under the new replicas. Under the chunk's exclusive lock: no
    /// reader holds the array now, and the next one finds it under the new replicas (no array per write, issue 17).
    /// </summary>
    private void KeepTouchedCrcs(Replica[] superseded, Replica[] replicas, uint[] cached, uint[] newCrcs, int from, int length)
    {
        var touched = new Range(from / ChunkChecksum.BlockSize, (from + length) / ChunkChecksum.BlockSize);
        newCrcs.AsSpan(touched).CopyTo(cached.AsSpan(touched));
        pool.Tables.Replace(superseded, replicas, cached);
    }

    /// <summary>The cached block CRCs of any of the mapping's replicas, or null.</summary>
    private uint[]? CachedTable(ChunkMap map)
    {
        foreach (var r in map.Replicas)
            if (pool.Tables.TryGet(r, out var cached))
                return cached;
        return null;
    }

    /// <summary>The verified block CRCs of a mapping (cached, or read from the first replica whose table verifies); null when none does.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<uint[]?> CurrentTableAsync(ImageMeta meta, long index, ChunkMap map)
    {
        if (CachedTable(map) is { } cached)
            return cached;
        var table = System.Buffers.ArrayPool<byte>.Shared.Rent(ChunkChecksum.TableSize);
        try
        {
            foreach (var r in map.Replicas)
            {
                if (pool.IsExcluded(r.Target))
                    continue;
                try
                {
                    await pool.Shards[r.Target].ReadDataAsync(r.Offset, table.AsMemory(0, ChunkChecksum.TableSize)).ConfigureAwait(false);
                }
                catch (DeviceException)
                {
                    continue;
                }
                if (ChunkChecksum.VerifyTable(r, meta.Id, index, meta.ChunkSize, table.AsSpan(0, ChunkChecksum.TableSize), out var crcs).Ok)
                {
                    pool.Tables.Add(r, crcs!);
                    return crcs;
                }
            }
            return null;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(table);
        }
    }

    /// <summary>Reads data blocks [<paramref name="from"/>, from + dest.Length) from the first replica where they verify against <paramref name="crcs"/>.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ReadBlocksAsync(ChunkMap map, uint[] crcs, int from, Memory<byte> dest)
    {
        foreach (var r in map.Replicas)
        {
            if (pool.IsExcluded(r.Target))
                continue;
            try
            {
                await pool.Shards[r.Target].ReadDataAsync(r.Offset + ChunkChecksum.TableSize + from, dest).ConfigureAwait(false);
            }
            catch (DeviceException)
            {
                continue;
            }
            if (ChunkChecksum.VerifyBlocks(r, crcs, from / ChunkChecksum.BlockSize, dest.Span).Ok)
                return true;
        }
        return false;
    }

    /// <summary>
    /// The in-place write itself, to every replica at once: the whole chunk (no table), or the table and
    /// the touched blocks, <paramref name="bytes"/> = [table | blocks from <paramref name="from"/>], or the
    /// blocks alone when <paramref name="table"/> is given apart.
    /// </summary>
    /// <remarks>
    /// With more than one replica, a failure on one target's device is survived as for new extents
    /// (Pool.ReplicaWritesAsync): the replicas written hold the new contents, and the torn one is on a
    /// target that leaves the pool before anything is acknowledged again.
    /// </remarks>
    /// <remarks>A ValueTask to await exactly once (pooled for one replica whose bytes start at the extent's start: no lists, no box).</remarks>
    private ValueTask WriteInPlaceAsync(Replica[] replicas, bool blocks, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> bytes, ImageMeta meta, long at)
    {
        if (replicas.Length == 1)
        {
            var one = replicas[0];
            var shard = pool.Shards[one.Target];
            if (!table.IsEmpty)
                return WriteTableAndBlocksAsync(shard, one.Offset, from, table, bytes);
            // The whole chunk, or [table | blocks from block 0].
            if (!blocks || from == 0)
                return shard.WriteDataPooledAsync(one.Offset, bytes);
            // Blocks further in (a 4 KiB write into a larger chunk): the table and the blocks, two writes at once.
            const int T = ChunkChecksum.TableSize;
            return WriteTwoAsync(shard, one.Offset, bytes[..T], one.Offset + T + from, bytes[T..]);
        }
        return WriteInPlaceManyAsync(replicas, blocks, from, table, bytes, meta, at);
    }

    /// <summary>
    /// A block table and blocks apart over one replica's extent at <paramref name="offset"/>: the table at its
    /// start, the blocks <paramref name="from"/> bytes into the chunk after it; one gathered write when they are
    /// adjacent (from 0), else two at once. Pooled: awaited exactly once. An in-place write and a deferred
    /// write's round (PoolLog.WriteDeferredAsync) and replay's rewrite all write so.
    /// </summary>
    internal static ValueTask WriteTableAndBlocksAsync(Shard shard, long offset, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> blocks) =>
        from == 0 ? WriteApartAsync(shard, offset, table, blocks)
            : WriteTwoAsync(shard, offset, table, offset + ChunkChecksum.TableSize + from, blocks);

    /// <summary>
    /// Two writes to one replica's extent at once; completes when both have (a failure of either is thrown once
    /// both are done). Pooled: an in-place write of blocks past a chunk's first made lists, a closure and a task
    /// per write on the many-replica path (perf nbd --chunk-size 1M --rows randwrite-4k --strata-io direct --alloc-types).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask WriteTwoAsync(Shard shard, long first, ReadOnlyMemory<byte> a, long second, ReadOnlyMemory<byte> b)
    {
        var head = shard.WriteDataPooledAsync(first, a);
        var rest = shard.WriteDataPooledAsync(second, b);
        try
        {
            await head.ConfigureAwait(false);
        }
        finally
        {
            await rest.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// <see cref="WriteInPlaceAsync"/> to several extents. Its own method: the failure filter's closure over
    /// the replicas was made at every in-place write's entry, one replica or not (issue 17).
    /// </summary>
    private ValueTask WriteInPlaceManyAsync(Replica[] replicas, bool blocks, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> bytes, ImageMeta meta, long at)
    {
        const int T = ChunkChecksum.TableSize;
        var writes = new List<Task>(replicas.Length * 2);
        var targets = new List<int>(replicas.Length * 2);
        foreach (var r in replicas)
        {
            var shard = pool.Shards[r.Target];
            if (!table.IsEmpty && from == 0)
            {
                // The table and the blocks from block 0 are adjacent: one gathered write.
                writes.Add(WriteApartAsync(shard, r.Offset, table, bytes).AsTask());
                targets.Add(r.Target);
            }
            else if (!table.IsEmpty)
            {
                writes.Add(shard.WriteDataAsync(r.Offset, table).AsTask());
                writes.Add(shard.WriteDataAsync(r.Offset + T + from, bytes).AsTask());
                targets.Add(r.Target);
                targets.Add(r.Target);
            }
            else if (!blocks || from == 0)
            {
                writes.Add(shard.WriteDataAsync(r.Offset, bytes).AsTask());
                targets.Add(r.Target);
            }
            else
            {
                writes.Add(shard.WriteDataAsync(r.Offset, bytes[..T]).AsTask());
                writes.Add(shard.WriteDataAsync(r.Offset + T + from, bytes[T..]).AsTask());
                targets.Add(r.Target);
                targets.Add(r.Target);
            }
        }
        if (writes.Count == 1)
            return new ValueTask(writes[0]);
        var all = Task.WhenAll(writes);
        return new ValueTask(replicas.Length == 1 || all.IsCompletedSuccessfully ? all
            : pool.ReplicaWritesAsync(all, [.. writes], [.. targets], failed => failed.Count < replicas.Length, meta.Label, at));
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

    /// <summary>
    /// Writes the extent (the chunk, after its table when it has one: in <paramref name="chunk"/>, or
    /// <paramref name="table"/> apart) to fresh extents, commits their mapping, then frees (or defers) the old extents.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteReplicasAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> chunk, uint crc, bool blocks, bool durable, ChunkMap? old)
    {
        int cs = meta.ChunkSize;
        int length = table.Length + chunk.Length;
        int rf = Math.Min(pool.WriteRf, pool.LiveTargets);
        // The new mapping, a superseded one reused when there is one spare; filled here, installed by the commit.
        var map = pool.MapSpares.Rent(rf, blocks);
        var replicas = map.Replicas;
        var placement = pool.Placement;
        // Read once: an extension's new target counted for some replicas and not others could put two on one target.
        int targets = pool.TargetCount;
        int allocated = 0;
        try
        {
            for (; allocated < rf; allocated++)
            {
                int t = placement.Target(meta.Id, index, allocated, targets);
                long off = await AllocateAsync(t, length).ConfigureAwait(false);
                if (off < 0)
                    throw new NoSpaceException($"no space left in pool '{pool.Label}': target {t} has no free {length}-byte extent for image '{meta.Label}' at offset {index * cs}");
                replicas[allocated] = new Replica((ushort)t, off, crc);
            }
        }
        catch
        {
            FreeReplicas(replicas, allocated, length);
            throw;
        }
        // From here until the old extents are freed or deferred the write holds fresh extents: a writer
        // out of space waits for it (PoolLog.HoldFresh) instead of reporting ENOSPC.
        pool.Log.HoldFresh();
        try
        {
            await WriteAndCommitAsync(meta, index, within, table, chunk, durable, map).ConfigureAwait(false);
            if (old == null)
                return;
            if (durable)
            {
                pool.FreeChunk(old, cs);
                // Superseded and freed: this write was its last user (ChunkTable says whether anything else could be).
                pool.MapSpares.Return(old);
            }
            else
            {
                FreeWhenDurable(old, cs);
            }
        }
        finally
        {
            pool.Log.ReleaseFresh();
        }
    }

    /// <summary>Frees a writeback write's old extents once its record is durable (without a closure: the log keeps the mapping and size, then reuses the map).</summary>
    private void FreeWhenDurable(ChunkMap old, int cs) => pool.Log.FreeChunkWhenDurable(old, cs);

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteAndCommitAsync(ImageMeta meta, long index, int within, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> chunk, bool durable, ChunkMap map)
    {
        int cs = meta.ChunkSize;
        int length = table.Length + chunk.Length;
        var replicas = map.Replicas;
        // The map is this write's own and never changes once committed: the state installs it.
        MetaRecord Record() => MetaRecords.ChunkMap(meta.Id, index, map);
        int rf = replicas.Length;
        if (!durable)
        {
            // Writeback: once the data is written the record is applied and queued (PoolLog.CommitWriteback);
            // the write is answered without waiting for the log.
            try
            {
                await WriteDataAsync(replicas, table, chunk, meta, index * cs + within).ConfigureAwait(false);
            }
            catch (DeviceException e)
            {
                FreeReplicas(replicas, rf, length);
                throw WriteFailed(meta, index * cs + within, e);
            }
            try
            {
                // Pooled: the commit and its record are reused once their round is done.
                pool.Log.CommitWritebackChunk(meta.Id, index, map);
            }
            catch
            {
                FreeReplicas(replicas, rf, length); // nothing was applied or queued
                throw;
            }
            return;
        }
        // Durable: the record is logged while the data writes run; the commit round's flush waits for
        // them and covers both (PoolLog.CommitAfterAsync). A crash may keep the record and lose
        // the data: replay checks the data of records past the last durable mark (PoolOpener).
        ValueTask commit;
        if (rf == 1 && table.IsEmpty)
        {
            try
            {
                // One replica: the log starts its write once the record is queued; the commit, its record
                // array and the write's completion are one pooled object (PoolLog.CommitWithWriteAsync).
                commit = pool.Log.CommitWithWriteAsync(meta.Id, index, map, pool.Shards[replicas[0].Target], replicas[0].Offset, chunk);
            }
            catch
            {
                // Not enqueued (the pool cannot log): nothing was written, the extents are reusable.
                FreeReplicas(replicas, rf, length);
                throw;
            }
        }
        else
        {
            // Awaited once: by the commit round, or here when the commit was not enqueued.
            ValueTask data = WriteDataAsync(replicas, table, chunk, meta, index * cs + within);
            try
            {
                commit = new ValueTask(pool.Log.CommitAfterAsync(Record(), data));
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
                FreeReplicas(replicas, rf, length);
                throw;
            }
        }
        try
        {
            await commit.ConfigureAwait(false);
        }
        catch (DeviceException e)
        {
            // Only the data writes' own failure reaches a commit as a DeviceException (CommitAfterAsync):
            // they failed and the record was voided in the log (a pad in its place);
            // the round's flush made the pad durable, nothing refers to the new extents.
            FreeReplicas(replicas, rf, length);
            throw WriteFailed(meta, index * cs + within, e);
        }
        catch (WriteVoidedException)
        {
            // Voided the same way: every replica is on a target that left the pool meanwhile.
            FreeReplicas(replicas, rf, length);
            throw;
        }
        // Any other failure: the record may or may not be durable, so the extents stay allocated.
    }

    /// <summary>
    /// Writes the extent's bytes (table and chunk, or the chunk) to every replica's extent at once. With
    /// more than one replica, a write that fails on one target's device is survived when another replica
    /// was written and the target leaves the pool (Pool.ReplicaWritesAsync).
    /// </summary>
    /// <remarks>A ValueTask to await exactly once (pooled for a single replica: no box per write).</remarks>
    private ValueTask WriteDataAsync(Replica[] replicas, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> chunk, ImageMeta meta, long at) =>
        replicas.Length > 1 ? new ValueTask(WriteReplicaDataAsync(replicas, table, chunk, meta, at))
            : table.IsEmpty ? pool.Shards[replicas[0].Target].WriteDataPooledAsync(replicas[0].Offset, chunk)
            : WriteApartAsync(pool.Shards[replicas[0].Target], replicas[0].Offset, table, chunk);

    /// <summary>
    /// One replica's extent, the table at <paramref name="offset"/> and the chunk right after it: one gathered
    /// write (one pwritev2 on a buffered file, where two writes cost two), or two at once where the device
    /// cannot take both in one call; completes when both have (a failure of either is thrown once both are done).
    /// </summary>
    private static ValueTask WriteApartAsync(Shard shard, long offset, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> chunk) =>
        shard.WriteDataGatherPooledAsync(offset, table, chunk);

    /// <summary>More than one replica (its own method: the failure filter's closure is made only here, not by every write).</summary>
    private Task WriteReplicaDataAsync(Replica[] replicas, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> chunk, ImageMeta meta, long at)
    {
        var writes = new Task[replicas.Length];
        var targets = new int[replicas.Length];
        for (int i = 0; i < replicas.Length; i++)
        {
            var shard = pool.Shards[replicas[i].Target];
            writes[i] = table.IsEmpty ? shard.WriteDataAsync(replicas[i].Offset, chunk).AsTask()
                : WriteApartAsync(shard, replicas[i].Offset, table, chunk).AsTask();
            targets[i] = replicas[i].Target;
        }
        var all = Task.WhenAll(writes);
        return all.IsCompletedSuccessfully ? all : pool.ReplicaWritesAsync(all, writes, targets, failed => failed.Count < replicas.Length, meta.Label, at);
    }

    private StoreException WriteFailed(ImageMeta meta, long at, DeviceException e)
    {
        pool.OnDeviceError(null, e.Device);
        pool.Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
            $"pool '{pool.Label}' image '{meta.Label}' write at offset {at} failed: {e.Message}",
            Pool: pool.Label, Image: meta.Label, Device: e.Device, Offset: at));
        return new StoreException(Errno.EIO, $"write to pool '{pool.Label}' image '{meta.Label}' at offset {at} failed: {e.Message}", e);
    }

    private void FreeReplicas(Replica[] replicas, int count, int length)
    {
        for (int i = 0; i < count; i++)
            pool.Shards[replicas[i].Target].Allocator.Free(replicas[i].Offset, length);
    }
}
