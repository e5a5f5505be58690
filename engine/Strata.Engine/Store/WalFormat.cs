using System.Buffers.Binary;

namespace Strata.Engine.Store;

/// <summary>One decoded log record.</summary>
public sealed record WalRecord(ulong Seq, ushort Type, ushort Flags, byte[] Payload);

/// <summary>
/// WAL v1 record framing (docs/format.md). Every record is 8-byte aligned:
/// u32 length (header + payload, padded), u32 CRC32C (seeded with the pool id and WAL epoch,
/// over bytes 8..length), u64 sequence, u16 type, u16 flags, u32 payload length,
/// payload. The pool-id seed keeps a stale record of a destroyed pool in the same
/// extent from ever looking valid; the exact-next-sequence rule ends replay at
/// the first torn, stale or missing record.
/// </summary>
public static class WalFormat
{
    public const int HeaderSize = 24;
    /// <summary>Fills the rest of a block (or of the log before it wraps).</summary>
    public const ushort PadType = 0xFFFF;
    /// <summary>An engine that does not know the type may skip the record (compat records).</summary>
    public const ushort FlagSkippable = 1;
    public const int MaxPayload = 64 * 1024;

    public static uint Seed(Guid pool, ulong epoch)
    {
        Span<byte> b = stackalloc byte[24];
        pool.TryWriteBytes(b);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], epoch);
        return Crc32C.Compute(b);
    }

    public static int EncodedLength(int payloadLength) => (HeaderSize + payloadLength + 7) & ~7;

    public static void Encode(Span<byte> dst, uint seed, ulong seq, ushort type, ushort flags, ReadOnlySpan<byte> payload, int length)
    {
        dst[..length].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(dst, (uint)length);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[8..], seq);
        BinaryPrimitives.WriteUInt16LittleEndian(dst[16..], type);
        BinaryPrimitives.WriteUInt16LittleEndian(dst[18..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[20..], (uint)payload.Length);
        payload.CopyTo(dst[HeaderSize..]);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[4..], Crc32C.Compute(dst[8..length], seed));
    }

    /// <summary>Decodes the record at pos if it is whole, intact and has exactly the expected sequence.</summary>
    public static WalRecord? TryDecode(ReadOnlySpan<byte> wal, long pos, uint seed, ulong expectedSeq, out int length)
    {
        length = 0;
        if (pos < 0 || pos + HeaderSize > wal.Length)
            return null;
        var s = wal[(int)pos..];
        int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(s);
        if (len < HeaderSize || len % 8 != 0 || len > s.Length)
            return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[4..]) != Crc32C.Compute(s[8..len], seed))
            return null;
        ulong seq = BinaryPrimitives.ReadUInt64LittleEndian(s[8..]);
        if (seq != expectedSeq)
            return null;
        int payload = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[20..]);
        if (payload < 0 || payload > len - HeaderSize)
            return null;
        length = len;
        return new WalRecord(seq, BinaryPrimitives.ReadUInt16LittleEndian(s[16..]), BinaryPrimitives.ReadUInt16LittleEndian(s[18..]),
            s.Slice(HeaderSize, payload).ToArray());
    }

    /// <summary>
    /// Replays a whole log image from head: records with sequences firstSeq,
    /// firstSeq + 1, ... until the first one that is not valid. Pad records are
    /// consumed (they carry a sequence) but not returned. Returns the position
    /// after the last valid record.
    /// </summary>
    public static (List<WalRecord> Records, long Tail, ulong NextSeq) Replay(ReadOnlySpan<byte> wal, long head, uint seed, ulong firstSeq)
    {
        var records = new List<WalRecord>();
        long pos = head;
        ulong seq = firstSeq;
        long consumed = 0;
        while (consumed < wal.Length)
        {
            var r = TryDecode(wal, pos, seed, seq, out int len);
            if (r == null)
                break;
            if (r.Type != PadType)
                records.Add(r);
            seq++;
            pos += len;
            consumed += len;
            if (pos == wal.Length)
                pos = 0;
        }
        return (records, pos, seq);
    }
}
