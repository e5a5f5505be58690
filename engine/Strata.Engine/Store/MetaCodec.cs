using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Strata.Engine.Store;

/// <summary>Little-endian writer for WAL payloads and checkpoint sections.</summary>
public sealed class MetaWriter
{
    private readonly ArrayBufferWriter<byte> _buffer = new(256);

    public int Length => _buffer.WrittenCount;

    public ReadOnlySpan<byte> WrittenSpan => _buffer.WrittenSpan;

    public byte[] ToArray() => _buffer.WrittenSpan.ToArray();

    public MetaWriter Byte(byte v)
    {
        _buffer.GetSpan(1)[0] = v;
        _buffer.Advance(1);
        return this;
    }

    public MetaWriter U16(ushort v)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.GetSpan(2), v);
        _buffer.Advance(2);
        return this;
    }

    public MetaWriter U32(uint v)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer.GetSpan(4), v);
        _buffer.Advance(4);
        return this;
    }

    public MetaWriter U64(ulong v)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(_buffer.GetSpan(8), v);
        _buffer.Advance(8);
        return this;
    }

    public MetaWriter I64(long v) => U64((ulong)v);

    /// <summary>u16 byte length, then UTF-8.</summary>
    public MetaWriter Str(string s)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        if (n > ushort.MaxValue)
            throw new InvalidRequestException($"string of {n} bytes is too long for metadata");
        U16((ushort)n);
        Encoding.UTF8.GetBytes(s, _buffer.GetSpan(n));
        _buffer.Advance(n);
        return this;
    }

    public MetaWriter Bytes(ReadOnlySpan<byte> b)
    {
        b.CopyTo(_buffer.GetSpan(b.Length));
        _buffer.Advance(b.Length);
        return this;
    }
}

/// <summary>Bounds-checked reader; running off the end is corrupt metadata, never an index exception.</summary>
public ref struct MetaReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _pos;

    public MetaReader(ReadOnlySpan<byte> data)
    {
        _data = data;
        _pos = 0;
    }

    public readonly int Remaining => _data.Length - _pos;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || n > _data.Length - _pos)
            throw new CorruptMetadataException($"metadata record truncated: needed {n} bytes at {_pos}, have {_data.Length - _pos}");
        var s = _data.Slice(_pos, n);
        _pos += n;
        return s;
    }

    public byte Byte() => Take(1)[0];
    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
    public long I64() => (long)U64();
    public string Str() => Encoding.UTF8.GetString(Take(U16()));
    public ReadOnlySpan<byte> Bytes(int n) => Take(n);
}
