namespace Strata.Engine.Pools;

/// <summary>
/// Image I/O as a data path sees it (the NBD server, the control API's read and write): the host
/// hands out a metered implementation (Control.MeteredImage), so every path is measured the same way
/// and the data paths depend on this interface, not on Control.
/// </summary>
public interface IImageIo
{
    /// <summary>The image the I/O goes to (its pool, for state and clients).</summary>
    Image Image { get; }

    long Size { get; }

    int ChunkSize { get; }

    /// <summary>A ValueTask to await once (implementations pool it: a 4 KiB request allocates nothing).</summary>
    ValueTask ReadAsync(long offset, Memory<byte> destination);

    /// <summary>durable: false is a writeback write, durable at the next flush round (Image.WriteAsync). A ValueTask to await once.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool durable = true);

    Task TrimAsync(long offset, long length);

    Task FlushAsync();

    /// <summary>Which bytes hold data (Image.Allocation): metadata only, answered at once.</summary>
    int Allocation(long offset, long length, Span<AllocationRun> runs);

    /// <summary>The same I/O, completing on the thread the device completed it on (for callers that only hand the result on).</summary>
    IImageIo WithInlineContinuations();
}
