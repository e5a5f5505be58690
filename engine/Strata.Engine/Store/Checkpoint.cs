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

    public static byte[] Encode(Guid pool, ulong seq, long walHead, ReadOnlySpan<byte> payload, int blockSize)
    {
        long total = DeviceIo.AlignUp(HeaderSize + payload.Length, blockSize);
        var b = new byte[total];
        var s = b.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(s, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], FormatVersion);
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], seq);
        BinaryPrimitives.WriteInt64LittleEndian(s[24..], walHead);
        BinaryPrimitives.WriteInt64LittleEndian(s[32..], payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], Crc32C.Compute(payload));
        pool.TryWriteBytes(s.Slice(44, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(s[60..], Crc32C.Compute(s[..60]));
        payload.CopyTo(s[HeaderSize..]);
        return b;
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
