using Strata.Engine.Pools;

namespace Strata.Perf.Common;

/// <summary>Fills a benchmark image before its rows, so every read hits a mapped (checksummed) chunk.</summary>
internal static class ImageFill
{
    /// <summary>Writes the whole image once with random bytes, 1 MiB at a time, 8 in flight.</summary>
    public static async Task FillAsync(Image image)
    {
        const int piece = 1 << 20;
        long next = -piece;
        long size = image.Size;
        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
        {
            var buf = new byte[piece];
            System.Security.Cryptography.RandomNumberGenerator.Fill(buf);
            for (long at; (at = Interlocked.Add(ref next, piece)) < size;)
                await image.WriteAsync(at, buf.AsMemory(0, (int)Math.Min(piece, size - at)));
        })));
    }
}
