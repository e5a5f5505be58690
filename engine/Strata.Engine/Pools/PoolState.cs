using Strata.Engine.Store;

namespace Strata.Engine.Pools;

public sealed class ContainerMeta
{
    public uint Id { get; init; }
    public string Label { get; set; } = "";
    public Dictionary<string, string> Props { get; } = new(StringComparer.Ordinal);

    /// <summary>Read-only container property: the pool layout the container was created at.</summary>
    public const string CreatedLayoutProp = "layout_version";

    public uint CreatedLayout => Props.TryGetValue(CreatedLayoutProp, out var v) ? uint.Parse(v, System.Globalization.CultureInfo.InvariantCulture) : 1;
}

public sealed class ImageMeta
{
    public uint Id { get; init; }
    public uint Container { get; init; }
    public string Label { get; set; } = "";
    public long Size { get; set; }
    public int ChunkSize { get; init; }
    public Dictionary<string, string> Props { get; } = new(StringComparer.Ordinal);
    public ChunkTable Chunks { get; } = new();

    /// <summary>
    /// A chunk size read from a record or checkpoint: the engine only creates powers of two, and replay
    /// divides by it, so anything else is corrupt metadata.
    /// </summary>
    public static int ReadChunkSize(uint value, uint image)
    {
        if (value == 0 || value > int.MaxValue || (value & (value - 1)) != 0)
            throw new CorruptMetadataException($"image {image} has chunk size {value}, which is not a power of two");
        return (int)value;
    }
}

/// <summary>An upgrade job's state byte (record 34, checkpoint section 4).</summary>
public enum UpgradeJobState : byte { NotStarted = 0, InProgress = 1, Completed = 2, Failed = 3 }

/// <summary>
/// An upgrade job's durable state: the chain from From to To, the index of the next
/// action to run and that action's cursor (how far it got), and why it failed.
/// </summary>
public sealed record UpgradeJobMeta(ulong Id, uint From, uint To, UpgradeJobState State, uint Action, ulong Cursor, string? Reason = null);

/// <summary>The layout a pool is at once an upgrade switched it (record 35); null = the headers' layout (never upgraded).</summary>
public sealed record LayoutMeta(uint Version, ulong Compat, ulong RoCompat, ulong Incompat);

/// <summary>
/// The pool-service metadata as a deterministic state machine: the same
/// records applied in the same order give the same state on every shard.
/// Callers validate before proposing; Apply only rejects what cannot be a
/// record this engine wrote (corruption or a newer engine).
/// </summary>
public sealed class PoolState
{
    public object Sync { get; } = new();
    public Dictionary<string, string> Props { get; } = new(StringComparer.Ordinal);
    public Dictionary<uint, ContainerMeta> Containers { get; } = new();
    public Dictionary<uint, ImageMeta> Images { get; } = new();
    public uint NextContainerId { get; set; } = 1;
    public uint NextImageId { get; set; } = 1;
    public UpgradeJobMeta? UpgradeJob { get; set; }
    public LayoutMeta? Layout { get; set; }
    /// <summary>Sequence of the last applied record.</summary>
    public ulong LastSeq { get; set; }

    /// <summary>The chunk's map now (null: unmapped), to a caller that may keep it; maps are immutable, a record replaces them.</summary>
    internal ChunkMap? ChunkAt(ImageMeta image, long index)
    {
        lock (Sync)
            return image.Chunks.TryGetValue(index, out var m) ? m : null;
    }

    /// <summary>Whether the chunk is mapped now; hands out no map, so none is kept from reuse (ChunkTable).</summary>
    internal bool IsMapped(ImageMeta image, long index)
    {
        lock (Sync)
            return image.Chunks.ContainsKey(index);
    }

    /// <summary>
    /// As <see cref="ChunkAt"/>, for the data path: the caller holds the chunk's lock and drops the reference
    /// before it releases it, so a write that supersedes the map later may reuse it (ChunkTable).
    /// </summary>
    internal ChunkMap? ChunkAtLocked(ImageMeta image, long index)
    {
        lock (Sync)
            return image.Chunks.GetLocked(index);
    }

