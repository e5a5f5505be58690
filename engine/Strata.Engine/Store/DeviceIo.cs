using Strata.Engine.Device;

namespace Strata.Engine.Store;

/// <summary>
/// Aligned region I/O through the device's DMA buffers, split into pieces no
/// larger than the device's transfer limit. Callers pass block-aligned ranges.
/// A device without alignment rules for buffers (no DirectIo: the page cache,
/// memory) reads into and writes from the caller's memory itself, without the
/// copy through a DMA buffer; the caller keeps it unchanged until the call completes.
/// </summary>
internal static class DeviceIo
{
    private const int MaxPiece = 1024 * 1024;

    internal static int PieceSize(IBlockDevice d) => Math.Min(MaxPiece, d.Geometry.MaxTransfer);

    /// <summary>
    /// Pieces of memory the device reads or writes directly (no copy through a buffer of MaxPiece):
    /// its own transfer limit. A chunk's extent with its block table (1 MiB + 4 KiB) is then one
    /// command, not a 1 MiB write and then, after it completed, a 4 KiB one (perf migrate --stages:
    /// the move's writes took two device round trips, 10.9 ms against fio's 5.6 ms).
    /// </summary>
    internal static int DirectPieceSize(IBlockDevice d) => Math.Max(1, d.Geometry.MaxTransfer);

    // Pooled: a read that waits for its device keeps no state machine box per call (issue 17).
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public static async ValueTask ReadAsync(IBlockDevice device, long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        if (AnyBuffer(device) || IsDmaReady(device, destination))
        {
            int piece = DirectPieceSize(device);
            for (int done = 0; done < destination.Length; done += piece)
                await device.ReadAsync(offset + done, destination.Slice(done, Math.Min(piece, destination.Length - done)), ct).ConfigureAwait(false);
            return;
        }
        for (int done = 0; done < destination.Length;)
        {
            int n = Math.Min(PieceSize(device), destination.Length - done);
            using var buf = device.Buffers.Rent(n);
            await device.ReadAsync(offset + done, buf.Memory, ct).ConfigureAwait(false);
            buf.Memory.CopyTo(destination[done..]);
            done += n;
        }
    }

    // Not pooled: most writes are gathered with AsTask() (Task.WhenAll), which would wrap a pooled box in a Task of its own.
    public static async ValueTask WriteAsync(IBlockDevice device, long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        if (AnyBuffer(device) || IsDmaReady(device, source))
        {
            int piece = DirectPieceSize(device);
            for (int done = 0; done < source.Length; done += piece)
                await device.WriteAsync(offset + done, source.Slice(done, Math.Min(piece, source.Length - done)), flags, ct).ConfigureAwait(false);
            return;
        }
        for (int done = 0; done < source.Length;)
        {
            int n = Math.Min(PieceSize(device), source.Length - done);
            using var buf = device.Buffers.Rent(n);
            source.Slice(done, n).CopyTo(buf.Memory);
            await device.WriteAsync(offset + done, buf.Memory, flags, ct).ConfigureAwait(false);
            done += n;
        }
    }

    /// <summary>
    /// <see cref="WriteAsync"/> for a caller that awaits it exactly once, without AsTask (a chunk's one
    /// replica write, which its commit round awaits): pooled, so no state machine box per write.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public static async ValueTask WritePooledAsync(IBlockDevice device, long offset, ReadOnlyMemory<byte> source)
    {
        if (AnyBuffer(device) || IsDmaReady(device, source))
        {
            int piece = DirectPieceSize(device);
            for (int done = 0; done < source.Length; done += piece)
                await device.WriteAsync(offset + done, source.Slice(done, Math.Min(piece, source.Length - done)), WriteFlags.None, default).ConfigureAwait(false);
            return;
        }
        for (int done = 0; done < source.Length;)
        {
            int n = Math.Min(PieceSize(device), source.Length - done);
            using var buf = device.Buffers.Rent(n);
            source.Slice(done, n).CopyTo(buf.Memory);
            await device.WriteAsync(offset + done, buf.Memory, WriteFlags.None, default).ConfigureAwait(false);
            done += n;
        }
    }

    /// <summary>
    /// Reads <paramref name="head"/> at <paramref name="offset"/> and <paramref name="rest"/> right after it
    /// (a chunk's block table and the chunk): one device call for both where the device reads into
    /// them directly and their total is one transfer (on a buffered file one preadv2 when the page cache
    /// holds them), else each as <see cref="ReadAsync"/>, at once. A failure is thrown once both are done.
    /// </summary>
    public static ValueTask ReadScatterAsync(IBlockDevice device, long offset, Memory<byte> head, Memory<byte> rest)
    {
        if (Together(device, head, rest))
            return device.ReadScatterAsync(offset, head, rest);
        return BothAsync(ReadAsync(device, offset, head), ReadAsync(device, offset + head.Length, rest));
    }

    /// <summary>
    /// Writes <paramref name="head"/> at <paramref name="offset"/> and <paramref name="rest"/> right after it
    /// (a chunk's block table and the chunk), for a caller that awaits it exactly once: one device call for
    /// both where the device writes from them directly and their total is one transfer (on a buffered file
    /// one pwritev2), else each as <see cref="WritePooledAsync"/>, at once. A failure is thrown once both are done.
    /// </summary>
    public static ValueTask WriteGatherPooledAsync(IBlockDevice device, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest)
    {
        if (Together(device, head, rest))
            return device.WriteGatherAsync(offset, head, rest);
        return BothAsync(WritePooledAsync(device, offset, head), WritePooledAsync(device, offset + head.Length, rest));
    }

    private static bool Together(IBlockDevice device, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest) =>
        head.Length + (long)rest.Length <= DirectPieceSize(device)
        && (AnyBuffer(device) || (IsDmaReady(device, head) && IsDmaReady(device, rest)));

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask BothAsync(ValueTask first, ValueTask second)
    {
        try
        {
            await first.ConfigureAwait(false);
        }
        finally
        {
            await second.ConfigureAwait(false);
        }
    }

    internal static bool AnyBuffer(IBlockDevice device) => (device.Geometry.Features & DeviceFeatures.DirectIo) == 0;

    /// <summary>
    /// Memory of a DMA buffer (any device's pool), aligned as this device needs: the device reads
    /// into or writes from it directly, without the copy through one of its own buffers (what a
    /// migration loop moving a chunk between targets relies on).
    /// </summary>
    internal static unsafe bool IsDmaReady(IBlockDevice device, ReadOnlyMemory<byte> memory)
    {
        if (!System.Runtime.InteropServices.MemoryMarshal.TryGetMemoryManager(memory, out DmaBuffer? buffer, out int start, out _))
            return false;
        int align = Math.Max(1, device.Geometry.BufferAlignment);
        return ((nint)(buffer.Pointer + start) & (align - 1)) == 0;
    }

    public static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;
}
