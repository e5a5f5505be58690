using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The largest and smallest pool and image sizes (docs/operations.md, "Size limits"). Sizes come
/// from outside (CLI, API, log records); bounding them here keeps every offset, chunk count and
/// shard-size computation below far from 2^63, so none of them can wrap.
/// </summary>
public static class SizeLimits
{
    /// <summary>1 PiB: the largest pool (data bytes over all targets).</summary>
    public const long MaxPoolSize = 1L << 50;

    /// <summary>256 KiB: the smallest pool; below it a shard's log and checkpoints outweigh its data.</summary>
    public const long MinPoolSize = 256 * 1024;

    /// <summary>1 PiB: the largest image (thin; it may be larger than its pool).</summary>
    public const long MaxImageSize = 1L << 50;

    public static void CheckPoolSize(long size)
    {
        if (size < MinPoolSize || size > MaxPoolSize)
            throw new InvalidRequestException($"pool size {Bytes(size)} is out of range: a pool holds {Bytes(MinPoolSize)} to {Bytes(MaxPoolSize)}");
    }

    public static void CheckImageSize(long size)
    {
        if (size < 0 || size > MaxImageSize)
            throw new InvalidRequestException($"image size {Bytes(size)} is out of range: an image holds 0 to {Bytes(MaxImageSize)}");
    }

    /// <summary>Chunks needed to hold size bytes, without the (size + cs - 1) that wraps near 2^63.</summary>
    public static long ChunkCount(long size, int chunkSize) => size / chunkSize + (size % chunkSize != 0 ? 1 : 0);

    private static string Bytes(long b) =>
        b >= 1L << 50 && b % (1L << 50) == 0 ? (b >> 50).ToString(CultureInfo.InvariantCulture) + " PiB"
        : b >= 1024 && b % 1024 == 0 && b < 1L << 30 ? (b >> 10).ToString(CultureInfo.InvariantCulture) + " KiB"
        : b.ToString(CultureInfo.InvariantCulture) + " bytes";
}
