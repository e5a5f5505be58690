using System.Buffers.Binary;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>What checking bytes of one replica against the chunk map found.</summary>
/// <param name="Replica">The replica checked (target, extent, what the map records).</param>
/// <param name="Ok">The bytes are what the map (or the replica's verified block table) records.</param>
/// <param name="Expected">The checksum recorded for the bytes checked.</param>
/// <param name="Actual">The checksum of the bytes read.</param>
/// <param name="Block">
/// What was checked: <see cref="WholeChunk"/> (one CRC per chunk), <see cref="TableBlock"/> (the
/// replica's block table against the map), or the index of the 4 KiB data block that failed.
/// </param>
public readonly record struct ChunkVerdict(Replica Replica, bool Ok, uint Expected, uint Actual, int Block = ChunkVerdict.WholeChunk)
{
    public const int WholeChunk = -1;
    public const int TableBlock = -2;

    /// <summary>What did not verify, for messages: "the chunk", "its block table", "4 KiB block 7".</summary>
    public string What => Block switch
    {
        WholeChunk => "the chunk",
        TableBlock => "its block table",
        _ => $"4 KiB block {Block}",
    };
}

/// <summary>
/// What a copy of one whole chunk must match before it is written (an image migration's copy): the
/// CRC32C of the chunk as its reader verified it, or, for a chunk read with a block table, the verified
/// CRC32C of each 4 KiB block (<see cref="Blocks"/> not empty). The block form lets a destination
/// that builds a block table check the copy with the CRCs it computes anyway, without a pass of its own.
/// </summary>
internal readonly record struct CopyChecksum(uint Crc, ReadOnlyMemory<uint> Blocks)
{
    /// <summary>Whether a new block table's entries (built over the copy's bytes) are the expected block CRCs; null when this holds a chunk CRC or another block count.</summary>
    public bool? MatchesTable(ReadOnlySpan<byte> table)
    {
        if (Blocks.IsEmpty || ChunkChecksum.TableBlocks(table) != Blocks.Length)
            return null;
        var expected = Blocks.Span;
        for (int k = 0; k < expected.Length; k++)
            if (ChunkChecksum.TableEntry(table, k) != expected[k])
                return false;
        return true;
    }

    /// <summary>Whether the bytes of a whole chunk are the ones expected (one CRC pass over them).</summary>
    public bool Matches(ReadOnlySpan<byte> chunk)
    {
        if (Blocks.IsEmpty)
            return ChunkChecksum.Of(chunk) == Crc;
        var expected = Blocks.Span;
        if (chunk.Length != expected.Length * ChunkChecksum.BlockSize)
            return false;
        return ChunkChecksum.FirstMismatch(expected, chunk, out _) < 0;
    }
}

/// <summary>
/// The one place that computes what a chunk map records about a chunk's data and checks bytes
/// read back against it. Two forms, chosen per chunk by its map (<see cref="ChunkMap.Blocks"/>):
/// <list type="bullet">
/// <item>layouts 1-2, and 4 KiB chunks always: one CRC32C of the whole chunk, so verifying any part
/// of a chunk means reading all of it;</item>
/// <item>layout 3 (<c>block_checksums</c>, docs/format.md "Per-block checksums"): the replica's extent
/// starts with a 4 KiB block table (one CRC32C per 4 KiB data block, plus the image and chunk it
/// belongs to) and the map records the CRC32C of that table; a request verifies the table and only
/// the blocks it touches (<see cref="VerifiedRange"/>).</item>
/// </list>
/// </summary>
internal static class ChunkChecksum
{
    /// <summary>Bytes one table entry covers.</summary>
    public const int BlockSize = 4096;

    /// <summary>The block table at the head of a block-checksummed extent.</summary>
    public const int TableSize = 4096;

    /// <summary>Table magic "STBK".</summary>
    public const uint TableMagic = 0x4B425453;

    public const ushort TableFormat = 1;

    private const int EntriesAt = 24;

    /// <summary>Whether a chunk of this size gets a block table in a block-checksummed pool: a 4 KiB chunk is one block, its chunk CRC already is the block CRC.</summary>
    public static bool TakesTable(int chunkSize) => chunkSize > BlockSize;

    /// <summary>Bytes a replica's extent takes: the chunk, plus its table when it has one.</summary>
    public static int ExtentLength(int chunkSize, bool blocks) => blocks ? chunkSize + TableSize : chunkSize;

