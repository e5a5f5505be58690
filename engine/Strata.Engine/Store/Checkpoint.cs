using System.Buffers.Binary;

namespace Strata.Engine.Store;

/// <summary>
/// Checkpoint slot v1: a 64-byte header (magic, version, sequence covered, WAL
/// head, payload length and CRC, pool id, header CRC) then the serialized pool
/// state. The shard header names the active slot; the slot's own CRCs and pool
/// id guard against torn writes and stale slots.
/// </summary>
public static class Checkpoint
{
    public const ulong Magic = 0x4B43_4154_4152_5453; // "STRATACK"
    public const uint FormatVersion = 1;
    public const int HeaderSize = 64;

    /// <summary>
    /// Slots the log's checkpoints are laid out in (PoolLog.WriteCheckpointAsync): a pool of their own, as
    /// the captures' chunk arrays (PoolStateCodec), so a checkpoint every few thousand writes reuses them.
    /// </summary>
    internal static readonly System.Buffers.ArrayPool<byte> Slots = System.Buffers.ArrayPool<byte>.Create(1 << 30, 2);

    public static byte[] Encode(Guid pool, ulong seq, long walHead, ReadOnlySpan<byte> payload, int blockSize)
    {
        var b = new byte[SlotLength(payload.Length, blockSize)];
        payload.CopyTo(b.AsSpan(HeaderSize));
        Seal(b, pool, seq, walHead, payload.Length);
        return b;
    }

    /// <summary>Bytes a checkpoint of <paramref name="payloadLength"/> takes: header and payload, to the block.</summary>
    public static long SlotLength(int payloadLength, int blockSize) => DeviceIo.AlignUp(HeaderSize + (long)payloadLength, blockSize);

    /// <summary>
    /// Writes the header in front of a payload already in place (<paramref name="slot"/> from
    /// <see cref="HeaderSize"/> on); the caller zeroed the rest of the slot to its length.
    /// </summary>
    public static void Seal(Span<byte> slot, Guid pool, ulong seq, long walHead, int payloadLength)
    {
        var s = slot;
        BinaryPrimitives.WriteUInt64LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], FormatVersion);
        s[12..16].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], seq);
        BinaryPrimitives.WriteInt64LittleEndian(s[24..], walHead);
        BinaryPrimitives.WriteInt64LittleEndian(s[32..], payloadLength);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], Crc32C.Compute(s.Slice(HeaderSize, payloadLength)));
        pool.TryWriteBytes(s.Slice(44, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(s[60..], Crc32C.Compute(s[..60]));
    }

    /// <summary>Reads the header part; returns the payload length or a problem.</summary>
    public static long PayloadLength(ReadOnlySpan<byte> header, Guid pool, ulong expectedSeq, out string? problem)
    {
        problem = null;
        if (header.Length < HeaderSize)
            problem = $"slot of {header.Length} bytes is shorter than its {HeaderSize}-byte header";
        else if (BinaryPrimitives.ReadUInt64LittleEndian(header) != Magic)
            problem = "bad magic";
        else if (BinaryPrimitives.ReadUInt32LittleEndian(header[60..]) != Crc32C.Compute(header[..60]))
            problem = "bad header CRC32C";
        else if (BinaryPrimitives.ReadUInt32LittleEndian(header[8..]) != FormatVersion)
            problem = $"checkpoint format version {BinaryPrimitives.ReadUInt32LittleEndian(header[8..])} is unknown";
        else if (new Guid(header.Slice(44, 16)) != pool)
            problem = "belongs to another pool";
        else if (BinaryPrimitives.ReadUInt64LittleEndian(header[16..]) != expectedSeq)
            problem = $"covers sequence {BinaryPrimitives.ReadUInt64LittleEndian(header[16..])}, the shard header says {expectedSeq}";
        return problem == null ? BinaryPrimitives.ReadInt64LittleEndian(header[32..]) : -1;
    }

    public static bool PayloadOk(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload) =>
        BinaryPrimitives.ReadUInt32LittleEndian(header[40..]) == Crc32C.Compute(payload);
}
