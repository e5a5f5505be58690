using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>
/// The layout-3 action's transform (block_checksums, docs/format.md "Per-block checksums"): every
/// chunk above 4 KiB that has no block table yet is rewritten, on the targets its replicas are on,
/// as a table plus the chunk. The loop reads the chunk verified against its old per-chunk CRC (a bad
/// replica is repaired from a good one; none good is a RAS event and the chunk is left as it is,
/// counted in the action's result), the table is built from the verified bytes, and the switch maps
/// the chunk with a ChunkMapBlocks record only if it was not written since: client writes write the
/// table form from the moment the job reaches this action, so a chunk written since needs nothing.
/// </summary>
internal sealed class BlockTableRewrite : IChunkTransform
{
    public static readonly BlockTableRewrite Instance = new();

    /// <summary>The catalog's action of feature block_checksums (layout 3): the migration loop with this transform.</summary>
    public static readonly MigrationAction Action = new(_ => Instance);

    public bool Plan(in ChunkSource chunk, Span<int> targets, out ChunkPlan plan)
    {
        plan = new ChunkPlan(ChunkChecksum.ExtentLength(chunk.ChunkSize, blocks: true), ChunkChecksum.TableSize, RewriteAll: true);
        if (chunk.Location.Blocks || !ChunkChecksum.TakesTable(chunk.ChunkSize))
            return false;
        var replicas = chunk.Location.Replicas;
        for (int r = 0; r < targets.Length; r++)
            targets[r] = replicas[r].Target;
        return true;
    }

    public uint Produce(in ChunkSource chunk, Span<byte> extent) =>
        ChunkChecksum.BuildTable(chunk.Image, chunk.Chunk, extent.Slice(ChunkChecksum.TableSize, chunk.ChunkSize), extent[..ChunkChecksum.TableSize]);

    public bool Verify(in ChunkSource chunk, Replica destination, ReadOnlySpan<byte> extent) =>
        ChunkChecksum.VerifyExtent(destination, chunk.Image, chunk.Chunk, chunk.ChunkSize, extent).Ok;

    public MetaRecord SwitchRecord(in ChunkSource chunk, Replica[] destination) =>
        MetaRecords.ChunkMap(chunk.Image, chunk.Chunk, destination, blocks: true);
}
