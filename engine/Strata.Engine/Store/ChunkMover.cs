using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>What a conditional switch (<see cref="ChunkHold.SwitchAsync"/>) did.</summary>
internal enum ChunkSwitch
{
    /// <summary>The map points at the destination, durably; the source extents are free.</summary>
    Switched,
    /// <summary>
    /// The chunk no longer had the location the mover read (a client overwrote or trimmed it, or
    /// something else moved it): nothing changed and the destination extents were freed; read the
    /// chunk's location again and copy it again.
    /// </summary>
    Changed,
}

/// <summary>
/// What a data-moving action (a migration loop) uses to move or rewrite one chunk of one image
/// while clients do I/O (docs/format.md, "Moving a chunk"): lock the chunk, read where it is,
/// reserve and write a destination, and switch the map to it only if the chunk still is where it
/// was read, freeing the source once the switch is durable. A client write to the chunk either
/// waits for the hold, or, when the mover copies without holding it exclusively, wins: the switch
/// then reports <see cref="ChunkSwitch.Changed"/> and the move is retried.
/// </summary>
internal sealed class ChunkMover(Pool pool)
{
    /// <summary>
    /// Exclusive hold on one chunk: client writes, trims and resizes of that chunk, and the image's
    /// removal, wait until it is disposed; I/O to the image's other chunks goes on.
    /// </summary>
    public ValueTask<ChunkHold> LockAsync(uint image, long chunk) => HoldAsync(image, chunk, exclusive: true);

    /// <summary>
    /// Shared hold on one chunk, as a client read takes: its location and the source extents stay
    /// put (a client write waits) while the mover reads them; other reads go on.
    /// </summary>
    public ValueTask<ChunkHold> ReadLockAsync(uint image, long chunk) => HoldAsync(image, chunk, exclusive: false);

    private async ValueTask<ChunkHold> HoldAsync(uint image, long chunk, bool exclusive)
    {
        var locks = pool.LocksFor(image);
        var held = exclusive ? await locks.ChunkAsync(chunk).ConfigureAwait(false) : await locks.ReadAsync(chunk).ConfigureAwait(false);
        try
        {
            // Looked up under the hold: an image removed before it was taken is not found.
            var meta = pool.ImageById(image, $"#{image}");
            return new ChunkHold(pool, meta, chunk, held, exclusive);
        }
        catch
        {
            held.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reserves a destination extent of <paramref name="size"/> bytes on <paramref name="target"/>
    /// (the allocator is rebuilt from the map at open, so a reservation that is never switched to
    /// is free again after a crash). Throws a no-space error when the target has none.
    /// </summary>
    public async ValueTask<long> AllocateAsync(int target, int size)
    {
        long off = await pool.ChunkIo.AllocateAsync(target, size).ConfigureAwait(false);
        if (off < 0)
            throw new NoSpaceException($"no space left in pool '{pool.Label}': target {target} has no free {size}-byte extent for a chunk move");
        return off;
    }

    /// <summary>Gives back a destination extent that no switch refers to.</summary>
    public void Release(Replica extent, int size) => pool.Shards[extent.Target].Allocator.Free(extent.Offset, size);

    /// <summary>Reads an extent (a source replica under a hold, or a written destination).</summary>
    public ValueTask ReadAsync(Replica extent, Memory<byte> destination) =>
        pool.Shards[extent.Target].ReadDataAsync(extent.Offset, destination);

    /// <summary>Writes a reserved destination extent (not flushed: the switch's commit round flushes it with its record).</summary>
    public ValueTask WriteAsync(Replica extent, ReadOnlyMemory<byte> data) =>
        pool.Shards[extent.Target].WriteDataAsync(extent.Offset, data);
}

/// <summary>A hold on one chunk of one image (<see cref="ChunkMover"/>); disposing it lets clients at the chunk again.</summary>
internal sealed class ChunkHold : IDisposable
{
    private readonly Pool _pool;
    private readonly ImageMeta _meta;
    private ImageLocks.Held _held;
    private bool _disposed;

    internal ChunkHold(Pool pool, ImageMeta meta, long chunk, ImageLocks.Held held, bool exclusive)
    {
        _pool = pool;
        _meta = meta;
        Chunk = chunk;
        _held = held;
        Exclusive = exclusive;
    }

    public uint Image => _meta.Id;

    public long Chunk { get; }

    public int ChunkSize => _meta.ChunkSize;

    public bool Exclusive { get; }

    /// <summary>
    /// Where the chunk is now (null: not written or trimmed): every replica's target, extent and
    /// checksum. While the hold lasts it cannot change; the object itself is what
    /// <see cref="SwitchAsync"/> compares, so a map read under an earlier hold identifies that version.
    /// </summary>
    public ChunkMap? Location
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _pool.ChunkIo.Lookup(_meta, Chunk);
        }
    }

