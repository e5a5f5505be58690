using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>A run of bytes of an image that all hold data (Mapped) or all do not (a hole that reads as zeroes).</summary>
public readonly record struct AllocationRun(long Length, bool Mapped);

/// <summary>
/// A handle on a thin image: reads and writes at any byte offset and length.
/// A write acknowledged with durable: true is durable (data flushed, then its
/// chunk-map record committed); a writeback write (durable: false) is durable
/// after the next flush round, which FlushAsync forces.
/// </summary>
public sealed partial class Image
{
    private readonly Pool _pool;
    private readonly ImageLocks _locks;

    /// <summary>
    /// A migration's handle on a destination in its source's pool: its I/O runs inside a pass of that
    /// pool's gate (a mirrored write, the copy), so it does not enter the gate again, which could wait
    /// on a close that itself waits for that pass (docs/migration.md, "Barriers").
    /// </summary>
    private readonly bool _ungated;

    internal Image(Pool pool, uint id, string container, string label, bool ungated = false)
    {
        _ungated = ungated;
        _pool = pool;
        Id = id;
        Container = container;
        Label = label;
        _locks = pool.LocksFor(id);
    }

    public uint Id { get; }

    public string Container { get; }

    public string Label { get; }

    public Pool Pool => _pool;

    private ValueTask<PoolGate.Ticket> EnterAsync() => _ungated ? default : _pool.Gate.EnterAsync();

    private ImageMeta Meta => _pool.ImageById(Id, Label);

    public long Size => _pool.MigrationOf(Id) is { Committed: true } m ? m.Forward.Size : SourceSize;

    /// <summary>This image's own size (not forwarded after a committed migration).</summary>
    internal long SourceSize
    {
        get
        {
            var m = Meta;
            lock (_pool.Meta.Sync)
                return m.Size;
        }
    }

    public int ChunkSize => _pool.MigrationOf(Id) is { Committed: true } m ? m.Forward.ChunkSize : Meta.ChunkSize;

    /// <summary>Whether a whole chunk of <paramref name="chunkSize"/> bytes written to this image gets a block table (its chunk size, in a pool that writes them).</summary>
    internal bool WritesBlockTables(int chunkSize) => ChunkSizeOrZero() == chunkSize && _pool.WritesBlockTables(chunkSize);

    /// <summary>Chunk size, or 0 once the image is gone.</summary>
    internal int ChunkSizeOrZero()
    {
        lock (_pool.Meta.Sync)
            return _pool.Meta.Images.TryGetValue(Id, out var m) ? m.ChunkSize : 1;
    }

    /// <summary>Mapped bytes at and after chunk <paramref name="index"/> (a migration's remaining work).</summary>
    internal long MappedBytesFrom(long index)
    {
        var m = Meta;
        lock (_pool.Meta.Sync)
            return (long)m.Chunks.Keys.Count(k => k >= index) * m.ChunkSize;
    }

    /// <summary>The committed migration an old handle forwards to, or null.</summary>
    private ImageMigration? Forwarded => _pool.MigrationOf(Id) is { Committed: true } m ? m : null;

    private void CheckRange(string what, long offset, long length, long size)
    {
        if (offset < 0 || length < 0 || offset > size - length)
            throw new InvalidRequestException($"{what} of {length} bytes at offset {offset} is past the end of image '{Label}' in pool '{_pool.Label}' ({size} bytes)");
    }

    /// <summary>Groups of a multi-chunk request processed at once (each under its own chunk locks).</summary>
    private const int GroupParallelism = 2;

    /// <summary>Splits [offset, offset+length) into per-chunk pieces, in groups of at most groupSize consecutive chunks.</summary>
    private static List<List<ChunkRuns.Piece>> Groups(long offset, long length, int cs, int groupSize)
    {
        var groups = new List<List<ChunkRuns.Piece>>();
        for (long pos = offset; pos < offset + length;)
        {
            if (groups.Count == 0 || groups[^1].Count == groupSize)
                groups.Add(new List<ChunkRuns.Piece>(Math.Min(groupSize, (int)((offset + length - pos) / cs) + 2)));
            int within = (int)(pos % cs);
            int n = (int)Math.Min(cs - within, offset + length - pos);
            groups[^1].Add(new ChunkRuns.Piece(pos / cs, within, n, (int)(pos - offset)));
            pos += n;
        }
        return groups;
    }