    /// <summary>The maps of several chunks of one image, read at one instant, to a caller that may keep them.</summary>
    /// <param name="locked">
    /// The caller holds the chunks' locks and drops every map before it releases them (a multi-chunk read), so
    /// a write that supersedes one later may reuse it (ChunkTable).
    /// </param>
    internal ChunkMap?[] ChunksAt<T>(ImageMeta image, List<T> items, Func<T, long> index, bool locked = false)
    {
        var maps = new ChunkMap?[items.Count];
        lock (Sync)
            for (int i = 0; i < maps.Length; i++)
                maps[i] = locked ? image.Chunks.GetLocked(index(items[i])) : image.Chunks.TryGetValue(index(items[i]), out var m) ? m : null;
        return maps;
    }

    /// <summary>
    /// A live commit's record (the log's committer, a writeback commit): as <see cref="Apply(WalRecord)"/>,
    /// without a WalRecord per record, and a client write's chunk map that carries its new mapping
    /// (MetaRecords.ChunkMap(uint, long, ChunkMap)) installs that object: a write allocates no map here.
    /// </summary>
    internal void Apply(MetaRecord record, ulong seq)
    {
        if (record.Map is not { } map || record.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkMapBlocks or MetaRecordType.ChunkDeferred))
        {
            Apply(new WalRecord(seq, (ushort)record.Type, record.Flags, record.Payload));
            return;
        }
        System.Diagnostics.Debug.Assert(MetaRecords.ReadChunkMap(record.Payload).Replicas.AsSpan().SequenceEqual(map.Replicas), "an installed map is the one the payload encodes");
        System.Diagnostics.Debug.Assert(map.Blocks == (record.Type != MetaRecordType.ChunkMap) && map.Moving == null, "an installed map has the record's form");
        uint id = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(record.Payload);
        long chunk = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(record.Payload.AsSpan(4));
        var img = Images.TryGetValue(id, out var i) ? i : throw new CorruptMetadataException($"WAL record {seq} refers to unknown image {id}");
        // Installed once: the record lets go of it (a pooled record is reused for other writes).
        record.Map = null;
        img.Chunks.Install(chunk, map);
        LastSeq = seq;
    }

    public void Apply(WalRecord rec)
    {
        var r = new MetaReader(rec.Payload);
        switch ((MetaRecordType)rec.Type)
        {
            case MetaRecordType.PoolSetProp:
                Props[r.Str()] = r.Str();
                break;
            case MetaRecordType.ContainerCreate:
            {
                uint id = r.U32();
                var c = new ContainerMeta { Id = id, Label = r.Str() };
                // Containers remember the pool layout they were created at (absent = 1): features
                // of later layouts stay off for them (DAOS: new containers in old pools, and old
                // containers after an upgrade, do not get new features).
                if (r.Remaining >= 4)
                    c.Props[ContainerMeta.CreatedLayoutProp] = r.U32().ToString(System.Globalization.CultureInfo.InvariantCulture);
                Containers[id] = c;
                NextContainerId = Math.Max(NextContainerId, id + 1);
                break;
            }
            case MetaRecordType.ContainerDestroy:
                Containers.Remove(r.U32());
                break;
            case MetaRecordType.ContainerSetProp:
            {
                var c = Container(r.U32(), rec);
                string name = r.Str(), value = r.Str();
                if (name == "label")
                    c.Label = value;
                else
                    c.Props[name] = value;
                break;
            }
            case MetaRecordType.ImageCreate:
            {
                uint id = r.U32();
                Images[id] = new ImageMeta { Id = id, Container = r.U32(), Label = r.Str(), Size = r.I64(), ChunkSize = ImageMeta.ReadChunkSize(r.U32(), id) };
                NextImageId = Math.Max(NextImageId, id + 1);
                break;
            }
            case MetaRecordType.ImageResize:
            {
                var img = Image(r.U32(), rec);
                img.Size = r.I64();
                long chunks = SizeLimits.ChunkCount(img.Size, img.ChunkSize);
                foreach (var k in img.Chunks.Keys.Where(k => k >= chunks).ToList())
                    img.Chunks.Remove(k);
                break;
            }
            case MetaRecordType.ImageRemove:
                Images.Remove(r.U32());
                break;
            case MetaRecordType.ImageSetProp:
            {
                var img = Image(r.U32(), rec);
                string name = r.Str(), value = r.Str();
                if (name == "label")
                    img.Label = value;
                else
                    img.Props[name] = value;
                break;
            }
            case MetaRecordType.ChunkMap:
            case MetaRecordType.ChunkMapBlocks:
            {
                var img = Image(r.U32(), rec);
                long chunk = r.I64();
                // Made here, held by nothing else: a later client write may reuse it once it supersedes it.
                img.Chunks.Install(chunk, new ChunkMap(MetaRecords.ReadReplicas(ref r), null, rec.Type == (ushort)MetaRecordType.ChunkMapBlocks));
                break;
            }
            case MetaRecordType.ChunkDeferred:
            {
                // The mapping alone (the same extents, the new table's CRC); the blocks are the writer's, or replay's,
                // to write in place (replay checks the rest of the payload: PoolOpener.DeferredRewrites.Add).
                var (image, chunk, replicas) = MetaRecords.ReadChunkMap(rec.Payload);
                Image(image, rec).Chunks.Install(chunk, new ChunkMap(replicas, null, Blocks: true));
                break;
            }
            case MetaRecordType.ChunkUnmap:
            {
                var img = Image(r.U32(), rec);
                img.Chunks.Remove(r.I64());
                break;
            }
            case MetaRecordType.ChunkUnmapRange:
            {
                var img = Image(r.U32(), rec);
                long first = r.I64(), end = first + r.I64();
                foreach (var k in img.Chunks.Keys.Where(k => k >= first && k < end).ToList())
                    img.Chunks.Remove(k);
                break;
            }
            case MetaRecordType.ChunkMoveBegin:
            {
                var img = Image(r.U32(), rec);
                long chunk = r.I64();
                var dest = MetaRecords.ReadReplicas(ref r);
                if (img.Chunks.TryGetValue(chunk, out var m))
                    img.Chunks[chunk] = m with { Moving = dest };
                break;
            }
            case MetaRecordType.ChunkMoveCommit:
            case MetaRecordType.ChunkMoveAbort:
            {
                var img = Image(r.U32(), rec);
                long chunk = r.I64();
                if (img.Chunks.TryGetValue(chunk, out var m) && m.Moving != null)
                    img.Chunks[chunk] = rec.Type == (ushort)MetaRecordType.ChunkMoveCommit ? new ChunkMap(m.Moving, null, m.Blocks) : m with { Moving = null };
                break;
            }
            case MetaRecordType.DurableThrough:
                // Only replay reads it (PoolOpener: which records' data must be verified); no state.
                break;
            case MetaRecordType.UpgradeJobBegin:
                UpgradeJob = new UpgradeJobMeta(r.U64(), r.U32(), r.U32(), UpgradeJobState.InProgress, 0, 0);
                break;
            case MetaRecordType.UpgradeJobCursor:
            {
                ulong id = r.U64();
                if (UpgradeJob != null && UpgradeJob.Id == id)
                    UpgradeJob = UpgradeJob with { Action = r.U32(), Cursor = r.U64() };
                break;
            }
            case MetaRecordType.UpgradeJobEnd:
            {
                ulong id = r.U64();
                if (UpgradeJob != null && UpgradeJob.Id == id)
                {
                    var st = (UpgradeJobState)r.Byte();
                    UpgradeJob = UpgradeJob with { State = st, Reason = r.Remaining > 0 ? r.Str() : null };
                }
                break;
            }
            case MetaRecordType.LayoutSet:
                Layout = new LayoutMeta(r.U32(), r.U64(), r.U64(), r.U64());
                break;
            default:
                if ((rec.Flags & WalFormat.FlagSkippable) == 0)
                    throw new IncompatibleLayoutException($"WAL record {rec.Seq} has type {rec.Type}, unknown to this engine and not skippable; it was written by a newer engine");
                break;
        }
        LastSeq = rec.Seq;
    }

    private ContainerMeta Container(uint id, WalRecord rec) =>
        Containers.TryGetValue(id, out var c) ? c : throw new CorruptMetadataException($"WAL record {rec.Seq} refers to unknown container {id}");

    private ImageMeta Image(uint id, WalRecord rec) =>
        Images.TryGetValue(id, out var i) ? i : throw new CorruptMetadataException($"WAL record {rec.Seq} refers to unknown image {id}");
}
