using Strata.Engine.Device;

namespace Strata.Engine.Store;

/// <summary>
/// The two-alternating-copies protocol shared by target superblocks and shard
/// headers: copy (generation % 2) is written, the newest valid copy wins, and a
/// bad copy is reported (it heals when the next generation lands on it).
/// </summary>
internal static class HeaderCopies
{
    public const int CopySize = 4096;
    public const int CrcOffset = CopySize - 4;

    /// <summary>Result of reading both copies.</summary>
    public sealed record ReadResult<T>(T? Best, int BestCopy, string?[] Problems) where T : class
    {
        public bool AnyBad => Problems[0] != null || Problems[1] != null;
    }

    public delegate T? Decoder<T>(ReadOnlySpan<byte> copy, out string? problem) where T : class;

    /// <summary>
    /// Checks what every engine version can check of a copy, in the order that
    /// names the most useful problem: size, magic (u64 at 0), CRC32C, format version (u32 at 8).
    /// </summary>
    public static bool CheckEnvelope(ReadOnlySpan<byte> copy, ulong magic, uint formatVersion, string what, out string? problem)
    {
        problem = null;
        if (copy.Length != CopySize)
            problem = $"copy is {copy.Length} bytes, not {CopySize}";
        else if (System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(copy) != magic)
            problem = "bad magic";
        else if (!CrcOk(copy))
            problem = "bad CRC32C";
        else if (System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(copy[8..]) is var v && v != formatVersion)
            problem = $"{what} format version {v}, this engine supports {formatVersion}";
        return problem == null;
    }

    /// <summary>Reads both copies at baseOffset and baseOffset + 4 KiB; never writes.</summary>
    public static async ValueTask<ReadResult<T>> ReadAsync<T>(IBlockDevice device, long baseOffset, Decoder<T> decode, Func<T, ulong> generation)
        where T : class
    {
        var bytes = new byte[2 * CopySize];
        await DeviceIo.ReadAsync(device, baseOffset, bytes).ConfigureAwait(false);
        T? best = null;
        int bestCopy = -1;
        var problems = new string?[2];
        for (int i = 0; i < 2; i++)
        {
            var h = decode(bytes.AsSpan(i * CopySize, CopySize), out var problem);
            if (h == null)
            {
                problems[i] = problem ?? "invalid";
                continue;
            }
            if (best == null || generation(h) > generation(best))
            {
                best = h;
                bestCopy = i;
            }
        }
        return new ReadResult<T>(best, bestCopy, problems);
    }

    /// <summary>Seals a copy: CRC32C of everything before the CRC field.</summary>
    public static void Seal(Span<byte> copy) =>
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(copy[CrcOffset..], Crc32C.Compute(copy[..CrcOffset]));

    public static bool CrcOk(ReadOnlySpan<byte> copy) =>
        System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(copy[CrcOffset..]) == Crc32C.Compute(copy[..CrcOffset]);

    /// <summary>Writes the copy for this generation and flushes; a header change is durable when this returns.</summary>
    public static async ValueTask WriteAsync(IBlockDevice device, long baseOffset, ulong generation, byte[] copy)
    {
        long at = baseOffset + (long)(generation % 2) * CopySize;
        await DeviceIo.WriteAsync(device, at, copy).ConfigureAwait(false);
        await device.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Writes generation+1 to one copy and, once that is durable, generation+2 to
    /// the other: after it both copies hold the same content, so a later media
    /// error in either copy loses nothing (the older copy alone may point at a
    /// checkpoint or log space that has since been reused). Returns the last generation.
    /// </summary>
    public static async ValueTask<ulong> WriteBothAsync(IBlockDevice device, long baseOffset, ulong generation, Func<ulong, byte[]> encode)
    {
        await WriteAsync(device, baseOffset, generation + 1, encode(generation + 1)).ConfigureAwait(false);
        await WriteAsync(device, baseOffset, generation + 2, encode(generation + 2)).ConfigureAwait(false);
        return generation + 2;
    }

    public static string CopyName(int i) => i == 0 ? "A" : "B";
}