    /// <summary>
    /// Reads the chunk into <paramref name="buffer"/> (chunk size bytes) from the first replica of
    /// <paramref name="location"/> that verifies against the map, reporting bad ones and, under the
    /// exclusive hold, rewriting them from the good one (ChunkIo.ReadVerifiedAsync). Throws a data
    /// integrity error when none verifies.
    /// </summary>
    /// <returns>Whether a bad replica was left unrepaired (a shared hold does not repair).</returns>
    public ValueTask<bool> ReadVerifiedAsync(ChunkMap location, Memory<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _pool.ChunkIo.ReadVerifiedAsync(_meta, Chunk, location, buffer, repair: Exclusive);
    }

    /// <summary>
    /// Switches the chunk to <paramref name="destination"/> (extents reserved with
    /// <see cref="ChunkMover.AllocateAsync"/>, written and verified, each with the checksum of the
    /// chunk) if it still has the location <paramref name="expected"/> that the mover read, possibly
    /// under an earlier hold: the map is then switched by one durable commit, and only once that
    /// commit is durable are the source extents freed. Else nothing changes, the destination
    /// extents are freed and the result is <see cref="ChunkSwitch.Changed"/>. Needs the exclusive hold.
    /// <para>
    /// If the commit fails (the pool goes read-only) the record may or may not be durable, so both
    /// the source and the destination stay allocated; replay keeps whichever the log says, verifying
    /// the destination's data if the record is in the unflushed tail.
    /// </para>
    /// </summary>
    public Task<ChunkSwitch> SwitchAsync(ChunkMap expected, Replica[] destination)
    {
        // The copy's checksum is the source's: the chunk's contents do not change by moving.
        System.Diagnostics.Debug.Assert(destination.All(r => r.Crc == expected.Replicas[0].Crc));
        return SwitchAsync(expected, destination, MetaRecords.ChunkMap(_meta.Id, Chunk, destination), _meta.ChunkSize);
    }

    /// <summary>
    /// The general switch a migration loop uses: <paramref name="record"/> maps the chunk to
    /// <paramref name="destination"/> (a ChunkMap, or the record of a rewritten form whose extents
    /// are <paramref name="destinationExtent"/> bytes). A destination replica equal to a source
    /// replica (same target and offset: a replica that stays where it is) is neither freed when the
    /// switch is dropped nor when it succeeds; every other source extent is freed once the commit
    /// is durable. Same conditions and failure rules as <see cref="SwitchAsync(ChunkMap, Replica[])"/>.
    /// </summary>
    public async Task<ChunkSwitch> SwitchAsync(ChunkMap expected, Replica[] destination, MetaRecord record, int destinationExtent)
    {
        if (!StillAt(expected, destination, destinationExtent))
            return ChunkSwitch.Changed;
        Task commit;
        try
        {
            // Records 40-42 (ChunkMoveBegin/Commit/Abort) are the two-location form of this switch
            // for loops that must resume a copy after a crash; one ChunkMap record is the switch
            // itself, and replay verifies its data like any other in the tail (docs/format.md).
            commit = _pool.Log.CommitAsync(record);
        }
        catch
        {
            FreeNew(expected, destination, destinationExtent);
            throw;
        }
        try
        {
            await commit.ConfigureAwait(false);
        }
        catch (WriteVoidedException)
        {
            // Voided in the log: the destination is on targets that left the pool while the copy ran.
            // The chunk keeps its source; the loop places it again, as for a chunk a client changed.
            FreeNew(expected, destination, destinationExtent);
            return ChunkSwitch.Changed;
        }
        // Durable: a crash now replays the destination, so the source may be reused.
        System.Diagnostics.Debug.Assert(!ReferenceEquals(Location, expected), "a switched chunk's map is no longer the source");
        _pool.FreeChunk(Superseded(expected, destination), _meta.ChunkSize);
        return ChunkSwitch.Switched;
    }

