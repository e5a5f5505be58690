using System.Buffers.Binary;

namespace Strata.Engine.Store;

/// <summary>
/// WAL v2 framing (docs/format.md, "WAL v2"): checksummed batches. A batch is one 32-byte header
/// (magic, one CRC32C over header and body, batch sequence, durable-through mark, span, body length)
/// followed by compact records (u16 type with the skippable flag in bit 15, LEB128 payload length,
/// payload; no padding, no per-record sequence or CRC). Record i of a batch with sequence S has
/// sequence S + 1 + i. A batch is whole or not at all: a torn one fails its CRC and ends replay, as
/// v1's first torn record does. Pools whose layout includes wal_v2 write it.
/// </summary>
public static class WalFormatV2
{
    /// <summary>The shard header's WAL format value for this framing.</summary>
    public const uint Format = 2;
    public const uint Magic = 0x3242_5753; // "SWB2"
    public const int HeaderSize = 32;
    /// <summary>A voided record (its data write failed): its sequence is consumed, it is not applied.</summary>
    public const ushort PadType = 0x7FFF;
    private const ushort SkippableBit = 0x8000;
    /// <summary>Type word and the longest length the encoder writes (3 LEB128 bytes hold MaxPayload).</summary>
    public const int MaxRecordOverhead = 2 + 3;

    private const int OffMagic = 0, OffCrc = 4, OffSeq = 8, OffDurable = 16, OffSpan = 24, OffBody = 28;

