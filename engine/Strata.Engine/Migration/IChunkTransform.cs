using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>One chunk as the loop hands it to a transform: which chunk, and where it is now.</summary>
/// <param name="Image">The image id.</param>
/// <param name="Chunk">The chunk index within the image.</param>
/// <param name="ChunkSize">The image's chunk size (bytes of data).</param>
/// <param name="Location">The chunk's map (under the loop's exclusive hold it cannot change).</param>
internal readonly record struct ChunkSource(uint Image, long Chunk, int ChunkSize, ChunkMap Location);

/// <summary>What a transform wants done with one chunk (<see cref="IChunkTransform.Plan"/>).</summary>
/// <param name="ExtentBytes">Bytes of each destination extent: the chunk size for a move, more for a form with a header.</param>
/// <param name="SourceOffset">
/// Where in the destination buffer the loop reads the verified source chunk: 0 for a copy; 4096
/// for a form whose extent starts with a 4 KiB table (<see cref="IChunkTransform.Produce"/> fills it).
/// </param>
/// <param name="RewriteAll">
/// False: a destination replica on the target a source replica is already on keeps that extent
/// (a placement move copies only the replicas whose target changes). True: every replica is written
/// to a fresh extent (a rewrite into another form).
/// </param>
internal readonly record struct ChunkPlan(int ExtentBytes, int SourceOffset, bool RewriteAll)
{
    /// <summary>A plain move of a chunk of this size: same bytes, replicas that stay are not copied.</summary>
    public static ChunkPlan Move(int chunkSize) => new(chunkSize, 0, false);
}

/// <summary>
/// What a <see cref="MigrationLoop"/> does to each chunk: the one thing a data-moving or rewriting
/// action supplies (docs/migration.md). The loop visits every mapped chunk in (image, chunk) order
/// and, for each, under the chunk's exclusive hold:
/// <list type="number">
/// <item><see cref="Plan"/>: nothing to do (the chunk is where and as it should be), or the
/// target of each destination replica and the extent size.</item>
/// <item>The loop reserves the destination extents, rents one DMA buffer of
/// <see cref="ChunkPlan.ExtentBytes"/> and reads the chunk into it at
/// <see cref="ChunkPlan.SourceOffset"/>, verified against the map (a bad replica is reported and
/// repaired from a good one; none good leaves the chunk where it is).</item>
/// <item><see cref="Produce"/> turns the buffer into the destination extent's bytes in place and
/// returns the checksum the map records for each destination replica.</item>
/// <item><see cref="Verify"/> checks the bytes about to be written (and, with
/// <see cref="MigrationOptions.ReadBack"/>, each destination as read back) against that checksum.</item>
/// <item>The loop writes every new destination extent from the buffer and switches the map with
/// <see cref="SwitchRecord"/> (ChunkMover's conditional switch); the source extents are freed
/// once the switch is durable.</item>
/// </list>
/// Methods are called from several chunk tasks at once and must not keep per-chunk state.
/// </summary>
internal interface IChunkTransform
{
    /// <summary>
    /// How many replicas the chunk has after the transform: as many as now for a move or a rewrite,
    /// another count for a replication-factor change or a reintegration that refills a chunk.
    /// </summary>
    int ReplicasAfter(in ChunkSource chunk) => chunk.Location.Replicas.Length;

    /// <summary>
    /// Decides for one chunk. Returns false when it needs nothing. Else fills
    /// <paramref name="targets"/> (<see cref="ReplicasAfter"/> long) with the target of each
    /// destination replica, distinct, and says how in <paramref name="plan"/>.
    /// </summary>
    bool Plan(in ChunkSource chunk, Span<int> targets, out ChunkPlan plan);

    /// <summary>
    /// Makes the destination extent's bytes in <paramref name="extent"/> (<see cref="ChunkPlan.ExtentBytes"/>
    /// long), whose bytes [SourceOffset, SourceOffset + ChunkSize) hold the verified chunk; returns the
    /// checksum the map records for every destination replica. A move returns the source's.
    /// </summary>
    uint Produce(in ChunkSource chunk, Span<byte> extent);