    private static async Task ForEachGroupAsync(List<List<ChunkRuns.Piece>> groups, Func<List<ChunkRuns.Piece>, Task> body)
    {
        if (groups.Count == 1)
        {
            await body(groups[0]).ConfigureAwait(false);
            return;
        }
        await Parallel.ForEachAsync(groups, new ParallelOptions { MaxDegreeOfParallelism = GroupParallelism },
            async (g, _) => await body(g).ConfigureAwait(false)).ConfigureAwait(false);
    }

    /// <remarks>A ValueTask to await once (pooled: no state machine box per read, issue 17).</remarks>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        _pool.NoteClientIo();
        // Until commit a migrating source serves its own reads: every write reaches it, so it is complete.
        if (Forwarded is { } f)
        {
            await f.Forward.ReadAsync(offset, destination).ConfigureAwait(false);
            return;
        }
        try
        {
            // The image's own read, in this frame (one async frame less per read, issue 17).
            using var pass = await EnterAsync().ConfigureAwait(false);
            var meta = Meta;
            long size;
            lock (_pool.Meta.Sync)
                size = meta.Size;
            CheckRange("read", offset, destination.Length, size);
            int cs = meta.ChunkSize;
            if (destination.Length == 0)
                return;
            if (_pool.ImportOf(Id) is { } imp)
            {
                await ImportReadAsync(imp, meta, offset, destination).ConfigureAwait(false);
                return;
            }
            if (offset / cs == (offset + destination.Length - 1) / cs)
            {
                // One chunk (every small read): no piece list, no fan-out.
                await ReadPieceAsync(meta, offset / cs, (int)(offset % cs), destination).ConfigureAwait(false);
                return;
            }
            await ReadGroupsAsync(meta, offset, destination).ConfigureAwait(false);
        }
        catch (NotFoundException) when (Forwarded is { } g)
        {
            // Committed while this read waited for its chunk: the source is gone, the destination has it all.
            await g.Forward.ReadAsync(offset, destination).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A read whose verified data goes to <paramref name="sink"/> from the device buffers it was read
    /// into (IReadSink): a read across chunks delivers each chunk's piece as its run is verified; a
    /// read within one chunk, or of an image being imported, is read into a buffer and delivered whole.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, int length, IReadSink sink)
    {
        _pool.NoteClientIo();
        if (Forwarded is { } f)
        {
            await f.Forward.ReadAsync(offset, length, sink).ConfigureAwait(false);
            return;
        }
        bool whole;
        try
        {
            using var pass = await EnterAsync().ConfigureAwait(false);
            var meta = Meta;
            long size;
            lock (_pool.Meta.Sync)
                size = meta.Size;
            CheckRange("read", offset, length, size);
            int cs = meta.ChunkSize;
            if (length == 0)
                return;
            whole = _pool.ImportOf(Id) != null || offset / cs == (offset + length - 1) / cs;
            if (!whole)
                await ReadGroupsAsync(meta, offset, length, default, sink).ConfigureAwait(false);
        }
        catch (NotFoundException) when (Forwarded is { } g)
        {
            await g.Forward.ReadAsync(offset, length, sink).ConfigureAwait(false);
            return;
        }
        if (whole)
        {
            var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(length);
            try
            {
                await ReadAsync(offset, buffer.AsMemory(0, length)).ConfigureAwait(false);
                await sink.DataAsync(0, buffer.AsMemory(0, length), 0).ConfigureAwait(false);
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>A read across chunks, group by group (its own method: the one-chunk path allocates no closure).</summary>
    private Task ReadGroupsAsync(ImageMeta meta, long offset, Memory<byte> destination) =>
        ReadGroupsAsync(meta, offset, destination.Length, destination, null);

    /// <summary>
    /// A read across chunks into <paramref name="destination"/>, or to <paramref name="sink"/> when there
    /// is one. The caller retries a read that finds the image gone (a committed migration) at its
    /// destination; a sink that may have pieces already must not get them twice, so that read fails.
    /// </summary>
    private async Task ReadGroupsAsync(ImageMeta meta, long offset, int length, Memory<byte> destination, IReadSink? sink)
    {
        int cs = meta.ChunkSize;
        int started = 0;
        try
        {
            await ForEachGroupAsync(Groups(offset, length, cs, _pool.ChunkRuns.GroupSize(1)), async g =>
            {
                List<long>? unrepaired;
                using (await _locks.ChunksAsync(g[0].Index, g.Count, write: false).ConfigureAwait(false))
                {
                    var current = Meta;
                    Interlocked.Increment(ref started);
                    unrepaired = await _pool.ChunkRuns.ReadGroupAsync(current, g, destination, sink).ConfigureAwait(false);
                }
                if (unrepaired != null)
                    foreach (long index in unrepaired)
                        await RepairChunkAsync(meta, index).ConfigureAwait(false);
            }).ConfigureAwait(false);
        }
        catch (NotFoundException e) when (sink != null && Volatile.Read(ref started) > 0)
        {
            throw new StoreException(Interop.Errno.EIO, $"read of {length} bytes at offset {offset} of image '{Label}' in pool '{_pool.Label}' was cut short: the image moved to its migration's destination meanwhile ({e.Message})", e);
        }
    }

    /// <summary>Reads part of one chunk; a shared chunk lock keeps its mapping and extents in place meanwhile.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadPieceAsync(ImageMeta meta, long index, int within, Memory<byte> dest)
    {
        bool needsRepair;
        using (await _locks.ReadAsync(index).ConfigureAwait(false))
        {
            // Dropped before the lock is: a write that supersedes the map later may reuse it.
            var map = _pool.Meta.ChunkAtLocked(Meta, index);
            if (map == null)
            {
                dest.Span.Clear();
                return;
            }
            // Verifies what it must read: the whole chunk, or its block table and the touched blocks.
            needsRepair = await _pool.ChunkIo.ReadAsync(meta, index, map, within, dest).ConfigureAwait(false);
        }
        if (needsRepair)
            await RepairChunkAsync(meta, index).ConfigureAwait(false);
    }

    /// <summary>Whether a chunk of this image is mapped now (a migration's copy skips holes).</summary>
    internal bool IsChunkMapped(long index) => _pool.ChunkIo.IsMapped(Meta, index);

    /// <summary>
    /// Whether any chunk holding bytes of [offset, offset + length) is mapped now. A migration's copy
    /// asks it of the destination for a source chunk that is a hole: a client write mirrored before
    /// the copy reached that chunk left its bytes over zeroes there, and a source trim that a crash
    /// made durable without its mirror leaves them behind; the copy trims them, as it would have
    /// overwritten them with the source's chunk.
    /// </summary>
    internal bool MapsAny(long offset, long length)
    {
        var meta = Meta;
        int cs = meta.ChunkSize;
        for (long i = offset / cs; i <= (offset + length - 1) / cs; i++)
            if (_pool.ChunkIo.IsMapped(meta, i))
                return true;
        return false;
    }

    /// <summary>
    /// A migration's copy of one chunk: under the chunk's exclusive lock (no client write between
    /// the read and the copy's write), a verified read of this image into a DMA buffer of the pool
    /// holding it, with room in front for the destination's block table when it builds one (the
    /// devices read into and write from it directly; no copy of the data), written to the
    /// destination at the same offset as writeback. Where the chunk is one whole
    /// chunk of the destination too, the destination checks the bytes against the source's checksum
    /// before it writes them (ChunkIo.WriteAsync, expect). Returns the bytes written: 0 for a chunk
    /// the source does not map, whose range the destination then trims where it maps anything
    /// (see <see cref="MapsAny"/>).
    /// </summary>
    internal async Task<long> CopyChunkAsync(long index, Image destination)
    {
        using var pass = await EnterAsync().ConfigureAwait(false);
        using (await _locks.ChunkAsync(index).ConfigureAwait(false))
            return await CopyChunkLockedAsync(index, destination).ConfigureAwait(false);
    }

    /// <summary><see cref="CopyChunkAsync"/> for a caller holding the chunk's exclusive lock (and a pass, or all locks).</summary>
    internal async Task<long> CopyChunkLockedAsync(long index, Image destination)
    {
        var meta = Meta;
        int cs = meta.ChunkSize;
        var map = _pool.ChunkIo.Lookup(Meta, index);
        if (map == null)
        {
            long at = index * cs, span = Math.Min(cs, SourceSize - at);
            if (destination.MapsAny(at, span))
                await destination.TrimOwnAsync(at, span).ConfigureAwait(false);
            return 0;
        }
        int t = map.Replicas[0].Target;
        foreach (var r in map.Replicas)
        {
            if (!_pool.IsExcluded(r.Target))
            {
                t = r.Target;
                break;
            }
        }
        // Room for the destination's block table in front of the chunk, when it writes one: the
        // extent (table, then chunk) is then written from this buffer as it is, without a copy.
        int room = destination.WritesBlockTables(cs) ? ChunkChecksum.TableSize : 0;
        using var buffer = _pool.Shards[t].Device.Buffers.Rent(room + cs);
        var chunk = buffer.Memory.Slice(room, cs);
        int n = cs / ChunkChecksum.BlockSize;
        uint[]? blockCrcs = map.Blocks ? System.Buffers.ArrayPool<uint>.Shared.Rent(n) : null;
        try
        {
            await _pool.ChunkIo.ReadVerifiedAsync(meta, index, map, chunk, repair: true, blockCrcs: blockCrcs).ConfigureAwait(false);
            int length = (int)Math.Min(cs, SourceSize - index * cs);
            // Verified just now: the chunk's CRC is the map's, or its blocks' CRCs are the table's
            // (a destination with block tables compares them with the table it builds: no pass of its own).
            var expect = blockCrcs != null ? new CopyChecksum(0, blockCrcs.AsMemory(0, n)) : new CopyChecksum(map.Replicas[0].Crc, default);
            await destination.WriteOwnAsync(index * cs, chunk[..length], durable: false, length == cs ? expect : null,
                room > 0 && length == cs ? buffer.Memory[..(room + cs)] : default).ConfigureAwait(false);
            return length;
        }
        finally
        {
            if (blockCrcs != null)
                System.Buffers.ArrayPool<uint>.Shared.Return(blockCrcs);
        }
    }

    /// <summary>
    /// Rewrites a chunk's bad replicas under its exclusive lock, after the shared
    /// read that found them returned verified bytes: the mapping is looked up and
    /// verified again, quietly, since the first read already reported the problem.
    /// </summary>
    private async Task RepairChunkAsync(ImageMeta meta, long index)
    {
        using (await _locks.ChunkAsync(index).ConfigureAwait(false))
        {
            var map = _pool.ChunkIo.Lookup(Meta, index);
            if (map == null)
                return;
            var chunk = System.Buffers.ArrayPool<byte>.Shared.Rent(meta.ChunkSize);
            try
            {
                await _pool.ChunkIo.ReadVerifiedAsync(meta, index, map, chunk.AsMemory(0, meta.ChunkSize), repair: true, report: false).ConfigureAwait(false);
            }
            catch (Exception e) when (e is DataIntegrityException or IOException)
            {
                // The caller has its verified bytes; what went wrong since is reported by the store.
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(chunk);
            }
        }
    }

    /// <summary>
    /// Writes at any byte offset. Durable (the default): the write survives a crash once this
    /// completes. <paramref name="durable"/> false is writeback, a disk's volatile write cache: the
    /// write is visible to reads once this completes and durable after the next <see cref="FlushAsync"/>
    /// (or any durable write or metadata change, or about a second later); a crash before then may
    /// lose it, chunk by chunk, but never returns other bytes than an earlier or this write's.
    /// NBD writes without FUA use it, as the protocol allows.
    /// </summary>
    /// <remarks>A ValueTask to await once (pooled: no state machine box per write, issue 17).</remarks>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool durable = true)
    {
        _pool.NoteClientIo();
        if (Forwarded is { } f)
        {
            await f.Forward.WriteAsync(offset, source, durable).ConfigureAwait(false);
            return;
        }
        try
        {
            await WriteOwnAsync(offset, source, durable).ConfigureAwait(false);
        }
        catch (NotFoundException) when (Forwarded is { } g)
        {
            // Committed while this write waited: what it wrote of the source is on the destination too; write it all there.
            await g.Forward.WriteAsync(offset, source, durable).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Writes this image; a migrating source then writes the same bytes to the destination while it
    /// still holds the chunk locks (the migration is looked up under them: prepare installs it under
    /// all of them, so no write can slip between the copy of a chunk and its mirror).
    /// </summary>
    /// <param name="expect">The checksum of all of <paramref name="source"/> (a migration's copy of one chunk): checked when the write is one whole chunk of this image.</param>
    /// <param name="extent">A buffer whose last bytes are <paramref name="source"/>, one whole chunk, with room for its block table in front (ChunkIo.WriteAsync).</param>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteOwnAsync(long offset, ReadOnlyMemory<byte> source, bool durable, CopyChecksum? expect = null, Memory<byte> extent = default)
    {
        var pass = await EnterAsync().ConfigureAwait(false);
        // Whether a deferred writeback write took the pass and the chunk's lock (ChunkIo.TryWriteDeferredWritebackAsync).
        bool handed = false;
        try
        {
            _pool.ThrowIfNotWritable();
            var meta = Meta;
            CheckRange("write", offset, source.Length, SourceSize);
            int cs = meta.ChunkSize;
            if (source.Length == 0)
                return;
            if (_pool.ImportOf(Id) is { } imp)
            {
                await ImportWriteAsync(imp, meta, offset, source, durable).ConfigureAwait(false);
                return;
            }
            if (offset / cs == (offset + source.Length - 1) / cs)
            {
                var held = await _locks.ChunkAsync(offset / cs).ConfigureAwait(false);
                try
                {
                    var m = MirrorOf(offset / cs, offset / cs);
                    // A small writeback write into a durable chunk: answered once its blocks are logged; the lock and
                    // the pass stay held until they are in place. (The chunk size first: on most pools, never.)
                    if (m == null && !durable && source.Length < cs && cs >= _pool.DeferWritebackFromChunkSize
                        && await _pool.ChunkIo.TryWriteDeferredWritebackAsync(meta, offset / cs, (int)(offset % cs), source, held, pass).ConfigureAwait(false))
                    {
                        handed = true;
                        return;
                    }
                    var own = _pool.ChunkIo.WriteAsync(Meta, offset / cs, (int)(offset % cs), source, durable,
                        source.Length == cs ? expect : null, source.Length == cs ? extent : default);
                    if (m != null)
                        await WriteMirroredAsync(own, m, offset, source, durable, offset / cs, offset / cs).ConfigureAwait(false);
                    else
                        await own.ConfigureAwait(false);
                }
                finally
                {
                    if (!handed)
                        held.Dispose();
                }
                return;
            }
            await WriteGroupsAsync(offset, source, durable, cs).ConfigureAwait(false);
        }
        finally
        {
            if (!handed)
                pass.Dispose();
        }
    }

    /// <summary>A write across chunks, group by group (its own method: the one-chunk path allocates no closure).</summary>
    private async Task WriteGroupsAsync(long offset, ReadOnlyMemory<byte> source, bool durable, int cs)
    {
        await ForEachGroupAsync(Groups(offset, source.Length, cs, _pool.ChunkRuns.GroupSize(_pool.WriteRf)), async g =>
        {
            using (await _locks.ChunksAsync(g[0].Index, g.Count, write: true).ConfigureAwait(false))
            {
                var m = MirrorOf(g[0].Index, g[^1].Index);
                var own = _pool.ChunkRuns.WriteGroupAsync(Meta, g, source, durable);
                if (m != null)
                {
                    int at = g[0].At, length = g[^1].At + g[^1].Length - at;
                    await WriteMirroredAsync(new ValueTask(own), m, offset + at, source.Slice(at, length), durable, g[0].Index, g[^1].Index).ConfigureAwait(false);
                }
                else
                {
                    await own.ConfigureAwait(false);
                }
            }
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// The migration a write of chunks <paramref name="first"/>..<paramref name="last"/> must also reach
    /// (called under their locks, before the write starts), or null: none, or the copy has yet to reach
    /// those chunks and takes them whole from the source later (ImageMigration.CopiesLater), so the
    /// write would only cost the destination a chunk written now and again by the copy.
    /// </summary>
    private ImageMigration? MirrorOf(long first, long last) =>
        _pool.MigrationOf(Id) is { Committed: false } m && !m.CopiesLater(first, last) ? m : null;

    /// <summary>
    /// A migrating source's write, under the source chunk locks the caller holds: the source's own
    /// write (<paramref name="own"/>, already started) and the same bytes at the same offset on the
    /// destination run at once, so a durable write waits for the slower of the two commits, not for
    /// their sum. Where either side fails, the other may have taken the bytes: chunks
    /// <paramref name="first"/>..<paramref name="last"/> are copied again from the source, still under
    /// the locks, so the two images agree before the error reaches the client. A chunk that cannot be
    /// copied now is noted on the migration (<see cref="ImageMigration.NoteDiverged"/>): the copy job
    /// copies it again before it reports executed, and commit waits for that.
    /// </summary>
    private async Task WriteMirroredAsync(ValueTask own, ImageMigration m, long offset, ReadOnlyMemory<byte> source, bool durable, long first, long last)
    {
        // An async method: its failures are in the ValueTask, never thrown here.
        var mirror = m.MirrorWriteAsync(offset, source, durable);
        Exception? failed = null;
        try
        {
            await own.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            failed = e;
        }
        try
        {
            await mirror.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            failed ??= e;
        }
        if (failed == null)
            return;
        for (long i = first; i <= last; i++)
        {
            try
            {
                await CopyChunkLockedAsync(i, m.Destination).ConfigureAwait(false);
            }
            catch (IOException)
            {
                m.NoteDiverged(i);
            }
        }
        System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failed);
    }

    /// <summary>
    /// Unmaps whole chunks (space returns to the pool) with one log record, and
    /// zeroes the partial chunks at either end. A chunk that runs past the image
    /// end counts as whole when the trim reaches the end (those bytes read as zero anyway).
    /// </summary>
    public async Task TrimAsync(long offset, long length)
    {
        _pool.NoteClientIo();
        if (Forwarded is { } f)
        {
            await f.Forward.TrimAsync(offset, length).ConfigureAwait(false);
            return;
        }
        if (_pool.ImportOf(Id) != null)
        {
            // Importing: a chunk not imported yet would read from the source again if unmapped, so zeroes are written.
            var zeros = new byte[(int)Math.Min(length, 1 << 20)];
            for (long done = 0; done < length; done += zeros.Length)
                await WriteOwnAsync(offset + done, zeros.AsMemory(0, (int)Math.Min(zeros.Length, length - done)), durable: false).ConfigureAwait(false);
            return;
        }
        try
        {
            if (_pool.MigrationOf(Id) == null)
            {
                await TrimOwnAsync(offset, length).ConfigureAwait(false);
                return;
            }
        }
        catch (MigrationStartedException)
        {
            // Prepared while this trim ran: trim again, mirrored (zeroing or unmapping twice is harmless).
        }
        catch (NotFoundException) when (Forwarded != null)
        {
        }
        if (Forwarded is { } g)
        {
            await g.Forward.TrimAsync(offset, length).ConfigureAwait(false);
            return;
        }
        await TrimMigratingAsync(offset, length).ConfigureAwait(false);
    }

    /// <summary>Thrown inside a trim that finds, under a lock, that a migration of this image began.</summary>
    private sealed class MigrationStartedException() : Exception("image migration prepared during a trim");

    /// <summary>
    /// A migrating source's trim: the whole trim under all of the image's locks, then the same
    /// range on the destination, still under them, so no write lands between the two.
    /// </summary>
    private async Task TrimMigratingAsync(long offset, long length)
    {
        using var pass = await EnterAsync().ConfigureAwait(false);
        _pool.ThrowIfNotWritable();
        var meta = Meta;
        CheckRange("trim", offset, length, SourceSize);
        if (length == 0)
            return;
        using (await _locks.AllAsync().ConfigureAwait(false))
        {
            var m = _pool.MigrationOf(Id);
            await TrimBodyAsync(meta, offset, length, locked: true).ConfigureAwait(false);
            if (m is { Committed: false })
                await m.MirrorTrimAsync(offset, length).ConfigureAwait(false);
        }
    }

    private async Task TrimOwnAsync(long offset, long length)
    {
        using var pass = await EnterAsync().ConfigureAwait(false);
        _pool.ThrowIfNotWritable();
        var meta = Meta;
        CheckRange("trim", offset, length, SourceSize);
        if (length == 0)
            return;
        await TrimBodyAsync(meta, offset, length, locked: false).ConfigureAwait(false);
    }

    /// <summary>
    /// The trim itself. locked: the caller holds all of the image's locks (a migrating source);
    /// else each part takes its own and checks that no migration began meanwhile.
    /// </summary>
    private async Task TrimBodyAsync(ImageMeta meta, long offset, long length, bool locked)
    {
        long size = SourceSize;
        int cs = meta.ChunkSize;
        long end = offset + length;
        long first = (offset + cs - 1) / cs;
        long last = end == size ? (end + cs - 1) / cs : end / cs;
        if (first >= last)
        {
            // No whole chunk: the range touches one chunk or the ends of two.
            long boundary = (offset / cs + 1) * cs;
            await ZeroPartAsync(meta, offset, Math.Min(end, boundary), locked).ConfigureAwait(false);
            await ZeroPartAsync(meta, boundary, end, locked).ConfigureAwait(false);
            return;
        }
        await ZeroPartAsync(meta, offset, first * cs, locked).ConfigureAwait(false);
        await ZeroPartAsync(meta, last * cs, end, locked).ConfigureAwait(false);
        using (locked ? null : await _locks.AllAsync().ConfigureAwait(false))
        {
            if (!locked && _pool.MigrationOf(Id) != null)
                throw new MigrationStartedException();
            List<ChunkMap> dropped;
            lock (_pool.Meta.Sync)
                // Removed by the record below under all locks: no hold on the rest (ChunkTable.ScanPairs).
                dropped = Meta.Chunks.ScanPairs.Where(kv => kv.Key >= first && kv.Key < last).Select(kv => kv.Value).ToList();
            if (dropped.Count == 0)
                return;
            await _pool.Log.CommitAsync(MetaRecords.ChunkUnmapRange(Id, first, last - first)).ConfigureAwait(false);
            foreach (var m in dropped)
                _pool.FreeChunk(m, cs);
        }
    }

    /// <summary>Zeroes [from, to) inside one chunk, if that chunk holds data.</summary>
    private async Task ZeroPartAsync(ImageMeta meta, long from, long to, bool locked)
    {
        if (from >= to)
            return;
        int cs = meta.ChunkSize;
        long index = from / cs;
        if (locked)
        {
            if (_pool.ChunkIo.IsMapped(Meta, index))
                await _pool.ChunkIo.WriteAsync(meta, index, (int)(from % cs), new byte[to - from]).ConfigureAwait(false);
            return;
        }
        using (await _locks.ChunkAsync(index).ConfigureAwait(false))
        {
            if (_pool.MigrationOf(Id) != null)
                throw new MigrationStartedException();
            if (_pool.ChunkIo.IsMapped(Meta, index))
                await _pool.ChunkIo.WriteAsync(meta, index, (int)(from % cs), new byte[to - from]).ConfigureAwait(false);
        }
    }

    /// <summary>Chunks looked up by one <see cref="Allocation"/> call at most (the caller asks again from where it stopped).</summary>
    public const int MaxAllocationScan = 1 << 16;

    /// <summary>
    /// Which bytes hold data, from <paramref name="offset"/> on, at chunk granularity: fills
    /// <paramref name="runs"/> with consecutive runs of mapped or unmapped chunks covering at most
    /// <paramref name="length"/> bytes, and returns how many it filled (fewer than the range needs when
    /// <paramref name="runs"/> is full or after <see cref="MaxAllocationScan"/> chunks). An unmapped
    /// chunk (never written, or trimmed whole) holds nothing and reads as zeroes. Metadata only: no
    /// device I/O, one lock of the pool's state.
    /// </summary>
    public int Allocation(long offset, long length, Span<AllocationRun> runs)
    {
        // A migrating source's map is complete until commit (every write reaches it); then the destination's.
        if (Forwarded is { } f)
            return f.Forward.Allocation(offset, length, runs);
        var meta = Meta;
        int cs = meta.ChunkSize;
        int n = 0;
        lock (_pool.Meta.Sync)
        {
            CheckRange("block status", offset, length, meta.Size);
            long end = offset + length;
            long pos = offset;
            for (int scanned = 0; pos < end && scanned < MaxAllocationScan; scanned++)
            {
                long index = pos / cs;
                long next = Math.Min(end, (index + 1) * cs);
                bool mapped = meta.Chunks.ContainsKey(index);
                if (n > 0 && runs[n - 1].Mapped == mapped)
                    runs[n - 1] = runs[n - 1] with { Length = runs[n - 1].Length + (next - pos) };
                else if (n == runs.Length)
                    break;
                else
                    runs[n++] = new AllocationRun(next - pos, mapped);
                pos = next;
            }
        }
        return n;
    }

    /// <summary>
    /// Makes every write completed before the call durable: nothing to do unless writeback writes
    /// (of any image of the pool) are not durable yet, else one flush round. Fails when the pool can no
    /// longer guarantee durability.
    /// </summary>
    public Task FlushAsync()
    {
        var m = _pool.MigrationOf(Id);
        if (m is { Committed: true })
            return m.Forward.FlushAsync();
        // No gate: a prepared pool refuses writes, but its writeback writes were flushed by the prepare's checkpoint.
        // Checked before the first await: a pool that can no longer promise durability refuses at the call.
        _pool.ThrowIfNotLoggable();
        _ = Meta;
        return FlushLogAsync(m);
    }

    private async Task FlushLogAsync(ImageMigration? m)
    {
        await _pool.Log.FlushAsync().ConfigureAwait(false);
        // Mirrored writeback writes are durable at the destination pool's next flush round. Not
        // needed while the destination carries the lag mark: a resume copies from chunk 0 again,
        // and commit flushes the destination before it records committing (docs/migration.md,
        // "A mirrored write's cost").
        if (m != null && !ReferenceEquals(m.Destination.Pool, _pool) && !m.IsLagArmed)
            await m.Destination.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Grows or shrinks the image. Growing first zeroes the old last chunk's tail
    /// (bytes past the old end may hold data from before a shrink); shrinking frees
    /// the chunks past the new end once the resize is durable. A shrink that would drop
    /// mapped data is refused unless allowShrink says the caller means it.
    /// </summary>
    public async Task ResizeAsync(long newSize, bool allowShrink = false)
    {
        SizeLimits.CheckImageSize(newSize);
        await _pool.MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            _pool.ThrowIfNotWritable();
            var meta = Meta;
            int cs = meta.ChunkSize;
            using (await _locks.AllAsync().ConfigureAwait(false))
            {
                _pool.ThrowIfMigrating(Id, Label, "resize");
                long oldSize = SourceSize;
                if (newSize > oldSize && oldSize % cs != 0)
                {
                    long last = oldSize / cs;
                    int within = (int)(oldSize % cs);
                    if (_pool.ChunkIo.IsMapped(meta, last))
                        await _pool.ChunkIo.WriteAsync(meta, last, within, new byte[cs - within]).ConfigureAwait(false);
                }
                List<ChunkMap> dropped;
                long keep = SizeLimits.ChunkCount(newSize, cs);
                lock (_pool.Meta.Sync)
                    dropped = meta.Chunks.ScanPairs.Where(kv => kv.Key >= keep).Select(kv => kv.Value).ToList();
                if (newSize < oldSize && !allowShrink)
                {
                    long mapped = (long)dropped.Count * cs;
                    throw new InvalidRequestException($"shrinking image '{Label}' from {oldSize} to {newSize} bytes drops {mapped} bytes of mapped data past the new end; confirm with --allow-shrink (API: allowShrink)");
                }
                await _pool.Log.CommitAsync(MetaRecords.ImageResize(Id, newSize)).ConfigureAwait(false);
                foreach (var m in dropped)
                    _pool.FreeChunk(m, cs);
            }
        }
        finally
        {
            _pool.MetaLock.Release();
        }
    }

    public string GetProperty(string name)
    {
        var m = Meta;
        lock (_pool.Meta.Sync)
        {
            if (name == "label")
                return m.Label;
            if (name == "size")
                return m.Size.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (name == "chunk_size")
                return m.ChunkSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
            return m.Props.TryGetValue(name, out var v) ? v : throw new NotFoundException($"image '{Label}' has no property {UserText.Quote(name)}");
        }
    }

    /// <summary>Free-form "user.*" attributes (label, size and chunk_size have their own operations).</summary>
    public async Task SetPropertyAsync(string name, string value)
    {
        if (!name.StartsWith("user.", StringComparison.Ordinal) || name.Length <= 5 || name.Length > 128 || value.Length > 4096)
            throw new InvalidRequestException($"image property '{name}' cannot be set (layout 1 images take 'user.*' attributes up to 4096 characters)");
        await _pool.MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            _pool.ThrowIfNotWritable();
            _ = Meta;
            _pool.CheckMetadataRoom(name.Length + value.Length);
            await _pool.Log.CommitAsync(MetaRecords.ImageSetProp(Id, name, value)).ConfigureAwait(false);
        }
        finally
        {
            _pool.MetaLock.Release();
        }
    }
}
