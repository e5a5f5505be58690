using System.Buffers.Binary;
using System.Text;

namespace Strata.Engine.Store;

/// <summary>
/// The shard header (format v1): the first 8 KiB of a shard, two 4 KiB copies.
/// Offsets are frozen (docs/format.md): a shipped field never moves, new fields
/// go into the reserved bytes, guarded by a feature bit.
/// </summary>
public sealed record ShardHeader
{
    public const ulong Magic = 0x4853_4154_4152_5453; // "STRATASH" little-endian
    public const uint FormatVersion = 1;
    public const uint NoCheckpoint = uint.MaxValue;
    public const int MaxLabelBytes = 64;
    /// <summary>Bytes the two copies occupy at the start of the shard.</summary>
    public const long Size = 2 * HeaderCopies.CopySize;

    private const int OffMagic = 0, OffVersion = 8, OffLayout = 12, OffCompat = 16, OffRoCompat = 24, OffIncompat = 32,
        OffPool = 40, OffTarget = 56, OffIndex = 72, OffCount = 76, OffGeneration = 80, OffShardLength = 88,
        OffWal = 96, OffWalLength = 104, OffCkpt0 = 112, OffCkpt1 = 120, OffCkptLength = 128, OffData = 136, OffDataLength = 144,
        OffActiveSlot = 152, OffMinChunk = 156, OffCkptSeq = 160, OffWalHead = 168, OffCreated = 176, OffLabelLength = 184, OffLabel = 185, OffWalEpoch = 256, OffWalFormat = 264;

    public uint LayoutVersion { get; init; }
    public ulong Compat { get; init; }
    public ulong RoCompat { get; init; }
    public ulong Incompat { get; init; }
    public Guid PoolId { get; init; }
    public Guid TargetId { get; init; }
    public int TargetIndex { get; init; }
    public int TargetCount { get; init; }
    public ulong Generation { get; init; }
    public long ShardLength { get; init; }
    public long WalOffset { get; init; }
    public long WalLength { get; init; }
    public long Checkpoint0Offset { get; init; }
    public long Checkpoint1Offset { get; init; }
    public long CheckpointLength { get; init; }
    public long DataOffset { get; init; }
    public long DataLength { get; init; }
    /// <summary>Slot (0 or 1) of the checkpoint replay starts from.</summary>
    public uint ActiveCheckpoint { get; init; } = NoCheckpoint;
    public int MinChunkSize { get; init; }
    /// <summary>Last WAL sequence number the active checkpoint includes.</summary>
    public ulong CheckpointSeq { get; init; }
    /// <summary>Byte position in the WAL of the first record after the checkpoint.</summary>
    public long WalHead { get; init; }
    public long CreatedUnixMicros { get; init; }
    /// <summary>
    /// Mixed into every WAL record's CRC seed; a writable open bumps it, so records a
    /// torn batch left beyond the replayed tail can never be mistaken for new ones.
    /// </summary>
    public ulong WalEpoch { get; init; }
    /// <summary>
    /// How the log after <see cref="WalHead"/> is framed: 1 (WAL v1; written as 0, the value of the
    /// bytes before the field existed) or <see cref="WalFormatV2.Format"/>. A header with format 2
    /// also carries the incompat bit wal_v2, so engines that cannot read it refuse the pool.
    /// </summary>
    public uint WalFormat { get; init; } = 1;
    /// <summary>The pool label, kept here so refusals can name the pool without replaying metadata.</summary>
    public string Label { get; init; } = "";

    public long CheckpointOffset(uint slot) => slot == 0 ? Checkpoint0Offset : Checkpoint1Offset;