    /// <summary>Whether <paramref name="extent"/> is what the map will record for <paramref name="destination"/>.</summary>
    bool Verify(in ChunkSource chunk, Replica destination, ReadOnlySpan<byte> extent);

    /// <summary>The record that maps the chunk to <paramref name="destination"/> (a ChunkMap for a move).</summary>
    MetaRecord SwitchRecord(in ChunkSource chunk, Replica[] destination);
}

/// <summary>
/// A plain move: chunks whose replicas are not on the targets a placement names are copied there,
/// unchanged (placement changes, and later rebuild and extension). Replicas already on one of the
/// chunk's new targets stay where they are; the others go to the targets left over, in replica order.
/// With <paramref name="replicas"/> (a function of the chunk's current count) a chunk also gets
/// more replicas (copied from a verified one) or fewer (the extra ones are dropped and freed).
/// </summary>
internal sealed class PlacementMove(IPlacement placement, int targetCount, Func<int, int>? replicas = null) : IChunkTransform
{
    public int ReplicasAfter(in ChunkSource chunk) => replicas?.Invoke(chunk.Location.Replicas.Length) ?? chunk.Location.Replicas.Length;

    public bool Plan(in ChunkSource chunk, Span<int> targets, out ChunkPlan plan)
    {
        // A chunk with a block table (layout 3) moves with it: the table is rebuilt in front of the
        // verified chunk, byte for byte the source's (it is a function of image, chunk and data).
        plan = chunk.Location.Blocks
            ? new ChunkPlan(ChunkChecksum.ExtentLength(chunk.ChunkSize, blocks: true), ChunkChecksum.TableSize, RewriteAll: false)
            : ChunkPlan.Move(chunk.ChunkSize);
        placement.Targets(chunk.Image, chunk.Chunk, targetCount, targets);
        var now = chunk.Location.Replicas;
        bool same = now.Length == targets.Length;
        foreach (var r in now)
            same &= targets.Contains(r.Target);
        return !same;
    }

    public uint Produce(in ChunkSource chunk, Span<byte> extent) => chunk.Location.Blocks
        ? ChunkChecksum.BuildTable(chunk.Image, chunk.Chunk, extent.Slice(ChunkChecksum.TableSize, chunk.ChunkSize), extent[..ChunkChecksum.TableSize])
        : chunk.Location.Replicas[0].Crc;

    public bool Verify(in ChunkSource chunk, Replica destination, ReadOnlySpan<byte> extent) => chunk.Location.Blocks
        ? ChunkChecksum.VerifyExtent(destination, chunk.Image, chunk.Chunk, chunk.ChunkSize, extent).Ok
        : ChunkChecksum.Verify(destination, chunk.ChunkSize, 0, extent).Ok;

    public MetaRecord SwitchRecord(in ChunkSource chunk, Replica[] destination) =>
        MetaRecords.ChunkMap(chunk.Image, chunk.Chunk, destination, chunk.Location.Blocks);
}

/// <summary>
/// A rebuild's move: the inner move for chunks with a copy on a target that is not excluded; a chunk
/// whose every copy was on excluded targets is lost and left alone (reads of it fail), and a chunk is
/// never given more replicas than there are targets left.
/// </summary>
internal sealed class SurvivorMove(Pool pool, IChunkTransform inner) : IChunkTransform
{
    public int ReplicasAfter(in ChunkSource chunk) => inner.ReplicasAfter(chunk);

    public bool Plan(in ChunkSource chunk, Span<int> targets, out ChunkPlan plan)
    {
        plan = default;
        bool survives = false;
        foreach (var r in chunk.Location.Replicas)
            survives |= !pool.IsExcluded(r.Target);
        if (!survives || targets.Length > pool.LiveTargets || targets.Length == 0)
            return false;
        return inner.Plan(chunk, targets, out plan);
    }

    public uint Produce(in ChunkSource chunk, Span<byte> extent) => inner.Produce(chunk, extent);

    public bool Verify(in ChunkSource chunk, Replica destination, ReadOnlySpan<byte> extent) => inner.Verify(chunk, destination, extent);

    public MetaRecord SwitchRecord(in ChunkSource chunk, Replica[] destination) => inner.SwitchRecord(chunk, destination);
}
