namespace Strata.Engine.Pools;

/// <summary>
/// Takes a read's data as the store verifies it (Image.ReadAsync with a sink): each byte of the
/// request exactly once, in pieces that may come in any order and from several threads at once
/// (runs of a request complete on different threads). A piece's memory is the sink's only until
/// the returned task completes. The store holds the piece's chunk read lock until then, so a sink
/// must not wait for anything outside the engine (a client's socket): it copies what it cannot
/// hand on at once (NbdConnection.ReadPieces.cs).
/// </summary>
public interface IReadSink
{
    /// <summary>
    /// Bytes [at, at + n) of the request, verified: <c>buffer[headroom..]</c> (n = buffer.Length -
    /// headroom). The <paramref name="headroom"/> bytes in front of them are the sink's to overwrite
    /// (a header sent with the data, without a copy of it).
    /// </summary>
    ValueTask DataAsync(int at, Memory<byte> buffer, int headroom);

    /// <summary>Bytes [at, at + length) of the request read as zeroes (a hole: no chunk mapped).</summary>
    ValueTask HoleAsync(int at, int length);
}

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

    /// <summary>
    /// A read whose data goes to <paramref name="sink"/> piece by piece as it is verified, straight from
    /// the store's device buffers (no copy into a destination of the caller's). A ValueTask to await
    /// once; when it completes every byte was delivered, unless it failed.
    /// </summary>
    ValueTask ReadAsync(long offset, int length, IReadSink sink);

    /// <summary>durable: false is a writeback write, durable at the next flush round (Image.WriteAsync). A ValueTask to await once.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool durable = true);

    Task TrimAsync(long offset, long length);

    Task FlushAsync();

    /// <summary>Which bytes hold data (Image.Allocation): metadata only, answered at once.</summary>
    int Allocation(long offset, long length, Span<AllocationRun> runs);

    /// <summary>The same I/O, completing on the thread the device completed it on (for callers that only hand the result on).</summary>
    IImageIo WithInlineContinuations();
}
