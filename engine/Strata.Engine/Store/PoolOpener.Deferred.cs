using Strata.Engine.Device;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// Replay's part of deferred writes (docs/format.md, "Deferred writes"): every ChunkDeferred record after
/// the checkpoint queues a rewrite of its table and blocks over the chunk's extents, since a durable record
/// says nothing of its in-place writes; before the pool takes I/O they are written in log order (a read-only
/// open serves them from memory instead, <see cref="Shard.Overlay"/>).
/// </summary>
internal static partial class PoolOpener
{
    /// <summary>One queued rewrite: the bytes for each extent of a chunk that is still the chunk's own.</summary>
    internal sealed class DeferredRewrite
    {
        public required uint Image { get; init; }
        public required long Chunk { get; init; }
        public required Replica[] Replicas { get; init; }
        /// <summary>Per replica: the extent has been the chunk's without a break since the record (else its rewrite is dropped).</summary>
        public required bool[] Live { get; init; }
        public required byte[] Table { get; init; }
        public required int From { get; init; }
        public required ReadOnlyMemory<byte> Blocks { get; init; }
    }

    /// <summary>
    /// The rewrites replay queued, in log order, and which of their extents are still the chunk's. An extent
    /// that leaves its chunk's mapping (a copy on write, a move's commit, an unmap, a resize or removal) may be
    /// freed and reused by a later record, so its rewrite is dropped for good from that record on, even if the
    /// chunk later maps the same extent again.
    /// </summary>
    internal sealed class DeferredRewrites
    {
        private readonly List<DeferredRewrite> _all = [];
        private readonly Dictionary<(uint Image, long Chunk), List<DeferredRewrite>> _byChunk = [];

        public IReadOnlyList<DeferredRewrite> All => _all;

        /// <summary>Queues the rewrite of a ChunkDeferred record just applied to <paramref name="state"/>.</summary>
        public void Add(PoolState state, WalRecord r)
        {
            var (image, chunk, replicas, first, blocks, crcs, blocksAt) = MetaRecords.ReadChunkDeferred(r.Payload);
            var img = state.Images[image];
            if (crcs.Length != img.ChunkSize / ChunkChecksum.BlockSize)
                throw new CorruptMetadataException($"WAL record {r.Seq}: a deferred write's table has {crcs.Length} entries for a {img.ChunkSize}-byte chunk");
            var table = new byte[ChunkChecksum.TableSize];
            uint crc = ChunkChecksum.WriteTable(image, chunk, crcs, table);
            if (replicas.Any(x => x.Crc != crc))
                throw new CorruptMetadataException($"WAL record {r.Seq}: a deferred write's table does not match the CRC its mapping names");
            var rewrite = new DeferredRewrite
            {
                Image = image, Chunk = chunk, Replicas = replicas, Live = replicas.Select(_ => true).ToArray(),
                Table = table, From = first * ChunkChecksum.BlockSize, Blocks = r.Payload.AsMemory(blocksAt, blocks * ChunkChecksum.BlockSize),
            };
            _all.Add(rewrite);
            if (!_byChunk.TryGetValue((image, chunk), out var list))
                _byChunk[(image, chunk)] = list = [];
            list.Add(rewrite);
        }

        /// <summary>After record <paramref name="r"/> was applied: drops the rewrites of extents it took from their chunk.</summary>
        public void AfterApply(PoolState state, WalRecord r)
        {
            if (_byChunk.Count == 0)
                return;
            switch ((MetaRecordType)r.Type)
            {
                case MetaRecordType.ChunkMap or MetaRecordType.ChunkMapBlocks or MetaRecordType.ChunkDeferred or MetaRecordType.ChunkUnmap
                    or MetaRecordType.ChunkMoveBegin or MetaRecordType.ChunkMoveCommit or MetaRecordType.ChunkMoveAbort:
                {
                    var m = new MetaReader(r.Payload);
                    Check(state, (m.U32(), m.I64()));
                    break;
                }
                case MetaRecordType.ChunkUnmapRange or MetaRecordType.ImageResize or MetaRecordType.ImageRemove:
                {
                    uint image = new MetaReader(r.Payload).U32();
                    foreach (var key in _byChunk.Keys.Where(k => k.Image == image).ToList())
                        Check(state, key);
                    break;
                }
            }
        }