    public byte[] Encode()
    {
        var b = new byte[HeaderCopies.CopySize];
        var s = b.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffMagic..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffVersion..], FormatVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffLayout..], LayoutVersion);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffCompat..], Compat);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffRoCompat..], RoCompat);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffIncompat..], Incompat);
        PoolId.TryWriteBytes(s.Slice(OffPool, 16));
        TargetId.TryWriteBytes(s.Slice(OffTarget, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffIndex..], (uint)TargetIndex);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffCount..], (uint)TargetCount);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffGeneration..], Generation);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffShardLength..], ShardLength);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffWal..], WalOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffWalLength..], WalLength);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffCkpt0..], Checkpoint0Offset);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffCkpt1..], Checkpoint1Offset);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffCkptLength..], CheckpointLength);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffData..], DataOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffDataLength..], DataLength);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffActiveSlot..], ActiveCheckpoint);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffMinChunk..], (uint)MinChunkSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffCkptSeq..], CheckpointSeq);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffWalHead..], WalHead);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffCreated..], CreatedUnixMicros);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffWalEpoch..], WalEpoch);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffWalFormat..], WalFormat == 1 ? 0 : WalFormat);
        var label = Encoding.UTF8.GetBytes(Label);
        if (label.Length > MaxLabelBytes)
            throw new InvalidRequestException($"label {UserText.Quote(Label)} is longer than {MaxLabelBytes} bytes");
        s[OffLabelLength] = (byte)label.Length;
        label.CopyTo(s[OffLabel..]);
        HeaderCopies.Seal(s);
        return b;
    }

    /// <summary>
    /// Decodes a copy, checking only what every engine version can check (magic,
    /// CRC, format version). Layout and feature checks are the caller's, so the
    /// refusal can name the pool from the label of a valid copy.
    /// </summary>
    public static ShardHeader? Decode(ReadOnlySpan<byte> s, out string? problem)
    {
        if (!HeaderCopies.CheckEnvelope(s, Magic, FormatVersion, "shard header", out problem))
            return null;
        int labelLength = Math.Min((int)s[OffLabelLength], MaxLabelBytes);
        return new ShardHeader
        {
            LayoutVersion = BinaryPrimitives.ReadUInt32LittleEndian(s[OffLayout..]),
            Compat = BinaryPrimitives.ReadUInt64LittleEndian(s[OffCompat..]),
            RoCompat = BinaryPrimitives.ReadUInt64LittleEndian(s[OffRoCompat..]),
            Incompat = BinaryPrimitives.ReadUInt64LittleEndian(s[OffIncompat..]),
            PoolId = new Guid(s.Slice(OffPool, 16)),
            TargetId = new Guid(s.Slice(OffTarget, 16)),
            TargetIndex = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[OffIndex..]),
            TargetCount = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[OffCount..]),
            Generation = BinaryPrimitives.ReadUInt64LittleEndian(s[OffGeneration..]),
            ShardLength = BinaryPrimitives.ReadInt64LittleEndian(s[OffShardLength..]),
            WalOffset = BinaryPrimitives.ReadInt64LittleEndian(s[OffWal..]),
            WalLength = BinaryPrimitives.ReadInt64LittleEndian(s[OffWalLength..]),
            Checkpoint0Offset = BinaryPrimitives.ReadInt64LittleEndian(s[OffCkpt0..]),
            Checkpoint1Offset = BinaryPrimitives.ReadInt64LittleEndian(s[OffCkpt1..]),
            CheckpointLength = BinaryPrimitives.ReadInt64LittleEndian(s[OffCkptLength..]),
            DataOffset = BinaryPrimitives.ReadInt64LittleEndian(s[OffData..]),
            DataLength = BinaryPrimitives.ReadInt64LittleEndian(s[OffDataLength..]),
            ActiveCheckpoint = BinaryPrimitives.ReadUInt32LittleEndian(s[OffActiveSlot..]),
            MinChunkSize = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[OffMinChunk..]),
            CheckpointSeq = BinaryPrimitives.ReadUInt64LittleEndian(s[OffCkptSeq..]),
            WalHead = BinaryPrimitives.ReadInt64LittleEndian(s[OffWalHead..]),
            CreatedUnixMicros = BinaryPrimitives.ReadInt64LittleEndian(s[OffCreated..]),
            WalEpoch = BinaryPrimitives.ReadUInt64LittleEndian(s[OffWalEpoch..]),
            WalFormat = BinaryPrimitives.ReadUInt32LittleEndian(s[OffWalFormat..]) is var f && f == 0 ? 1 : f,
            Label = Encoding.UTF8.GetString(s.Slice(OffLabel, labelLength)),
        };
    }

    /// <summary>Region sanity: everything inside the shard, in order, block aligned.</summary>
    public string? CheckRegions(int blockSize)
    {
        long[] aligned = [WalOffset, WalLength, Checkpoint0Offset, Checkpoint1Offset, CheckpointLength, DataOffset, DataLength];
        if (aligned.Any(v => v <= 0 || v % blockSize != 0))
            return "a region offset or length is not a positive multiple of the block size";
        // Each region ends before the next starts, compared by differences: a length near
        // long.MaxValue must not wrap a sum into range.
        if (WalOffset < Size || Checkpoint0Offset - WalOffset < WalLength || Checkpoint1Offset - Checkpoint0Offset < CheckpointLength
            || DataOffset - Checkpoint1Offset < CheckpointLength || ShardLength < DataOffset || ShardLength - DataOffset < DataLength)
            return "regions overlap or extend past the shard";
        if (WalLength > Array.MaxLength)
            return $"the {WalLength}-byte log is larger than this engine can read";
        if (WalHead < 0 || WalHead >= WalLength || WalHead % blockSize != 0)
            return $"WAL head {WalHead} is outside the {WalLength}-byte log";
        if (ActiveCheckpoint > 1)
            return $"active checkpoint slot {ActiveCheckpoint} is not 0 or 1";
        if (WalFormat is not (1 or WalFormatV2.Format))
            return $"WAL format {WalFormat} is unknown to this engine (it reads 1 and {WalFormatV2.Format})";
        return null;
    }
}

/// <summary>The layout fields of a shard header.</summary>
public readonly record struct ShardHeaderLayout(uint Version, ulong Compat, ulong RoCompat, ulong Incompat);
