using Strata.Engine.Device;
using System.Buffers;
using Strata.Engine.Pools;
using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// Requests that span several chunks, handled as groups of consecutive chunks
/// under one set of chunk locks: a write allocates each target's extents for the
/// group in one contiguous run where it can, writes runs of adjacent extents with
/// one device write each and commits every chunk's record in one log round; a
/// read reads runs of adjacent extents with one device read each and verifies
/// each chunk's CRC32C. A single-chunk request takes the ChunkIo path instead.
/// </summary>
internal sealed class ChunkRuns(Pool pool)
{
    /// <summary>One chunk's share of a request: chunk index, offset within the chunk, length, offset within the request.</summary>
    public readonly record struct Piece(long Index, int Within, int Length, int At);

    /// <summary>Chunks per group (bounded further so a group's records fit one log batch comfortably).</summary>
    private const int MaxGroupChunks = 256;

    public int GroupSize(int rf)
    {
        int record = WalFormat.EncodedLength(4 + 8 + 1 + rf * 14);
        return (int)Math.Clamp(pool.Shards[0].Header.WalLength / 8 / record, 1, MaxGroupChunks);
    }

    /// <summary>
    /// An extent of one chunk on one target (Length: the chunk, plus its block table when Blocks), with
    /// its chunk's slot in the request: what a run is made of.
    /// </summary>
    private readonly record struct Extent(int Target, long Offset, int Length, bool Blocks, int Slot);

    /// <summary>
    /// Groups extents of one target that are adjacent on the device into runs of at
    /// most maxRun bytes (or one extent); returns the runs as ranges of the sorted list
    /// with their byte lengths.
    /// </summary>
    private static List<(int Start, int Count, int Bytes)> Runs(List<Extent> sorted, int maxRun)
    {
        var runs = new List<(int, int, int)>();
        for (int i = 0; i < sorted.Count;)
        {
            int n = 1, bytes = sorted[i].Length;
            while (i + n < sorted.Count && sorted[i + n].Target == sorted[i].Target
                && sorted[i + n].Offset == sorted[i + n - 1].Offset + sorted[i + n - 1].Length && bytes + sorted[i + n].Length <= maxRun)
                bytes += sorted[i + n++].Length;
            runs.Add((i, n, bytes));
            i += n;
        }
        return runs;
    }

    /// <summary>One device command per transfer limit of a run's buffer (an extent with its table can exceed 1 MiB).</summary>
    private static async Task TransferAsync(Shard shard, long dataOffset, Memory<byte> buffer, bool write)
    {
        int max = shard.Device.Geometry.MaxTransfer;
        long at = shard.Base + shard.Header.DataOffset + dataOffset;
        for (int done = 0; done < buffer.Length; done += max)
        {
            var piece = buffer.Slice(done, Math.Min(max, buffer.Length - done));
            if (write)
                await shard.Device.WriteAsync(at + done, piece).ConfigureAwait(false);
            else
            {
                await shard.Device.ReadAsync(at + done, piece).ConfigureAwait(false);
                shard.Overlay?.Patch(dataOffset + done, piece.Span);
            }
        }
    }

    private int MaxRun() => pool.Shards.Min(s => Math.Min(1 << 20, s.Device.Geometry.MaxTransfer));

