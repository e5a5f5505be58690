using System.Buffers.Binary;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Fuzz;

/// <summary>
/// Harnesses of the on-disk decoders, each called as opening a pool calls it. Every harness runs
/// the input as read from the device, then again with its CRCs made right (and, for the log, its
/// sequence numbers), so the fuzzer reaches the fields behind the checksums.
/// </summary>
public static class StoreHarnesses
{
    /// <summary>The pool id the checkpoint and log seeds are written for.</summary>
    public static readonly Guid Pool = new("5d1b8a3c-0f4e-4b6a-9c2d-7e8f90a1b2c3");

    /// <summary>Block size the harnesses assume (the smallest a target may have).</summary>
    public const int BlockSize = 512;

    public static readonly IReadOnlyDictionary<string, FuzzTarget> All = new Dictionary<string, FuzzTarget>
    {
        ["superblock"] = Superblock,
        ["shard-header"] = ShardHeaderCopy,
        ["checkpoint"] = CheckpointSlot,
        ["wal"] = Wal,
        ["block-table"] = BlockTable,
        ["wal-v2"] = WalV2,
    };

    /// <summary>
    /// One block-checksummed extent as a read finds it (layout 3: a 4 KiB block table, then the chunk),
    /// checked the way ChunkIo and replay check it: against a map CRC that does not match, then against
    /// the CRC of the table itself (the map agreeing), so the identity and block checks run. The chunk
    /// size is the one the table's block count implies, as a power of two from 8 KiB to 1 MiB.
    /// </summary>
    public static string BlockTable(ReadOnlySpan<byte> input)
    {
        var table = FuzzHarness.Fit(input, ChunkChecksum.TableSize);
        int n = BinaryPrimitives.ReadUInt16LittleEndian(table.AsSpan(6));
        int chunkSize = (int)Math.Clamp(System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(n, 1) * ChunkChecksum.BlockSize), 8192u, 1u << 20);
        var extent = FuzzHarness.Fit(input, ChunkChecksum.TableSize + chunkSize);
        uint image = BinaryPrimitives.ReadUInt32LittleEndian(table.AsSpan(8));
        long chunk = BinaryPrimitives.ReadInt64LittleEndian(table.AsSpan(12));
        uint own = Crc32C.Compute(table);
        return CheckExtent(new Replica(0, 0, ~own), image, chunk, chunkSize, extent) + "\n" + CheckExtent(new Replica(0, 0, own), image, chunk, chunkSize, extent);
    }

    private static string CheckExtent(Replica r, uint image, long chunk, int chunkSize, byte[] extent)
    {
        var v = ChunkChecksum.VerifyExtent(r, image, chunk, chunkSize, extent);
        return v.Ok ? $"verified: {chunkSize / ChunkChecksum.BlockSize} blocks of image {image} chunk {chunk}" : $"mismatch: {v.What}";
    }

    /// <summary>One target superblock copy (HeaderCopies.ReadAsync → TargetSuperblock.Decode).</summary>
    public static string Superblock(ReadOnlySpan<byte> input)
    {
        var raw = input.ToArray();
        var sealedCopy = FuzzHarness.Fit(input, HeaderCopies.CopySize);
        HeaderCopies.Seal(sealedCopy);
        return FuzzHarness.Step(() => DecodeSuperblock(raw)) + "\n" + FuzzHarness.Step(() => DecodeSuperblock(sealedCopy));
    }

    private static string DecodeSuperblock(byte[] copy)
    {
        var sb = TargetSuperblock.Decode(copy, out string? problem);
        if (sb == null)
            return $"invalid: {problem}";
        // What a pool create does with a decoded superblock: find room for a shard.
        sb.FindFreeExtent(TargetSuperblock.ExtentAlignment, sb.Capacity);
        return $"target {sb.TargetIndex} of {sb.TargetCount}, {sb.Extents.Count} extent(s)";
    }

    /// <summary>One shard header copy (ShardHeader.Decode, then the region checks PoolOpener makes).</summary>
    public static string ShardHeaderCopy(ReadOnlySpan<byte> input)
    {
        var raw = input.ToArray();
        var sealedCopy = FuzzHarness.Fit(input, HeaderCopies.CopySize);
        HeaderCopies.Seal(sealedCopy);
        return FuzzHarness.Step(() => DecodeShardHeader(raw)) + "\n" + FuzzHarness.Step(() => DecodeShardHeader(sealedCopy));
    }

    private static string DecodeShardHeader(byte[] copy)
    {
        var h = ShardHeader.Decode(copy, out string? problem);
        if (h == null)
            return $"invalid: {problem}";
        string? regions = h.CheckRegions(BlockSize) ?? h.CheckRegions(4096);
        return regions == null ? $"valid shard of pool '{h.Label}'" : $"damaged: {regions}";
    }

    /// <summary>
    /// A checkpoint slot (PoolOpener.SlotPayloadLength, then DecodeSlot: header, payload CRC,
    /// PoolStateCodec.Deserialize). The slot is the input rounded up to whole blocks.
    /// </summary>
    public static string CheckpointSlot(ReadOnlySpan<byte> input)
    {
        int slotLength = (int)DeviceIo.AlignUp(Math.Max(input.Length, 1), BlockSize);
        var raw = FuzzHarness.Fit(input, slotLength);
        var fixedUp = FuzzHarness.Fit(input, slotLength);
        // The fixed-up copy: header CRC and (when the announced payload fits) payload CRC made right,
        // for the pool and sequence the slot names.
        long payloadLength = BinaryPrimitives.ReadInt64LittleEndian(fixedUp.AsSpan(32));
        if (payloadLength >= 0 && payloadLength <= slotLength - Checkpoint.HeaderSize)
            BinaryPrimitives.WriteUInt32LittleEndian(fixedUp.AsSpan(40), Crc32C.Compute(fixedUp.AsSpan(Checkpoint.HeaderSize, (int)payloadLength)));
        BinaryPrimitives.WriteUInt32LittleEndian(fixedUp.AsSpan(60), Crc32C.Compute(fixedUp.AsSpan(0, 60)));
        var slotPool = new Guid(fixedUp.AsSpan(44, 16));
        ulong slotSeq = BinaryPrimitives.ReadUInt64LittleEndian(fixedUp.AsSpan(16));
        return FuzzHarness.Step(() => DecodeCheckpoint(raw, Pool, 7))
            + "\n" + FuzzHarness.Step(() => DecodeCheckpoint(fixedUp, slotPool, slotSeq));
    }

    private static string DecodeCheckpoint(byte[] slot, Guid pool, ulong seq)
    {
        var h = new ShardHeader { PoolId = pool, CheckpointLength = slot.Length, CheckpointSeq = seq, ActiveCheckpoint = 0 };
        var first = slot.AsSpan(0, (int)Math.Min(h.CheckpointLength, 64 * 1024));
        long payloadLength = PoolOpener.SlotPayloadLength(first, h, pool);
        // The opener reads the header and payload rounded up to whole blocks; the slot holds them.
        var whole = slot.AsSpan(0, (int)DeviceIo.AlignUp(Checkpoint.HeaderSize + payloadLength, BlockSize));
        var state = PoolOpener.DecodeSlot(whole, payloadLength, h);
        PoolOpener.CheckReplayed(state);
        return $"{state.Containers.Count} container(s), {state.Images.Count} image(s), {state.Images.Values.Sum(i => i.Chunks.Count)} chunk(s)";
    }

    /// <summary>
    /// A whole log image from head 0 after a checkpoint at sequence 0 (PoolOpener.ReadLog), each
    /// record then applied as replay applies it (a tail chunk map is parsed for verification first).
    /// </summary>
    public static string Wal(ReadOnlySpan<byte> input)
    {
        if (input.Length == 0)
            return "empty";
        var raw = input.ToArray();
        var fixedUp = input.ToArray();
        Reseal(fixedUp);
        return FuzzHarness.Step(() => ReplayLog(raw)) + "\n" + FuzzHarness.Step(() => ReplayLog(fixedUp));
    }

    /// <summary>Gives each record (as far as its length field frames it) the next sequence and a right CRC.</summary>
    private static void Reseal(byte[] wal)
    {
        uint seed = WalFormat.Seed(Pool, 0);
        ulong seq = 1;
        for (int pos = 0; pos + WalFormat.HeaderSize <= wal.Length;)
        {
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(wal.AsSpan(pos));
            if (len < WalFormat.HeaderSize || len % 8 != 0 || len > wal.Length - pos)
                return;
            BinaryPrimitives.WriteUInt64LittleEndian(wal.AsSpan(pos + 8), seq++);
            BinaryPrimitives.WriteUInt32LittleEndian(wal.AsSpan(pos + 4), Crc32C.Compute(wal.AsSpan(pos + 8, (int)len - 8), seed));
            pos += (int)len;
        }
    }

    /// <summary>
    /// A whole WAL v2 log image from head 0 after a checkpoint at sequence 0 (PoolOpener.ReadLog with a
    /// header that says v2: checksummed batches), each record then applied as replay applies it.
    /// </summary>
    public static string WalV2(ReadOnlySpan<byte> input)
    {
        if (input.Length == 0)
            return "empty";
        var raw = input.ToArray();
        var fixedUp = input.ToArray();
        ResealV2(fixedUp);
        return FuzzHarness.Step(() => ReplayLog(raw, WalFormatV2.Format)) + "\n" + FuzzHarness.Step(() => ReplayLog(fixedUp, WalFormatV2.Format));
    }

    /// <summary>Gives each batch (as far as its span and body fields frame it) the magic, the next sequence and a right CRC.</summary>
    private static void ResealV2(byte[] wal)
    {
        uint seed = WalFormatV2.Seed(Pool, 0);
        ulong seq = 1;
        for (int pos = 0; pos + WalFormatV2.HeaderSize <= wal.Length;)
        {
            uint span = BinaryPrimitives.ReadUInt32LittleEndian(wal.AsSpan(pos + 24));
            uint body = BinaryPrimitives.ReadUInt32LittleEndian(wal.AsSpan(pos + 28));
            if (span < WalFormatV2.HeaderSize || span % 8 != 0 || span > wal.Length - pos || body > span - WalFormatV2.HeaderSize)
                return;
            int records = 0;
            var b = wal.AsSpan(pos + WalFormatV2.HeaderSize, (int)body);
            while (!b.IsEmpty && WalFormatV2.TryReadRecord(b, out _, out _, out int at, out int length))
            {
                records++;
                b = b[(at + length)..];
            }
            var batch = wal.AsSpan(pos, (int)span);
            WalFormatV2.Seal(batch, seed, seq, BinaryPrimitives.ReadUInt64LittleEndian(batch[16..]), (int)span, (int)body);
            seq += 1 + (ulong)records;
            pos += (int)span;
        }
    }

    private static string ReplayLog(byte[] wal, uint format = 1)
    {
        var h = new ShardHeader { PoolId = Pool, WalLength = wal.Length, WalHead = 0, CheckpointSeq = 0, WalEpoch = 0, WalFormat = format };
        var (records, tail, nextSeq, durable) = PoolOpener.ReadLog(wal, h, Pool);
        // The state a pool's checkpoint holds at least (the log may rename it).
        var state = new PoolState { Props = { ["label"] = "p1", ["rf"] = "1" } };
        foreach (var r in records)
        {
            if (r.Seq > durable && r.Type is (ushort)MetaRecordType.ChunkMap or (ushort)MetaRecordType.ChunkMapBlocks)
                MetaRecords.ReadChunkMap(r.Payload);
            state.Apply(r);
        }
        state.LastSeq = nextSeq - 1;
        PoolOpener.CheckReplayed(state);
        tail = DeviceIo.AlignUp(tail, BlockSize) % h.WalLength;
        return $"{records.Count} record(s), tail {tail}, next sequence {nextSeq}, {state.Images.Count} image(s)";
    }
}