    /// <summary>Bytes each replica of this chunk takes on its target.</summary>
    public static int ExtentLength(this ChunkMap map, int chunkSize) => ExtentLength(chunkSize, map.Blocks);

    /// <summary>What the chunk map records for a whole chunk's new contents (chunks without a table).</summary>
    public static uint Of(ReadOnlySpan<byte> chunk) => Crc32C.Compute(chunk);

    /// <summary>
    /// Builds the block table of a chunk's new contents into <paramref name="table"/> (4 KiB) and returns
    /// what the chunk map records for it: the CRC32C of the table.
    /// </summary>
    public static uint BuildTable(uint image, long chunk, ReadOnlySpan<byte> data, Span<byte> table)
    {
        int n = data.Length / BlockSize;
        System.Diagnostics.Debug.Assert(data.Length % BlockSize == 0 && n > 1 && table.Length == TableSize);
        if (EntriesAt + 4 * n > TableSize)
            throw new ArgumentException($"a {data.Length}-byte chunk has more blocks than a block table holds");
        Span<uint> crcs = stackalloc uint[n];
        Crc32C.ComputeBlocks(data, BlockSize, crcs);
        return WriteTable(image, chunk, crcs, table);
    }

    /// <summary>The block count a table records (its header).</summary>
    public static int TableBlocks(ReadOnlySpan<byte> table) => BinaryPrimitives.ReadUInt16LittleEndian(table[6..]);

    /// <summary>The CRC32C a table records for data block <paramref name="block"/>.</summary>
    public static uint TableEntry(ReadOnlySpan<byte> table, int block) => BinaryPrimitives.ReadUInt32LittleEndian(table[(EntriesAt + 4 * block)..]);

    /// <summary>
    /// Writes the block table of a chunk whose blocks have the CRC32Cs <paramref name="crcs"/> into
    /// <paramref name="table"/> (4 KiB) and returns its CRC32C: what an in-place write of some blocks
    /// records, from the current table's CRCs with the rewritten blocks' replaced.
    /// </summary>
    public static uint WriteTable(uint image, long chunk, ReadOnlySpan<uint> crcs, Span<byte> table)
    {
        int n = crcs.Length;
        System.Diagnostics.Debug.Assert(n > 1 && EntriesAt + 4 * n <= TableSize && table.Length == TableSize);
        WriteTableHeader(image, chunk, n, table);
        for (int k = 0; k < n; k++)
            BinaryPrimitives.WriteUInt32LittleEndian(table[(EntriesAt + 4 * k)..], crcs[k]);
        return Crc32C.Compute(table);
    }

