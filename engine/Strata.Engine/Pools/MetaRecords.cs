using System.Buffers.Binary;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// Pool-service WAL record types (format v1; numbers are the contract, see
/// docs/format.md). Types 32..47 are the upgrade job's and the chunk-move's:
/// defined and applied now so that the upgrade issue needs no format break.
/// </summary>
public enum MetaRecordType : ushort
{
    PoolSetProp = 1,
    ContainerCreate = 2,
    ContainerDestroy = 3,
    ContainerSetProp = 4,
    ImageCreate = 5,
    ImageResize = 6,
    ImageRemove = 7,
    ChunkMap = 8,
    ChunkUnmap = 9,
    ImageSetProp = 10,
    ChunkUnmapRange = 11,
    /// <summary>Heads every log batch: every record with a sequence up to this one is durable, data included (docs/format.md).</summary>
    DurableThrough = 12,
    /// <summary>As ChunkMap, but each replica's extent is a 4 KiB block table plus the chunk (layout 3, docs/format.md "Per-block checksums").</summary>
    ChunkMapBlocks = 13,
    /// <summary>
    /// A deferred write (layout 6, docs/format.md "Deferred writes"): a ChunkMapBlocks mapping to the chunk's
    /// same extents with a new table CRC, plus the whole new block table and the blocks written, which are
    /// written in place once the record is durable, and again by replay.
    /// </summary>
    ChunkDeferred = 14,
    UpgradeJobBegin = 32,
    UpgradeJobCursor = 33,
    UpgradeJobEnd = 34,
    LayoutSet = 35,
    ChunkMoveBegin = 40,
    ChunkMoveCommit = 41,
    ChunkMoveAbort = 42,
}

/// <summary>A record waiting to be committed.</summary>
public sealed record MetaRecord(MetaRecordType Type, byte[] Payload, ushort Flags = 0)
{
    /// <summary>Set only by PoolLog's pooled commits, which reuse their record once its round is done.</summary>
    public MetaRecordType Type { get; internal set; } = Type;

    public byte[] Payload { get; internal set; } = Payload;

    /// <summary>
    /// A client write's new mapping, made for it (from the pool's spares) with the replicas the payload encodes:
    /// the state installs this object itself (PoolState.Apply(MetaRecord, ulong)), which then clears it.
    /// </summary>
    internal ChunkMap? Map { get; set; }
}

/// <summary>Builders for each record's payload (the layouts Apply reads).</summary>
public static class MetaRecords
{
    public static MetaRecord PoolSetProp(string name, string value) =>
        new(MetaRecordType.PoolSetProp, new MetaWriter().Str(name).Str(value).ToArray());

    public static MetaRecord ContainerCreate(uint id, string label, uint createdLayout) =>
        new(MetaRecordType.ContainerCreate, new MetaWriter().U32(id).Str(label).U32(createdLayout).ToArray());

    public static MetaRecord UpgradeJobBegin(ulong job, uint from, uint to) =>
        new(MetaRecordType.UpgradeJobBegin, new MetaWriter().U64(job).U32(from).U32(to).ToArray());

    public static MetaRecord UpgradeJobCursor(ulong job, uint action, ulong cursor) =>
        new(MetaRecordType.UpgradeJobCursor, new MetaWriter().U64(job).U32(action).U64(cursor).ToArray());

    public static MetaRecord UpgradeJobEnd(ulong job, UpgradeJobState state, string? reason) =>
        new(MetaRecordType.UpgradeJobEnd, reason == null
            ? new MetaWriter().U64(job).Byte((byte)state).ToArray()
            : new MetaWriter().U64(job).Byte((byte)state).Str(reason).ToArray());

    public static MetaRecord LayoutSet(uint version, ulong compat, ulong roCompat, ulong incompat) =>
        new(MetaRecordType.LayoutSet, new MetaWriter().U32(version).U64(compat).U64(roCompat).U64(incompat).ToArray());

    public static MetaRecord ContainerDestroy(uint id) =>
        new(MetaRecordType.ContainerDestroy, new MetaWriter().U32(id).ToArray());

    public static MetaRecord ContainerSetProp(uint id, string name, string value) =>
        new(MetaRecordType.ContainerSetProp, new MetaWriter().U32(id).Str(name).Str(value).ToArray());

    public static MetaRecord ImageCreate(uint id, uint container, string label, long size, int chunkSize) =>
        new(MetaRecordType.ImageCreate, new MetaWriter().U32(id).U32(container).Str(label).I64(size).U32((uint)chunkSize).ToArray());

    public static MetaRecord ImageResize(uint id, long size) =>
        new(MetaRecordType.ImageResize, new MetaWriter().U32(id).I64(size).ToArray());

    public static MetaRecord ImageRemove(uint id) =>
        new(MetaRecordType.ImageRemove, new MetaWriter().U32(id).ToArray());

    public static MetaRecord ImageSetProp(uint id, string name, string value) =>
        new(MetaRecordType.ImageSetProp, new MetaWriter().U32(id).Str(name).Str(value).ToArray());

