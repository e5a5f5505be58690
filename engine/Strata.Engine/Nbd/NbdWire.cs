using System.Buffers.Binary;
using System.Text;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>One transmission request header (28 bytes on the wire).</summary>
public readonly record struct NbdRequestHeader(uint Magic, ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length)
{
    public static NbdRequestHeader Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt32BigEndian(s),
        BinaryPrimitives.ReadUInt16BigEndian(s[4..]),
        BinaryPrimitives.ReadUInt16BigEndian(s[6..]),
        BinaryPrimitives.ReadUInt64BigEndian(s[8..]),
        BinaryPrimitives.ReadUInt64BigEndian(s[16..]),
        BinaryPrimitives.ReadUInt32BigEndian(s[24..]));

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteUInt32BigEndian(s, Magic);
        BinaryPrimitives.WriteUInt16BigEndian(s[4..], Flags);
        BinaryPrimitives.WriteUInt16BigEndian(s[6..], Type);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(s[16..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(s[24..], Length);
    }
}

/// <summary>
/// Encoders of the server's messages. Each writes into a caller's span and returns the bytes
/// written; the transmission ones never allocate (error messages are encoded only on errors).
/// </summary>
public static class NbdWire
{
    /// <summary>The newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags (18 bytes).</summary>
    public static int WriteGreeting(Span<byte> s, ushort handshakeFlags)
    {
        BinaryPrimitives.WriteUInt64BigEndian(s, InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(s[16..], handshakeFlags);
        return 18;
    }

    /// <summary>An option request header: magic, option, data length (16 bytes).</summary>
    public static (ulong Magic, uint Option, uint Length) ReadOptionHeader(ReadOnlySpan<byte> s) => (
        BinaryPrimitives.ReadUInt64BigEndian(s),
        BinaryPrimitives.ReadUInt32BigEndian(s[8..]),
        BinaryPrimitives.ReadUInt32BigEndian(s[12..]));

    public static int WriteOptionReplyHeader(Span<byte> s, uint option, uint replyType, uint length)
    {
        BinaryPrimitives.WriteUInt64BigEndian(s, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(s[8..], option);
        BinaryPrimitives.WriteUInt32BigEndian(s[12..], replyType);
        BinaryPrimitives.WriteUInt32BigEndian(s[16..], length);
        return OptionReplyHeaderSize;
    }

    /// <summary>The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and (unless NO_ZEROES) 124 zero bytes.</summary>
    public static int WriteExportNameReply(Span<byte> s, ulong size, ushort transmissionFlags, bool noZeroes)
    {
        BinaryPrimitives.WriteUInt64BigEndian(s, size);
        BinaryPrimitives.WriteUInt16BigEndian(s[8..], transmissionFlags);
        if (noZeroes)
            return 10;
        s.Slice(10, 124).Clear();
        return 134;
    }

    public static int WriteSimpleReply(Span<byte> s, uint error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(s, SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(s[4..], error);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], cookie);
        return SimpleReplySize;
    }

    public static int WriteStructuredHeader(Span<byte> s, ushort flags, ushort type, ulong cookie, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(s, StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(s[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(s[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(s[16..], length);
        return StructuredHeaderSize;
    }

    /// <summary>The header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk (28 bytes); the data follows.</summary>
    public static int WriteOffsetDataHeader(Span<byte> s, ulong cookie, ulong offset, int dataLength)
    {
        WriteStructuredHeader(s, ReplyFlagDone, ReplyTypeOffsetData, cookie, (uint)(8 + dataLength));
        BinaryPrimitives.WriteUInt64BigEndian(s[20..], offset);
        return 28;
    }

    /// <summary>Bytes a final NBD_REPLY_TYPE_BLOCK_STATUS chunk with this many descriptors takes.</summary>
    public static int BlockStatusSize(int descriptors) => StructuredHeaderSize + 4 + 8 * descriptors;

    /// <summary>
    /// A final NBD_REPLY_TYPE_BLOCK_STATUS chunk of the base:allocation context: one descriptor per run,
    /// an unmapped run a hole that reads as zeroes (NBD_STATE_HOLE | NBD_STATE_ZERO), a mapped one 0.
    /// </summary>
    public static int WriteBlockStatus(Span<byte> s, ulong cookie, uint contextId, ReadOnlySpan<Strata.Engine.Pools.AllocationRun> runs)
    {
        int size = BlockStatusSize(runs.Length);
        WriteStructuredHeader(s, ReplyFlagDone, ReplyTypeBlockStatus, cookie, (uint)(size - StructuredHeaderSize));
        BinaryPrimitives.WriteUInt32BigEndian(s[StructuredHeaderSize..], contextId);
        for (int i = 0; i < runs.Length; i++)
        {
            var d = s[(StructuredHeaderSize + 4 + 8 * i)..];
            BinaryPrimitives.WriteUInt32BigEndian(d, checked((uint)runs[i].Length));
            BinaryPrimitives.WriteUInt32BigEndian(d[4..], runs[i].Mapped ? 0 : StateHole | StateZero);
        }
        return size;
    }

    /// <summary>Bytes an error chunk with this message takes (the message is cut to fit the spec's limit).</summary>
    public static int ErrorChunkSize(string? message) => StructuredHeaderSize + 6 + MessageBytes(message);

    private static int MessageBytes(string? message) => message == null ? 0 : Math.Min(Encoding.UTF8.GetByteCount(message), MaxStringLength);

    /// <summary>A final NBD_REPLY_TYPE_ERROR chunk: error, message length, message.</summary>
    public static int WriteErrorChunk(Span<byte> s, ulong cookie, uint error, string? message)
    {
        int n = MessageBytes(message);
        WriteStructuredHeader(s, ReplyFlagDone, ReplyTypeError, cookie, (uint)(6 + n));
        BinaryPrimitives.WriteUInt32BigEndian(s[20..], error);
        BinaryPrimitives.WriteUInt16BigEndian(s[24..], (ushort)n);
        if (n > 0)
            Utf8Prefix(message!, s.Slice(26, n));
        return StructuredHeaderSize + 6 + n;
    }

    /// <summary>Encodes as much of <paramref name="text"/> as fits, never splitting a character.</summary>
    public static void Utf8Prefix(string text, Span<byte> dest)
    {
        var encoder = Encoding.UTF8.GetEncoder();
        encoder.Convert(text, dest, flush: true, out _, out int written, out _);
        dest[written..].Fill((byte)' ');
    }
}