    /// <summary>CRC seed: the pool id, the WAL epoch and the format, so neither a v1 record nor another pool's batch can pass.</summary>
    public static uint Seed(Guid pool, ulong epoch)
    {
        Span<byte> b = stackalloc byte[28];
        pool.TryWriteBytes(b);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], epoch);
        BinaryPrimitives.WriteUInt32LittleEndian(b[24..], Format);
        return Crc32C.Compute(b);
    }

    /// <summary>Bytes one record takes in a batch body.</summary>
    public static int RecordLength(int payloadLength) => 2 + VarintLength(payloadLength) + payloadLength;

    private static int VarintLength(int v) => v < 0x80 ? 1 : v < 0x4000 ? 2 : 3;

    /// <summary>Writes one record at the start of <paramref name="dst"/>; returns its length.</summary>
    public static int EncodeRecord(Span<byte> dst, ushort type, ushort flags, ReadOnlySpan<byte> payload)
    {
        if (type > PadType)
            throw new ArgumentOutOfRangeException(nameof(type), $"record type {type} does not fit WAL v2's 15 bits");
        if ((flags & ~WalFormat.FlagSkippable) != 0)
            throw new ArgumentOutOfRangeException(nameof(flags), $"record flags 0x{flags:x} other than skippable have no place in WAL v2");
        if (payload.Length > WalFormat.MaxPayload)
            throw new ArgumentOutOfRangeException(nameof(payload), $"a payload of {payload.Length} bytes exceeds {WalFormat.MaxPayload}");
        BinaryPrimitives.WriteUInt16LittleEndian(dst, (ushort)(type | ((flags & WalFormat.FlagSkippable) != 0 ? SkippableBit : 0)));
        int at = 2;
        uint v = (uint)payload.Length;
        while (v >= 0x80)
        {
            dst[at++] = (byte)(v | 0x80);
            v >>= 7;
        }
        dst[at++] = (byte)v;
        payload.CopyTo(dst[at..]);
        return at + payload.Length;
    }

    /// <summary>
    /// Fills in the header of a batch whose records are already at <see cref="HeaderSize"/> and computes
    /// its CRC. <paramref name="span"/>: bytes the batch occupies in the log (the next batch starts
    /// there; a batch whose span reaches the log's end wraps the log).
    /// </summary>
    public static void Seal(Span<byte> batch, uint seed, ulong seq, ulong durableThrough, int span, int bodyLength)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(batch[OffMagic..], Magic);
        BinaryPrimitives.WriteUInt64LittleEndian(batch[OffSeq..], seq);
        BinaryPrimitives.WriteUInt64LittleEndian(batch[OffDurable..], durableThrough);
        BinaryPrimitives.WriteUInt32LittleEndian(batch[OffSpan..], (uint)span);
        BinaryPrimitives.WriteUInt32LittleEndian(batch[OffBody..], (uint)bodyLength);
        Reseal(batch, seed);
    }

    private static void Reseal(Span<byte> batch, uint seed)
    {
        int body = (int)BinaryPrimitives.ReadUInt32LittleEndian(batch[OffBody..]);
        BinaryPrimitives.WriteUInt32LittleEndian(batch[OffCrc..], Crc32C.Compute(batch[OffSeq..(HeaderSize + body)], seed));
    }

    /// <summary>
    /// Voids the records in [<paramref name="from"/>, <paramref name="from"/> + <paramref name="length"/>) of
    /// a sealed batch (their data writes failed): each becomes a pad of the same length with a zeroed
    /// payload, so every later record keeps its place and sequence; the batch CRC is computed again.
    /// </summary>
    public static void Void(Span<byte> batch, int from, int length, uint seed)
    {
        int at = from;
        while (at < from + length)
        {
            if (!TryReadRecord(batch[at..(from + length)], out _, out _, out int payloadAt, out int payloadLength))
                throw new ArgumentException($"no whole record at {at} of the batch", nameof(from));
            BinaryPrimitives.WriteUInt16LittleEndian(batch[at..], PadType);
            batch.Slice(at + payloadAt, payloadLength).Clear();
            at += payloadAt + payloadLength;
        }
        Reseal(batch, seed);
    }

    /// <summary>Reads one record's framing; false when the bytes do not hold a whole one.</summary>
    internal static bool TryReadRecord(ReadOnlySpan<byte> s, out ushort type, out ushort flags, out int payloadAt, out int payloadLength)
    {
        type = flags = 0;
        payloadAt = payloadLength = 0;
        if (s.Length < 3)
            return false;
        ushort word = BinaryPrimitives.ReadUInt16LittleEndian(s);
        type = (ushort)(word & ~SkippableBit);
        flags = (word & SkippableBit) != 0 ? WalFormat.FlagSkippable : (ushort)0;
        int value = 0, at = 2;
        for (int shift = 0; ; shift += 7)
        {
            if (at >= s.Length || shift > 14)
                return false;
            byte b = s[at++];
            value |= (b & 0x7F) << shift;
            if ((b & 0x80) == 0)
                break;
        }
        if (value > WalFormat.MaxPayload || value > s.Length - at)
            return false;
        payloadAt = at;
        payloadLength = value;
        return true;
    }

    /// <summary>
    /// Decodes the batch at <paramref name="pos"/> if it is whole, intact and has exactly the expected
    /// sequence (else null: the log ends before it). Its records are appended to <paramref name="records"/>
    /// (pads consume their sequence and are left out). A batch that passes its CRC but whose body does not
    /// frame into records was written wrong or forged: refused as corrupt metadata.
    /// </summary>
    public static bool TryDecodeBatch(ReadOnlySpan<byte> wal, long pos, uint seed, ulong expectedSeq, List<WalRecord> records,
        out int span, out ulong durableThrough, out ulong nextSeq)
    {
        span = 0;
        durableThrough = 0;
        nextSeq = expectedSeq;
        // Differences, not sums: a position or length near the type's end must not wrap into range.
        if (pos < 0 || pos > wal.Length - HeaderSize)
            return false;
        var s = wal[(int)pos..];
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[OffMagic..]) != Magic)
            return false;
        uint spanField = BinaryPrimitives.ReadUInt32LittleEndian(s[OffSpan..]);
        uint body = BinaryPrimitives.ReadUInt32LittleEndian(s[OffBody..]);
        if (spanField < HeaderSize || spanField % 8 != 0 || spanField > s.Length || body > spanField - HeaderSize)
            return false;
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[OffCrc..]) != Crc32C.Compute(s[OffSeq..(HeaderSize + (int)body)], seed))
            return false;
        ulong seq = BinaryPrimitives.ReadUInt64LittleEndian(s[OffSeq..]);
        if (seq != expectedSeq)
            return false;
        durableThrough = BinaryPrimitives.ReadUInt64LittleEndian(s[OffDurable..]);
        ulong next = seq + 1;
        var b = s[HeaderSize..(HeaderSize + (int)body)];
        int first = records.Count;
        while (!b.IsEmpty)
        {
            if (!TryReadRecord(b, out ushort type, out ushort flags, out int payloadAt, out int payloadLength))
            {
                records.RemoveRange(first, records.Count - first);
                throw new CorruptMetadataException($"WAL batch {seq} passes its CRC32C but its body does not frame into records (at byte {HeaderSize + (int)body - b.Length} of {HeaderSize + (int)body})");
            }
            if (type != PadType)
                records.Add(new WalRecord(next, type, flags, b.Slice(payloadAt, payloadLength).ToArray()));
            next++;
            b = b[(payloadAt + payloadLength)..];
        }
        span = (int)spanField;
        nextSeq = next;
        return true;
    }

    /// <summary>
    /// Replays a whole log image from head: batches with sequences firstSeq, ... until the first one that
    /// is not valid. Returns the records, the position after the last valid batch, the next sequence,
    /// and the highest durable-through mark (or <paramref name="durable"/> if higher).
    /// </summary>
    public static (List<WalRecord> Records, long Tail, ulong NextSeq, ulong Durable) Replay(ReadOnlySpan<byte> wal, long head, uint seed, ulong firstSeq, ulong durable)
    {
        var records = new List<WalRecord>();
        long pos = head;
        ulong seq = firstSeq;
        long consumed = 0;
        while (consumed < wal.Length)
        {
            if (!TryDecodeBatch(wal, pos, seed, seq, records, out int span, out ulong mark, out ulong next))
                break;
            durable = Math.Max(durable, mark);
            seq = next;
            pos += span;
            consumed += span;
            if (pos == wal.Length)
                pos = 0;
        }
        return (records, pos, seq, durable);
    }
}