        private void Check(PoolState state, (uint Image, long Chunk) key)
        {
            if (!_byChunk.TryGetValue(key, out var list))
                return;
            ChunkMap? map = state.Images.TryGetValue(key.Image, out var img) && img.Chunks.TryGetValue(key.Chunk, out var m) ? m : null;
            bool any = false;
            foreach (var w in list)
            {
                for (int i = 0; i < w.Replicas.Length; i++)
                    w.Live[i] &= map != null && (HoldsExtent(map.Replicas, w.Replicas[i]) || (map.Moving != null && HoldsExtent(map.Moving, w.Replicas[i])));
                any |= w.Live.Any(x => x);
            }
            if (!any)
                _byChunk.Remove(key);
        }

        /// <summary>Extents to rewrite, in log order: (target, extent offset, rewrite), skipping dropped ones and targets in <paramref name="skip"/>.</summary>
        public IEnumerable<(int Target, long Offset, DeferredRewrite Write)> Extents(Func<int, bool> skip)
        {
            foreach (var w in _all)
                for (int i = 0; i < w.Replicas.Length; i++)
                    if (w.Live[i] && !skip(w.Replicas[i].Target))
                        yield return (w.Replicas[i].Target, w.Replicas[i].Offset, w);
        }
    }

    /// <summary>Whether the chunk a ChunkDeferred payload names is mapped, with a block table, to exactly the extents it names.</summary>
    private static bool DeferredBaseHolds(PoolState state, byte[] payload)
    {
        var (image, chunk, replicas) = MetaRecords.ReadChunkMap(payload);
        if (!state.Images.TryGetValue(image, out var img) || !img.Chunks.TryGetValue(chunk, out var map) || !map.Blocks || map.Replicas.Length != replicas.Length)
            return false;
        return replicas.All(r => HoldsExtent(map.Replicas, r));
    }

    /// <summary>Whether one of <paramref name="replicas"/> is <paramref name="r"/>'s extent (target and offset, whatever its CRC).</summary>
    private static bool HoldsExtent(Replica[] replicas, Replica r) => replicas.Any(x => x.Target == r.Target && x.Offset == r.Offset);

    /// <summary>
    /// Writes the replayed deferred writes over their extents, in log order, before the pool takes I/O (the
    /// open's checkpoint, whose flush covers them, then moves the head past their records). Targets the
    /// replayed state excludes, or that cannot be read, are skipped. Returns the number of extents written.
    /// </summary>
    private static async Task<int> RewriteDeferredAsync(Shard[] shards, DeferredRewrites rewrites, Func<int, bool> skip)
    {
        int n = 0;
        foreach (var (t, offset, w) in rewrites.Extents(skip))
        {
            await ChunkIo.WriteTableAndBlocksAsync(shards[t], offset, w.From, w.Table, w.Blocks).ConfigureAwait(false);
            n++;
        }
        return n;
    }

    /// <summary>A read-only open: the shards serve the replayed deferred writes from memory, over what the device holds.</summary>
    private static void OverlayDeferred(Shard[] shards, DeferredRewrites rewrites, Func<int, bool> skip)
    {
        foreach (var (t, offset, w) in rewrites.Extents(skip))
        {
            var overlay = shards[t].Overlay ??= new DataOverlay();
            overlay.Add(offset, w.Table);
            overlay.Add(offset + ChunkChecksum.TableSize + w.From, w.Blocks);
        }
    }
}

/// <summary>
/// Bytes a read-only pool serves over its data area instead of the device's (replayed deferred writes that
/// could not be written: PoolOpener.OverlayDeferred), in log order: a later piece wins where they overlap.
/// </summary>
internal sealed class DataOverlay
{
    private readonly List<(long At, ReadOnlyMemory<byte> Bytes)> _pieces = [];

    public int Count => _pieces.Count;

    public void Add(long at, ReadOnlyMemory<byte> bytes) => _pieces.Add((at, bytes));

    /// <summary>Copies every piece's part in [<paramref name="at"/>, at + dest.Length) over <paramref name="dest"/>.</summary>
    public void Patch(long at, Span<byte> dest)
    {
        foreach (var (p, bytes) in _pieces)
        {
            long from = Math.Max(at, p), to = Math.Min(at + dest.Length, p + bytes.Length);
            if (from < to)
                bytes.Span.Slice((int)(from - p), (int)(to - from)).CopyTo(dest.Slice((int)(from - at), (int)(to - from)));
        }
    }
}