    /// <summary>Writes one group of pieces; the caller holds the group's chunk locks exclusively.</summary>
    /// <param name="durable">False: writeback (PoolLog.CommitWriteback); the old extents are freed once the new mappings are durable.</param>
    public async Task WriteGroupAsync(ImageMeta meta, List<Piece> pieces, ReadOnlyMemory<byte> source, bool durable = true)
    {
        pool.ThrowIfNotWritable();
        int cs = meta.ChunkSize;
        int n = pieces.Count;
        var olds = pool.Meta.ChunksAt(meta, pieces, p => p.Index);
        // Decided once under the group's locks: every chunk of the group takes the same form.
        bool blocks = pool.WritesBlockTables(cs);
        // Each chunk's new contents: the caller's bytes for a whole chunk, else merged with the verified old chunk.
        var chunks = new ReadOnlyMemory<byte>[n];
        // From WriteReplicasAsync's allocation until the old extents are freed or deferred the write
        // holds fresh extents (PoolLog.HoldFresh): writers out of space wait for it, not ENOSPC.
        bool held = false;
        try
        {
            var rented = new List<byte[]>();
            try
            {
                for (int i = 0; i < n; i++)
                {
                    var p = pieces[i];
                    if (p.Length == cs)
                    {
                        chunks[i] = source.Slice(p.At, cs);
                        continue;
                    }
                    var buf = ArrayPool<byte>.Shared.Rent(cs);
                    rented.Add(buf);
                    var merged = buf.AsMemory(0, cs);
                    if (olds[i] != null)
                        await pool.ChunkIo.ReadVerifiedAsync(meta, p.Index, olds[i]!, merged, repair: true).ConfigureAwait(false);
                    else
                        merged.Span.Clear();
                    source.Span.Slice(p.At, p.Length).CopyTo(merged.Span[p.Within..]);
                    chunks[i] = merged;
                }
                Replica[][]? replicas = null;
                for (int attempt = 0; replicas == null; attempt++)
                {
                    long frees = pool.ExtentFrees;
                    try
                    {
                        replicas = await WriteReplicasAsync(meta, pieces, chunks, blocks).ConfigureAwait(false);
                        held = true;
                    }
                    catch (NoSpaceException) when (attempt < PoolLog.SpaceRetries)
                    {
                        // Writeback writes hold superseded extents until a flush round returns them, and
                        // writes in flight hold fresh ones until they commit (ChunkIo.AllocateAsync, for one
                        // chunk): flush or wait for them, and try again while that may return any.
                        if (!await pool.Log.FlushForSpaceAsync(frees).ConfigureAwait(false))
                            throw;
                    }
                }
                var records = new MetaRecord[n];
                for (int i = 0; i < n; i++)
                    records[i] = MetaRecords.ChunkMap(meta.Id, pieces[i].Index, new ChunkMap(replicas[i], null, blocks));
                if (durable)
                {
                    try
                    {
                        await pool.Log.CommitAsync(records).ConfigureAwait(false);
                    }
                    catch (WriteVoidedException)
                    {
                        // Voided in the log (a chunk's every replica is on a target that left the pool meanwhile): nothing refers to the new extents.
                        foreach (var r in replicas)
                            pool.FreeChunk(new ChunkMap(r, null, blocks), cs);
                        throw;
                    }
                }
                else
                {
                    try
                    {
                        pool.Log.CommitWriteback(records);
                    }
                    catch
                    {
                        // Nothing was applied or queued: the new extents are free again.
                        foreach (var r in replicas)
                            pool.FreeChunk(new ChunkMap(r, null, blocks), cs);
                        throw;
                    }
                }
            }
            finally
            {
                foreach (var b in rented)
                    ArrayPool<byte>.Shared.Return(b);
            }
            if (durable)
            {
                foreach (var old in olds)
                    pool.FreeChunk(old, cs);
            }
            else if (olds.Any(o => o != null))
            {
                pool.Log.FreeWhenDurable(() =>
                {
                    foreach (var old in olds)
                        pool.FreeChunk(old, cs);
                });
            }
        }
        finally
        {
            if (held)
                pool.Log.ReleaseFresh();
        }
    }