    /// <summary>The per-write record, encoded straight into its payload.</summary>
    /// <param name="blocks">The extents hold a block table before the data: record 13 (ChunkMapBlocks) instead of 8.</param>
    public static MetaRecord ChunkMap(uint image, long chunk, Replica[] replicas, bool blocks = false)
    {
        var b = new byte[ChunkMapLength(replicas)];
        EncodeChunkMap(b, image, chunk, replicas);
        return new(blocks ? MetaRecordType.ChunkMapBlocks : MetaRecordType.ChunkMap, b);
    }

    /// <summary>
    /// A client write's record for <paramref name="map"/>, a mapping made for it (ChunkMapSpares.Rent) that
    /// nothing else refers to: once applied, the state installs that object itself (no map per write).
    /// </summary>
    internal static MetaRecord ChunkMap(uint image, long chunk, ChunkMap map)
    {
        var record = ChunkMap(image, chunk, map.Replicas, map.Blocks);
        record.Map = map;
        return record;
    }

    /// <summary>A ChunkMap payload's length.</summary>
    public static int ChunkMapLength(Replica[] replicas) => 4 + 8 + ReplicasLength(replicas);

    /// <summary>Encodes a ChunkMap payload into <paramref name="dest"/>, <see cref="ChunkMapLength"/> bytes.</summary>
    public static void EncodeChunkMap(Span<byte> dest, uint image, long chunk, Replica[] replicas)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(dest, image);
        BinaryPrimitives.WriteInt64LittleEndian(dest[4..], chunk);
        EncodeReplicas(dest[12..], replicas);
    }

    /// <summary>Bytes of a ChunkDeferred payload: the ChunkMap payload, then u32 first block, u32 block count, u32 table entries, the entries, the blocks.</summary>
    public static int ChunkDeferredLength(int replicas, int tableEntries, int blocks) =>
        4 + 8 + 1 + 14 * replicas + 12 + 4 * tableEntries + ChunkChecksum.BlockSize * blocks;

    /// <summary>
    /// Encodes a ChunkDeferred payload's head into <paramref name="dest"/> (of <see cref="ChunkDeferredLength"/>
    /// bytes): the mapping, the block range and <paramref name="crcs"/>, the chunk's whole new table; returns
    /// where its blocks go (the caller fills them).
    /// </summary>
    public static int EncodeChunkDeferred(Span<byte> dest, uint image, long chunk, Replica[] replicas, int firstBlock, int blocks, ReadOnlySpan<uint> crcs)
    {
        EncodeChunkMap(dest, image, chunk, replicas);
        int at = ChunkMapLength(replicas);
        BinaryPrimitives.WriteInt32LittleEndian(dest[at..], firstBlock);
        BinaryPrimitives.WriteInt32LittleEndian(dest[(at + 4)..], blocks);
        BinaryPrimitives.WriteInt32LittleEndian(dest[(at + 8)..], crcs.Length);
        at += 12;
        foreach (uint c in crcs)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(dest[at..], c);
            at += 4;
        }
        if (dest.Length - at != ChunkChecksum.BlockSize * blocks)
            throw new ArgumentException($"a deferred write's payload of {dest.Length} bytes does not hold {blocks} blocks after its head of {at}", nameof(dest));
        return at;
    }

    /// <summary>
    /// A ChunkDeferred payload's fields, checked against each other (a record that passes its CRC but does not
    /// hold what it says is corrupt metadata): the mapping, the first block and count, the table's CRCs, and
    /// where the blocks start in the payload.
    /// </summary>
    public static (uint Image, long Chunk, Replica[] Replicas, int FirstBlock, int Blocks, uint[] Crcs, int BlocksAt) ReadChunkDeferred(ReadOnlySpan<byte> payload)
    {
        var m = new MetaReader(payload);
        uint image = m.U32();
        long chunk = m.I64();
        var replicas = ReadReplicas(ref m);
        int first = (int)m.U32(), blocks = (int)m.U32(), entries = (int)m.U32();
        // Differences, not sums: counts near 2^31 must not wrap into range.
        if (entries <= 0 || entries > m.Remaining / 4 || first < 0 || blocks <= 0 || first > entries - blocks
            || (long)ChunkChecksum.BlockSize * blocks != m.Remaining - 4L * entries)
            throw new CorruptMetadataException($"a deferred write's record for image {image} chunk {chunk} does not hold what it says (blocks {first}+{blocks} of {entries}, {payload.Length} bytes)");
        var crcs = new uint[entries];
        for (int i = 0; i < entries; i++)
            crcs[i] = m.U32();
        return (image, chunk, replicas, first, blocks, crcs, payload.Length - m.Remaining);
    }

    public static MetaRecord ChunkUnmap(uint image, long chunk) =>
        new(MetaRecordType.ChunkUnmap, new MetaWriter().U32(image).I64(chunk).ToArray());

    public static MetaRecord ChunkUnmapRange(uint image, long first, long count) =>
        new(MetaRecordType.ChunkUnmapRange, new MetaWriter().U32(image).I64(first).I64(count).ToArray());

    public static MetaRecord DurableThrough(ulong seq)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, seq);
        return new(MetaRecordType.DurableThrough, b);
    }

    /// <summary>Bytes a replica list takes: a count byte, then 14 bytes each.</summary>
    public static int ReplicasLength(Replica[] replicas) => 1 + 14 * replicas.Length;

    /// <summary>Encodes a replica list (count byte; u16 target, i64 offset, u32 CRC each) at the start of <paramref name="dest"/>; returns its length.</summary>
    public static int EncodeReplicas(Span<byte> dest, Replica[] replicas)
    {
        dest[0] = (byte)replicas.Length;
        int at = 1;
        foreach (var r in replicas)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(dest[at..], r.Target);
            BinaryPrimitives.WriteInt64LittleEndian(dest[(at + 2)..], r.Offset);
            BinaryPrimitives.WriteUInt32LittleEndian(dest[(at + 10)..], r.Crc);
            at += 14;
        }
        return at;
    }

    /// <summary>The fields of a ChunkMap record's payload (image, chunk index, replicas).</summary>
    public static (uint Image, long Chunk, Replica[] Replicas) ReadChunkMap(ReadOnlySpan<byte> payload)
    {
        var m = new MetaReader(payload);
        uint image = m.U32();
        long chunk = m.I64();
        return (image, chunk, ReadReplicas(ref m));
    }

    /// <summary>A ChunkMap (or ChunkMapBlocks) payload's replica count, read in place.</summary>
    public static int ChunkMapReplicaCount(ReadOnlySpan<byte> payload) => payload[12];

    /// <summary>The target of replica <paramref name="i"/> of a ChunkMap (or ChunkMapBlocks) payload, read in place.</summary>
    public static int ChunkMapReplicaTarget(ReadOnlySpan<byte> payload, int i) => BinaryPrimitives.ReadUInt16LittleEndian(payload[(13 + 14 * i)..]);

    public static Replica[] ReadReplicas(ref MetaReader r)
    {
        int n = r.Byte();
        var list = new Replica[n];
        for (int i = 0; i < n; i++)
            list[i] = new Replica(r.U16(), r.I64(), r.U32());
        return list;
    }
}