    /// <summary>
    /// The writeback form of <see cref="SwitchAsync(ChunkMap, Replica[], MetaRecord, int)"/>, which a
    /// migration loop uses: the record is applied at once and queued (PoolLog.CommitWriteback), so the
    /// hold can be let go without waiting for a commit round, and the source extents are freed once
    /// the record is durable (the next flush round: any durable commit, the job's next cursor, which is
    /// committed after a flush, or the writeback flush timer). A crash before then replays the map
    /// without the switch or, when the record reached the log but is past the last durable mark, with
    /// it only if the destination's data verifies (PoolOpener); the source is still allocated either
    /// way (docs/format.md, "Moving a chunk"). Same conditions as the durable form; a destination on a
    /// target excluded while the copy ran is refused here, as <see cref="ChunkSwitch.Changed"/>.
    /// </summary>
    public ChunkSwitch SwitchWriteback(ChunkMap expected, Replica[] destination, MetaRecord record, int destinationExtent)
    {
        if (!StillAt(expected, destination, destinationExtent))
            return ChunkSwitch.Changed;
        try
        {
            // Not overwritable in place: a rebuild's or an rf change's mapping keeps source replicas
            // that the last durable record names, and an in-place write would tear them for a crash.
            _pool.Log.CommitWriteback([record], overwritable: false);
        }
        catch (WriteVoidedException)
        {
            FreeNew(expected, destination, destinationExtent);
            return ChunkSwitch.Changed;
        }
        catch
        {
            FreeNew(expected, destination, destinationExtent); // nothing was applied or queued
            throw;
        }
        System.Diagnostics.Debug.Assert(!ReferenceEquals(Location, expected), "a switched chunk's map is no longer the source");
        var source = Superseded(expected, destination);
        _pool.Log.FreeWhenDurable(() => _pool.FreeChunk(source, _meta.ChunkSize));
        return ChunkSwitch.Switched;
    }

    /// <summary>
    /// Both forms' preconditions: the exclusive hold, a writable pool, and the chunk still where the
    /// mover read it; when it is not, the destination's new extents are freed and this says false.
    /// </summary>
    private bool StillAt(ChunkMap expected, Replica[] destination, int destinationExtent)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Exclusive)
            throw new InvalidOperationException("switching a chunk needs its exclusive hold (ChunkMover.LockAsync)");
        _pool.ThrowIfNotWritable();
        if (ReferenceEquals(Location, expected))
            return true;
        FreeNew(expected, destination, destinationExtent);
        return false;
    }

    /// <summary>What a switch frees once durable: the source replicas the destination does not keep (and a Moving location).</summary>
    private static ChunkMap Superseded(ChunkMap expected, Replica[] destination)
    {
        var moved = Array.FindAll(expected.Replicas, r => Array.IndexOf(destination, r) < 0);
        return moved.Length == expected.Replicas.Length ? expected : expected with { Replicas = moved };
    }

    /// <summary>Frees the destination extents a dropped switch reserved (not those it shares with the source).</summary>
    private void FreeNew(ChunkMap expected, Replica[] destination, int extent)
    {
        foreach (var r in destination)
            if (Array.IndexOf(expected.Replicas, r) < 0)
                _pool.Shards[r.Target].Allocator.Free(r.Offset, extent);
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _held.Dispose();
    }
}
