using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>An importing destination's I/O (docs/migration.md, "Import"): per chunk, imported or from the source.</summary>
public sealed partial class Image
{
    private async Task ImportReadAsync(ImageImport imp, ImageMeta meta, long offset, Memory<byte> destination)
    {
        int cs = meta.ChunkSize;
        for (long pos = offset; pos < offset + destination.Length;)
        {
            long index = pos / cs;
            int within = (int)(pos % cs);
            int n = (int)Math.Min(cs - within, offset + destination.Length - pos);
            var piece = destination.Slice((int)(pos - offset), n);
            // No lock for the choice: a write that completed before this read began made the chunk imported.
            if (imp.IsImported(index))
                await ReadPieceAsync(meta, index, within, piece).ConfigureAwait(false);
            else
                await imp.ReadSourceAsync(pos, piece).ConfigureAwait(false);
            pos += n;
        }
    }

    private async Task ImportWriteAsync(ImageImport imp, ImageMeta meta, long offset, ReadOnlyMemory<byte> source, bool durable)
    {
        int cs = meta.ChunkSize;
        long size = SourceSize;
        for (long pos = offset; pos < offset + source.Length;)
        {
            long index = pos / cs;
            int within = (int)(pos % cs);
            int n = (int)Math.Min(cs - within, offset + source.Length - pos);
            var piece = source.Slice((int)(pos - offset), n);
            using (await _locks.ChunkAsync(index).ConfigureAwait(false))
            {
                if (imp.IsImported(index))
                {
                    await _pool.ChunkIo.WriteAsync(Meta, index, within, piece, durable).ConfigureAwait(false);
                }
                else
                {
                    // Copy-up: the whole chunk from the source, the write laid over it.
                    int length = (int)Math.Min(cs, size - index * cs);
                    var chunk = new byte[length];
                    if (n < length)
                        await imp.ReadSourceAsync(index * cs, chunk).ConfigureAwait(false);
                    piece.CopyTo(chunk.AsMemory(within));
                    await _pool.ChunkIo.WriteAsync(Meta, index, 0, chunk, durable).ConfigureAwait(false);
                    imp.MarkImported(index);
                }
            }
            pos += n;
        }
    }

    /// <summary>
    /// The import job's step for one chunk: under its exclusive lock, unless imported already, read
    /// it from the source and write it unless it is all zeros (holes stay holes). Returns bytes written.
    /// </summary>
    internal async Task<long> ImportChunkAsync(ImageImport imp, long index, byte[] buffer, CancellationToken ct)
    {
        using var pass = await EnterAsync().ConfigureAwait(false);
        var meta = Meta;
        int cs = meta.ChunkSize;
        using (await _locks.ChunkAsync(index).ConfigureAwait(false))
        {
            if (imp.IsImported(index))
                return 0;
            int length = (int)Math.Min(cs, SourceSize - index * cs);
            var chunk = buffer.AsMemory(0, length);
            await imp.ReadSourceAsync(index * cs, chunk, ct).ConfigureAwait(false);
            if (!chunk.Span.ContainsAnyExcept((byte)0))
            {
                imp.MarkImported(index);
                return 0;
            }
            await _pool.ChunkIo.WriteAsync(Meta, index, 0, chunk, durable: false).ConfigureAwait(false);
            imp.MarkImported(index);
            return length;
        }
    }
}