/// <summary>One copy of a chunk: target index, offset in that shard's data area, CRC32C of the chunk (of its block table when the chunk has one).</summary>
public readonly record struct Replica(ushort Target, long Offset, uint Crc);

/// <summary>
/// Where a chunk lives; Moving is the second location while a data-moving upgrade copies it. Blocks: each
/// extent is a 4 KiB block table followed by the chunk, and each replica's CRC is the table's (layout 3).
/// </summary>
/// <remarks>
/// Immutable once in an image's <see cref="ChunkTable"/>: a record replaces it. A client write's map is
/// taken from the pool's spares (ChunkMapSpares) and filled before it is installed; the map it replaces
/// goes back there once no reader can hold it (docs/format.md, "Chunk maps in memory").
/// </remarks>
public sealed record ChunkMap(Replica[] Replicas, Replica[]? Moving = null, bool Blocks = false)
{
    public Replica[] Replicas { get; internal set; } = Replicas;

    public bool Blocks { get; internal set; } = Blocks;

    /// <summary>
    /// The queue ordinal of the writeback commit that applied this mapping (PoolLog.CommitWriteback), or 0
    /// (durable, replayed, or a checkpoint's): while no flush covers it, its extents may be overwritten in
    /// place (PoolLog.TryCommitInPlace, docs/format.md "Overwriting a writeback extent in place").
    /// </summary>
    internal long WritebackOrdinal { get; set; }

    /// <summary>
    /// The queue ordinal of the writeback commit that applied this mapping, overwritable or not (a chunk switch's
    /// too), or 0: a durable commit's, replayed or a checkpoint's. A deferred write needs its base durable
    /// (PoolLog.IsDurableBase): replay applies it over whatever mapping the chunk then has.
    /// </summary>
    internal long CommitOrdinal { get; set; }

    /// <summary>
    /// Where in the chunk the writeback deferred write that made this mapping ended (bytes), or 0: a write that
    /// starts there continues a run of small writes into the chunk (ChunkIo.MayDefer copies it on write once rather
    /// than defer each write of the run behind the last one's round).
    /// </summary>
    internal int DeferredEnd { get; set; }

    /// <summary>Handed out to a caller that may keep it, or installed by anything but a client write: never reused (ChunkTable).</summary>
    internal bool Escaped { get; set; }

    /// <summary>Its table's install stamp (ChunkTable.Install).</summary>
    internal long Born { get; set; }

    /// <summary>Replaced by a client write's map while nothing else could hold it: may be reused once its extents are freed.</summary>
    internal bool Reusable { get; set; }
}
