using System.Diagnostics;
using Strata.Engine.Pools;

namespace Strata.Engine.Control;

/// <summary>
/// The one place image I/O is measured. Every data path (the control API's `image write/read`
/// today, the NBD server later) gets its image from the daemon's OpenImageIoAsync, which wraps it
/// in this, so each path feeds the same instruments (strata.io.operations, .bytes, .errors,
/// .latency with tag op = read, write, trim, flush) and none can forget to.
/// Continuations are forced off the calling thread: devices complete I/O inline on their
/// poller, and what callers do after an I/O (serialize, write to a socket) must not run there.
/// <see cref="WithInlineContinuations"/> is the one exception, for a caller that only hands the
/// result on.
/// </summary>
public sealed class MeteredImage(Image image, StrataMetrics metrics, bool inlineContinuations = false) : IImageIo
{
    private readonly ConfigureAwaitOptions _await = inlineContinuations ? ConfigureAwaitOptions.None : ConfigureAwaitOptions.ForceYielding;

    public Image Image => image;

    /// <summary>
    /// The same image and instruments, but an operation completes on the thread the image completed
    /// it on: the device poller, for most I/O. Only for callers whose continuation does not block and
    /// does little (the NBD server queues the reply for its send loop): a thread hop per I/O costs
    /// more than the rest of a 4 KiB request's CPU on a busy machine.
    /// </summary>
    public MeteredImage WithInlineContinuations() => new(image, metrics, inlineContinuations: true);

    IImageIo IImageIo.WithInlineContinuations() => WithInlineContinuations();

    public long Size => image.Size;


    public int ChunkSize => image.ChunkSize;

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        long start = Stopwatch.GetTimestamp();
        bool ok = false;
        try
        {
            await image.ReadAsync(offset, destination).ConfigureAwait(false);
            ok = true;
        }
        finally
        {
            // A ValueTask takes no ConfigureAwaitOptions: the hop off the poller (ForceYielding) is an
            // await of a completed task, which queues the pooled state machine itself (no allocation).
            await Task.CompletedTask.ConfigureAwait(_await);
            metrics.RecordIo(IoOps.Read, destination.Length, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ok);
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(long offset, int length, IReadSink sink)
    {
        long start = Stopwatch.GetTimestamp();
        bool ok = false;
        try
        {
            await image.ReadAsync(offset, length, sink).ConfigureAwait(false);
            ok = true;
        }
        finally
        {
            await Task.CompletedTask.ConfigureAwait(_await);
            metrics.RecordIo(IoOps.Read, length, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ok);
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool durable = true)
    {
        long start = Stopwatch.GetTimestamp();
        bool ok = false;
        try
        {
            await image.WriteAsync(offset, source, durable).ConfigureAwait(false);
            ok = true;
        }
        finally
        {
            // A ValueTask takes no ConfigureAwaitOptions: the hop off the poller (ForceYielding) is an
            // await of a completed task, which queues the pooled state machine itself (no allocation).
            await Task.CompletedTask.ConfigureAwait(_await);
            metrics.RecordIo(IoOps.Write, source.Length, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ok);
        }
    }

    public async Task TrimAsync(long offset, long length)
    {
        long start = Stopwatch.GetTimestamp();
        bool ok = false;
        try
        {
            await image.TrimAsync(offset, length).ConfigureAwait(_await);
            ok = true;
        }
        finally
        {
            metrics.RecordIo(IoOps.Trim, 0, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ok);
        }
    }

    /// <summary>Not counted: a metadata lookup, no I/O.</summary>
    public int Allocation(long offset, long length, Span<AllocationRun> runs) => image.Allocation(offset, length, runs);

    public async Task FlushAsync()
    {
        long start = Stopwatch.GetTimestamp();
        bool ok = false;
        try
        {
            await image.FlushAsync().ConfigureAwait(_await);
            ok = true;
        }
        finally
        {
            metrics.RecordIo(IoOps.Flush, 0, Stopwatch.GetElapsedTime(start).TotalMilliseconds, ok);
        }
    }
}

/// <summary>Values of the `op` tag of the I/O instruments.</summary>
public static class IoOps
{
    public const string Read = "read";
    public const string Write = "write";
    public const string Trim = "trim";
    public const string Flush = "flush";
}
