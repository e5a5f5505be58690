using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>What checking bytes of one replica against the chunk map found.</summary>
/// <param name="Replica">The replica checked (target, extent, what the map records).</param>
/// <param name="Actual">The checksum of the bytes read.</param>
public readonly record struct ChunkVerdict(Replica Replica, uint Actual)
{
    /// <summary>The bytes are what the map recorded for this replica.</summary>
    public bool Ok => Actual == Replica.Crc;

    public uint Expected => Replica.Crc;
}

/// <summary>
/// The one place that computes what a chunk map records about a chunk's data and checks bytes
/// read back against it. Layouts 1-2: one CRC32C of the whole chunk, so verifying any part of a
/// chunk means reading all of it (<see cref="VerifiedRange"/>). Layout 3 (<c>block_checksums</c>,
/// docs/format.md "Per-block checksums") plugs in here: the range narrows to the 4 KiB blocks a
/// request touches and <see cref="Verify"/> checks each against the block CRCs of the chunk.
/// </summary>
internal static class ChunkChecksum
{
    /// <summary>What the chunk map records for a whole chunk's new contents.</summary>
    public static uint Of(ReadOnlySpan<byte> chunk) => Crc32C.Compute(chunk);

    /// <summary>
    /// The part of a chunk that must be read to verify bytes [<paramref name="within"/>,
    /// <paramref name="within"/> + <paramref name="length"/>) of it: the whole chunk while there
    /// is one checksum per chunk.
    /// </summary>
    public static (int From, int Length) VerifiedRange(int chunkSize, int within, int length)
    {
        System.Diagnostics.Debug.Assert(within >= 0 && length >= 0 && within + length <= chunkSize);
        return (0, chunkSize);
    }

    /// <summary>
    /// Checks <paramref name="data"/>, bytes [<paramref name="from"/>, from + data.Length) of
    /// <paramref name="replica"/>'s extent, against what the map records for it. The range must be
    /// one <see cref="VerifiedRange"/> returned.
    /// </summary>
    public static ChunkVerdict Verify(Replica replica, int chunkSize, int from, ReadOnlySpan<byte> data)
    {
        if (from != 0 || data.Length != chunkSize)
            throw new ArgumentException($"bytes {from}..{from + data.Length} of a {chunkSize}-byte chunk cannot be verified alone: its checksum covers the whole chunk");
        return new ChunkVerdict(replica, Crc32C.Compute(data));
    }
}