    /// <summary>A cleared table with its header: magic, format, block count, and the chunk it belongs to.</summary>
    private static void WriteTableHeader(uint image, long chunk, int blocks, Span<byte> table)
    {
        table.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(table, TableMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(table[4..], TableFormat);
        BinaryPrimitives.WriteUInt16LittleEndian(table[6..], (ushort)blocks);
        BinaryPrimitives.WriteUInt32LittleEndian(table[8..], image);
        BinaryPrimitives.WriteInt64LittleEndian(table[12..], chunk);
    }

    /// <summary>
    /// The part of a chunk's data that must be read to verify bytes [<paramref name="within"/>,
    /// <paramref name="within"/> + <paramref name="length"/>) of it: the whole chunk without a table,
    /// else the 4 KiB blocks the range touches (the table is read or cached besides).
    /// </summary>
    public static (int From, int Length) VerifiedRange(bool blocks, int chunkSize, int within, int length)
    {
        System.Diagnostics.Debug.Assert(within >= 0 && length >= 0 && within + length <= chunkSize);
        if (!blocks)
            return (0, chunkSize);
        int from = within / BlockSize * BlockSize;
        int to = (within + length + BlockSize - 1) / BlockSize * BlockSize;
        return (from, Math.Max(to, from + BlockSize) - from);
    }

    /// <summary>
    /// Checks <paramref name="data"/>, bytes [<paramref name="from"/>, from + data.Length) of a chunk
    /// without a table, against what the map records for <paramref name="replica"/>. The range must be
    /// one <see cref="VerifiedRange"/> returned: the whole chunk.
    /// </summary>
    public static ChunkVerdict Verify(Replica replica, int chunkSize, int from, ReadOnlySpan<byte> data)
    {
        if (from != 0 || data.Length != chunkSize)
            throw new ArgumentException($"bytes {from}..{from + data.Length} of a {chunkSize}-byte chunk cannot be verified alone: its checksum covers the whole chunk");
        uint actual = Crc32C.Compute(data);
        return new ChunkVerdict(replica, actual == replica.Crc, replica.Crc, actual);
    }

    /// <summary>
    /// Checks a replica's block table against the map, and that it is the table of this image's chunk
    /// and of its size (a misdirected or stale table is caught even where its CRC would match). On
    /// success <paramref name="crcs"/> holds one CRC per data block.
    /// </summary>
    public static ChunkVerdict VerifyTable(Replica replica, uint image, long chunk, int chunkSize, ReadOnlySpan<byte> table, out uint[]? crcs)
    {
        crcs = null;
        uint actual = Crc32C.Compute(table[..TableSize]);
        int n = chunkSize / BlockSize;
        bool ok = actual == replica.Crc
            && BinaryPrimitives.ReadUInt32LittleEndian(table) == TableMagic
            && BinaryPrimitives.ReadUInt16LittleEndian(table[4..]) == TableFormat
            && BinaryPrimitives.ReadUInt16LittleEndian(table[6..]) == n
            && BinaryPrimitives.ReadUInt32LittleEndian(table[8..]) == image
            && BinaryPrimitives.ReadInt64LittleEndian(table[12..]) == chunk;
        if (ok)
        {
            crcs = new uint[n];
            for (int k = 0; k < n; k++)
                crcs[k] = BinaryPrimitives.ReadUInt32LittleEndian(table[(EntriesAt + 4 * k)..]);
        }
        return new ChunkVerdict(replica, ok, replica.Crc, actual, ChunkVerdict.TableBlock);
    }

    /// <summary>
    /// Checks data blocks <paramref name="firstBlock"/>.. of a replica (<paramref name="data"/>: whole
    /// 4 KiB blocks) against its verified table; the verdict names the first block that does not match.
    /// </summary>
    public static ChunkVerdict VerifyBlocks(Replica replica, uint[] crcs, int firstBlock, ReadOnlySpan<byte> data)
    {
        System.Diagnostics.Debug.Assert(data.Length % BlockSize == 0 && firstBlock + data.Length / BlockSize <= crcs.Length);
        int k = FirstMismatch(crcs.AsSpan(firstBlock, data.Length / BlockSize), data, out uint actual);
        return k < 0
            ? new ChunkVerdict(replica, true, replica.Crc, replica.Crc, ChunkVerdict.TableBlock)
            : new ChunkVerdict(replica, false, crcs[firstBlock + k], actual, firstBlock + k);
    }

    /// <summary>
    /// The first block of <paramref name="data"/> whose CRC32C is not its entry of <paramref name="expected"/>
    /// (<paramref name="actual"/> its CRC), or -1. Blocks are summed up to 64 at a time by Crc32C.ComputeBlocks
    /// (four independent chains: about a fifth faster than one block at a time, measured on 1 MiB reads).
    /// </summary>
    internal static int FirstMismatch(ReadOnlySpan<uint> expected, ReadOnlySpan<byte> data, out uint actual)
    {
        System.Diagnostics.Debug.Assert(data.Length == expected.Length * BlockSize);
        Span<uint> sums = stackalloc uint[64];
        for (int k = 0; k < expected.Length; k += sums.Length)
        {
            int n = Math.Min(sums.Length, expected.Length - k);
            Crc32C.ComputeBlocks(data.Slice(k * BlockSize, n * BlockSize), BlockSize, sums[..n]);
            for (int j = 0; j < n; j++)
            {
                if (sums[j] != expected[k + j])
                {
                    actual = sums[j];
                    return k + j;
                }
            }
        }
        actual = 0;
        return -1;
    }

    /// <summary>Checks a whole block-checksummed extent (table, then every data block) of a replica.</summary>
    public static ChunkVerdict VerifyExtent(Replica replica, uint image, long chunk, int chunkSize, ReadOnlySpan<byte> extent)
    {
        var table = VerifyTable(replica, image, chunk, chunkSize, extent[..TableSize], out var crcs);
        return table.Ok ? VerifyBlocks(replica, crcs!, 0, extent.Slice(TableSize, chunkSize)) : table;
    }
}