    /// <summary>
    /// Allocates fresh extents for every chunk and replica (one contiguous run per
    /// target and replica where the allocator has one), writes them in runs of adjacent
    /// extents, and returns each chunk's replicas. Their data writes have completed
    /// when this returns; the commit's flush makes them durable.
    /// </summary>
    private async Task<Replica[][]> WriteReplicasAsync(ImageMeta meta, List<Piece> pieces, ReadOnlyMemory<byte>[] chunks, bool blocks)
    {
        int cs = meta.ChunkSize, n = pieces.Count, targets = pool.TargetCount;
        int ext = ChunkChecksum.ExtentLength(cs, blocks);
        int rf = Math.Min(pool.WriteRf, pool.LiveTargets);
        var replicas = new Replica[n][];
        var crcs = new uint[n];
        // Block tables, when the chunks take them: built once, written before each replica's data.
        byte[]? tables = blocks ? ArrayPool<byte>.Shared.Rent(n * ChunkChecksum.TableSize) : null;
        for (int i = 0; i < n; i++)
        {
            crcs[i] = blocks
                ? ChunkChecksum.BuildTable(meta.Id, pieces[i].Index, chunks[i].Span, tables.AsSpan(i * ChunkChecksum.TableSize, ChunkChecksum.TableSize))
                : ChunkChecksum.Of(chunks[i].Span);
            replicas[i] = new Replica[rf];
        }
        var placement = pool.Placement;
        var allocated = new List<(int Target, long Offset, long Length)>();
        bool held = false;
        try
        {
            for (int r = 0; r < rf; r++)
            {
                for (int t = 0; t < targets; t++)
                {
                    var mine = new List<int>();
                    for (int i = 0; i < n; i++)
                        if (placement.Target(meta.Id, pieces[i].Index, r, targets) == t)
                            mine.Add(i);
                    if (mine.Count == 0)
                        continue;
                    var alloc = pool.Shards[t].Allocator;
                    long run = mine.Count > 1 ? alloc.Allocate((long)mine.Count * ext) : -1;
                    if (run >= 0)
                        allocated.Add((t, run, (long)mine.Count * ext));
                    for (int k = 0; k < mine.Count; k++)
                    {
                        int i = mine[k];
                        long off = run >= 0 ? run + (long)k * ext : alloc.Allocate(ext);
                        if (off < 0)
                            throw new NoSpaceException($"no space left in pool '{pool.Label}': target {t} has no free {ext}-byte extent for image '{meta.Label}' at offset {pieces[i].Index * cs}");
                        if (run < 0)
                            allocated.Add((t, off, ext));
                        replicas[i][r] = new Replica((ushort)t, off, crcs[i]);
                    }
                }
            }
            // Released by WriteGroupAsync once the old extents are freed or deferred, or below on failure.
            pool.Log.HoldFresh();
            held = true;
            var extents = new List<Extent>(n * rf);
            for (int i = 0; i < n; i++)
                foreach (var rep in replicas[i])
                    extents.Add(new Extent(rep.Target, rep.Offset, ext, blocks, i));
            extents.Sort((a, b) => a.Target != b.Target ? a.Target.CompareTo(b.Target) : a.Offset.CompareTo(b.Offset));
            var writes = new List<Task>();
            var runTargets = new List<int>();
            foreach (var (start, count, bytes) in Runs(extents, MaxRun()))
            {
                writes.Add(WriteRunAsync(extents, start, count, bytes, cs, chunks, tables));
                runTargets.Add(extents[start].Target);
            }
            try
            {
                // With rf > 1 a run that fails on one target's device is survived when every chunk has a
                // replica on a target that did not fail and the failed targets leave the pool.
                var all = Task.WhenAll(writes);
                if (rf > 1)
                    await pool.ReplicaWritesAsync(all, [.. writes], [.. runTargets],
                        failed => Array.TrueForAll(replicas, c => Array.Exists(c, r => !failed.Contains(r.Target))),
                        meta.Label, pieces[0].Index * cs + pieces[0].Within).ConfigureAwait(false);
                else
                    await all.ConfigureAwait(false);
            }
            catch (DeviceException e)
            {
                pool.OnDeviceError(null, e.Device);
                long at = pieces[0].Index * cs + pieces[0].Within;
                pool.Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
                    $"pool '{pool.Label}' image '{meta.Label}' write at offset {at} failed: {e.Message}",
                    Pool: pool.Label, Image: meta.Label, Device: e.Device, Offset: at));
                throw new StoreException(Errno.EIO, $"write to pool '{pool.Label}' image '{meta.Label}' at offset {at} failed: {e.Message}", e);
            }
        }
        catch
        {
            foreach (var (t, off, len) in allocated)
                pool.Shards[t].Allocator.Free(off, len);
            if (held)
                pool.Log.ReleaseFresh();
            throw;
        }
        finally
        {
            if (tables != null)
                ArrayPool<byte>.Shared.Return(tables);
        }
        return replicas;
    }

    /// <summary>One device write for a run of adjacent extents on one target (each its table, if any, then its chunk).</summary>
    private async Task WriteRunAsync(List<Extent> extents, int start, int count, int bytes, int cs, ReadOnlyMemory<byte>[] chunks, byte[]? tables)
    {
        var shard = pool.Shards[extents[start].Target];
        using var buf = shard.Device.Buffers.Rent(bytes);
        var span = buf.Memory.Span;
        int at = 0;
        for (int k = 0; k < count; k++)
        {
            var e = extents[start + k];
            if (e.Blocks)
            {
                tables.AsSpan(e.Slot * ChunkChecksum.TableSize, ChunkChecksum.TableSize).CopyTo(span[at..]);
                at += ChunkChecksum.TableSize;
            }
            chunks[e.Slot].Span.CopyTo(span.Slice(at, cs));
            at += cs;
        }
        await TransferAsync(shard, extents[start].Offset, buf.Memory[..bytes], write: true).ConfigureAwait(false);
    }

    /// <summary>
    /// Reads one group of pieces into destination under the caller's shared chunk
    /// locks: runs of adjacent extents (first replica) with one device read each,
    /// each chunk verified; a chunk that does not verify, or a run whose read fails,
    /// takes the single-chunk path (other replicas, reports). Returns the chunks
    /// with a bad replica left unrepaired. With a <paramref name="sink"/>, each piece
    /// goes to it instead, from the run's device buffer once its chunk is verified
    /// (no copy), and destination is not used.
    /// </summary>
    public async Task<List<long>?> ReadGroupAsync(ImageMeta meta, List<Piece> pieces, Memory<byte> destination, IReadSink? sink = null)
    {
        int cs = meta.ChunkSize, n = pieces.Count;
        // Under the caller's shared locks, dropped before it releases them: maps a later write supersedes may be reused.
        var maps = pool.Meta.ChunksAt(meta, pieces, p => p.Index, locked: true);
        var extents = new List<Extent>(n);
        var failed = new bool[n];
        for (int i = 0; i < n; i++)
        {
            if (maps[i] == null)
            {
                if (sink != null)
                    await sink.HoleAsync(pieces[i].At, pieces[i].Length).ConfigureAwait(false);
                else
                    destination.Span.Slice(pieces[i].At, pieces[i].Length).Clear();
                continue;
            }
            var r = maps[i]!.Replicas[0];
            if (pool.IsExcluded(r.Target))
            {
                // Read alone below, from a replica on a target that is not excluded.
                failed[i] = true;
                continue;
            }
            extents.Add(new Extent(r.Target, r.Offset, maps[i]!.ExtentLength(cs), maps[i]!.Blocks, i));
        }
        extents.Sort((a, b) => a.Target != b.Target ? a.Target.CompareTo(b.Target) : a.Offset.CompareTo(b.Offset));
        var runs = Runs(extents, sink != null ? SinkRun() : MaxRun());
        if (runs.Count == 1)
            await ReadRunAsync(meta, extents, runs[0].Start, runs[0].Count, runs[0].Bytes, pieces, maps, destination, sink, failed).ConfigureAwait(false);
        else if (runs.Count > 1)
            await Task.WhenAll(runs.Select(run => ReadRunAsync(meta, extents, run.Start, run.Count, run.Bytes, pieces, maps, destination, sink, failed))).ConfigureAwait(false);
        List<long>? unrepaired = null;
        for (int i = 0; i < n; i++)
        {
            if (!failed[i])
                continue;
            var p = pieces[i];
            var chunk = ArrayPool<byte>.Shared.Rent(cs);
            try
            {
                if (await pool.ChunkIo.ReadVerifiedAsync(meta, p.Index, maps[i]!, chunk.AsMemory(0, cs), repair: false).ConfigureAwait(false))
                    (unrepaired ??= []).Add(p.Index);
                if (sink != null)
                    await sink.DataAsync(p.At, chunk.AsMemory(0, p.Within + p.Length), p.Within).ConfigureAwait(false);
                else
                    chunk.AsSpan(p.Within, p.Length).CopyTo(destination.Span.Slice(p.At, p.Length));
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(chunk);
            }
        }
        return unrepaired;
    }

    /// <summary>
    /// Bytes in front of a run read for a sink: the first chunk's piece then has room for a header
    /// before it too (a chunk with a block table has its table there, later ones the pieces already
    /// delivered).
    /// </summary>
    private const int SinkHeadroom = 4096;

    /// <summary>Longest run read for a sink on the caller's thread, its headroom included (the page-cache read limit before it grew to 2 MiB).</summary>
    private const int SinkRunLimit = 512 * 1024;

    /// <summary>
    /// Longest run read for a sink: where every target serves reads the page cache holds on the
    /// caller's thread, no longer than that limit (with the headroom), so the whole read is read,
    /// verified and handed over on one thread, piece after piece, with no wake-up of a polling thread:
    /// the sink sends each piece as it comes, so longer runs would gain no overlap, only a hand-off.
    /// Otherwise (direct I/O) as long as a plain read's runs.
    /// </summary>
    private int SinkRun()
    {
        int max = MaxRun();
        foreach (var s in pool.Shards)
        {
            // At most 512 KiB: a run is read whole before its first piece is verified and sent, and a longer
            // one leaves its first pieces beyond the core's cache by then.
            int cached = Math.Min(s.Device.Geometry.CachedReadLimit, SinkRunLimit) - SinkHeadroom;
            if (cached <= 0)
                return max;
            max = Math.Min(max, cached);
        }
        return max;
    }

    private async Task ReadRunAsync(ImageMeta meta, List<Extent> extents, int start, int count, int bytes, List<Piece> pieces,
        ChunkMap?[] maps, Memory<byte> destination, IReadSink? sink, bool[] failed)
    {
        int cs = meta.ChunkSize;
        var shard = pool.Shards[extents[start].Target];
        if (sink == null && DeviceIo.AnyBuffer(shard.Device) && (shard.Device.Geometry.Features & DeviceFeatures.CachedRead) != 0)
        {
            await ReadRunInPlaceAsync(meta, extents, start, count, pieces, maps, destination, failed).ConfigureAwait(false);
            return;
        }
        int front = sink != null ? SinkHeadroom : 0;
        using var buf = shard.Device.Buffers.Rent(front + bytes);
        try
        {
            await TransferAsync(shard, extents[start].Offset, buf.Memory.Slice(front, bytes), write: false).ConfigureAwait(false);
        }
        catch (DeviceException)
        {
            // The single-chunk path rereads each chunk, reports the error and tries the other replicas.
            for (int k = 0; k < count; k++)
                failed[extents[start + k].Slot] = true;
            return;
        }
        int at = front;
        for (int k = 0; k < count; k++)
        {
            var e = extents[start + k];
            int i = e.Slot;
            int extentAt = at;
            at += e.Length;
            var replica = maps[i]!.Replicas[0];
            var p = pieces[i];
            var extent = buf.Memory.Span.Slice(extentAt, e.Length);
            ChunkVerdict verdict = e.Blocks
                ? ChunkChecksum.VerifyExtent(replica, meta.Id, p.Index, cs, extent)
                : ChunkChecksum.Verify(replica, cs, 0, extent);
            if (!verdict.Ok)
            {
                failed[i] = true;
                continue;
            }
            int dataAt = extentAt + (e.Blocks ? ChunkChecksum.TableSize : 0) + p.Within;
            if (sink != null)
            {
                // Everything in front of the piece is free once it is verified: the headroom, tables, delivered pieces.
                await sink.DataAsync(p.At, buf.Memory[..(dataAt + p.Length)], dataAt).ConfigureAwait(false);
                continue;
            }
            buf.Memory.Span.Slice(dataAt, p.Length).CopyTo(destination.Span.Slice(p.At, p.Length));
        }
    }

    /// <summary>
    /// A run on a device that reads the page cache into any memory on the caller's thread (a buffered
    /// file: no DirectIo, CachedRead), read without a copy: each whole chunk straight into its place in
    /// <paramref name="destination"/> and its block table into a small buffer, then verified there; a
    /// partial chunk (the request's edges) through a buffer as before. A chunk that does not verify is
    /// cleared from the destination before the single-chunk path reads it again, so its bytes never
    /// reach the caller. The run's single read into a device buffer and the copy out of it cost more:
    /// the copy was 16% of the server's samples of an nbdcopy copy-out (256 KiB reads of a 128 KiB-chunk
    /// image, perf/README.md, nbd-copy), a read of a cached table a system call of a few microseconds.
    /// Direct-I/O and memory devices keep one device read per run.
    /// </summary>
    private async Task ReadRunInPlaceAsync(ImageMeta meta, List<Extent> extents, int start, int count, List<Piece> pieces,
        ChunkMap?[] maps, Memory<byte> destination, bool[] failed)
    {
        int cs = meta.ChunkSize;
        var shard = pool.Shards[extents[start].Target];
        using var side = shard.Device.Buffers.Rent(cs + ChunkChecksum.TableSize);
        for (int k = 0; k < count; k++)
        {
            var e = extents[start + k];
            int i = e.Slot;
            var p = pieces[i];
            var replica = maps[i]!.Replicas[0];
            int table = e.Blocks ? ChunkChecksum.TableSize : 0;
            bool whole = p.Within == 0 && p.Length == cs;
            try
            {
                if (whole)
                {
                    var chunk = destination.Slice(p.At, cs);
                    // The table and the chunk in one device call (one preadv2 when the page cache holds both).
                    if (e.Blocks)
                        await shard.ReadDataScatterAsync(e.Offset, side.Memory[..table], chunk).ConfigureAwait(false);
                    else
                        await TransferAsync(shard, e.Offset, chunk, write: false).ConfigureAwait(false);
                    ChunkVerdict verdict;
                    if (e.Blocks)
                    {
                        verdict = ChunkChecksum.VerifyTable(replica, meta.Id, p.Index, cs, side.Memory.Span[..table], out var crcs);
                        if (verdict.Ok)
                            verdict = ChunkChecksum.VerifyBlocks(replica, crcs!, 0, chunk.Span);
                    }
                    else
                        verdict = ChunkChecksum.Verify(replica, cs, 0, chunk.Span);
                    if (!verdict.Ok)
                    {
                        chunk.Span.Clear();
                        failed[i] = true;
                    }
                    continue;
                }
                var extent = side.Memory[..e.Length];
                await TransferAsync(shard, e.Offset, extent, write: false).ConfigureAwait(false);
                ChunkVerdict v = e.Blocks
                    ? ChunkChecksum.VerifyExtent(replica, meta.Id, p.Index, cs, extent.Span)
                    : ChunkChecksum.Verify(replica, cs, 0, extent.Span);
                if (!v.Ok)
                {
                    failed[i] = true;
                    continue;
                }
                extent.Span.Slice(table + p.Within, p.Length).CopyTo(destination.Span.Slice(p.At, p.Length));
            }
            catch (DeviceException)
            {
                // The single-chunk path rereads it, reports the error and tries the other replicas.
                if (whole)
                    destination.Span.Slice(p.At, cs).Clear();
                failed[i] = true;
            }
        }
    }
}
