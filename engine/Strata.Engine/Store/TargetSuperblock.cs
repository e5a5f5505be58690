using System.Buffers.Binary;

namespace Strata.Engine.Store;

/// <summary>One pool's extent on a target.</summary>
public readonly record struct ShardExtent(Guid Pool, long Offset, long Length);

/// <summary>
/// The target superblock (format v1): the first 8 KiB of a target, two 4 KiB
/// copies. Field offsets are frozen; see docs/format.md. Shards start at or
/// after <see cref="ReservedBytes"/>.
/// </summary>
public sealed class TargetSuperblock
{
    public const ulong Magic = 0x4754_4154_4152_5453; // "STRATATG" little-endian
    public const uint FormatVersion = 1;
    public const int MaxExtents = 64;
    public const long ReservedBytes = 1024 * 1024;
    public const long ExtentAlignment = 1024 * 1024;

    private const int OffMagic = 0, OffVersion = 8, OffSize = 12, OffGeneration = 16, OffEngine = 24, OffTarget = 40,
        OffIndex = 56, OffCount = 60, OffCapacity = 64, OffExtentCount = 72, OffMaxExtents = 76, OffExtents = 128, ExtentEntry = 48;

    public ulong Generation { get; set; }
    public Guid EngineId { get; init; }
    public Guid TargetId { get; init; }
    public int TargetIndex { get; init; }
    public int TargetCount { get; init; }
    public long Capacity { get; init; }
    public List<ShardExtent> Extents { get; init; } = new();

    public byte[] Encode()
    {
        var b = new byte[HeaderCopies.CopySize];
        var s = b.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffMagic..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffVersion..], FormatVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffSize..], HeaderCopies.CopySize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[OffGeneration..], Generation);
        EngineId.TryWriteBytes(s.Slice(OffEngine, 16));
        TargetId.TryWriteBytes(s.Slice(OffTarget, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffIndex..], (uint)TargetIndex);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffCount..], (uint)TargetCount);
        BinaryPrimitives.WriteInt64LittleEndian(s[OffCapacity..], Capacity);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffExtentCount..], (uint)Extents.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(s[OffMaxExtents..], MaxExtents);
        for (int i = 0; i < Extents.Count; i++)
        {
            var e = s.Slice(OffExtents + i * ExtentEntry, ExtentEntry);
            Extents[i].Pool.TryWriteBytes(e[..16]);
            BinaryPrimitives.WriteInt64LittleEndian(e[16..], Extents[i].Offset);
            BinaryPrimitives.WriteInt64LittleEndian(e[24..], Extents[i].Length);
        }
        HeaderCopies.Seal(s);
        return b;
    }

    public static TargetSuperblock? Decode(ReadOnlySpan<byte> s, out string? problem)
    {
        if (!HeaderCopies.CheckEnvelope(s, Magic, FormatVersion, "target", out problem))
            return null;
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(s[OffExtentCount..]);
        if (count > MaxExtents)
        {
            problem = $"extent count {count} exceeds {MaxExtents}";
            return null;
        }
        var sb = new TargetSuperblock
        {
            Generation = BinaryPrimitives.ReadUInt64LittleEndian(s[OffGeneration..]),
            EngineId = new Guid(s.Slice(OffEngine, 16)),
            TargetId = new Guid(s.Slice(OffTarget, 16)),
            TargetIndex = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[OffIndex..]),
            TargetCount = (int)BinaryPrimitives.ReadUInt32LittleEndian(s[OffCount..]),
            Capacity = BinaryPrimitives.ReadInt64LittleEndian(s[OffCapacity..]),
        };
        for (int i = 0; i < count; i++)
        {
            var e = s.Slice(OffExtents + i * ExtentEntry, ExtentEntry);
            sb.Extents.Add(new ShardExtent(new Guid(e[..16]), BinaryPrimitives.ReadInt64LittleEndian(e[16..]), BinaryPrimitives.ReadInt64LittleEndian(e[24..])));
        }
        return sb;
    }

    /// <summary>First fit of an aligned extent of the given length, or -1.</summary>
    public long FindFreeExtent(long length, long capacity)
    {
        // Compared as differences: a length near 2^63 must find nothing, not wrap onto a pool.
        if (length <= 0 || length > capacity)
            return -1;
        long candidate = ReservedBytes;
        foreach (var e in Extents.OrderBy(e => e.Offset))
        {
            if (e.Offset >= candidate && e.Offset - candidate >= length)
                return candidate;
            candidate = Math.Max(candidate, DeviceIo.AlignUp(e.Offset + e.Length, ExtentAlignment));
        }
        return candidate <= capacity && capacity - candidate >= length ? candidate : -1;
    }

    public TargetSuperblock Clone(ulong generation, List<ShardExtent> extents, int? targetCount = null) => new()
    {
        Generation = generation,
        EngineId = EngineId,
        TargetId = TargetId,
        TargetIndex = TargetIndex,
        TargetCount = targetCount ?? TargetCount,
        Capacity = Capacity,
        Extents = extents,
    };
}
