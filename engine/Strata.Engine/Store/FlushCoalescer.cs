using Strata.Engine.Device;

namespace Strata.Engine.Store;

/// <summary>
/// Shares device flushes between concurrent callers: a flush that started after
/// a caller asked covers that caller's completed writes, so it need not issue
/// its own. Up to <see cref="MaxInFlight"/> flushes run at once (concurrent
/// flushes overlap on the devices measured: docs/format.md, "Group commit");
/// callers beyond that wait and usually find their writes covered. A failed
/// flush is sticky: after it the device may have dropped dirty data, so no
/// later flush on this device may be reported as success, nor one that was
/// still running when the failure was seen.
/// </summary>
public sealed class FlushCoalescer
{
    public const int MaxInFlight = 4;

    private readonly IBlockDevice _device;
    private readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    private long _requested;
    private long _covered;
    private Exception? _failure;

    public FlushCoalescer(IBlockDevice device) => _device = device;

    /// <summary>The failure that made flushes impossible, if any.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>Completes when every write that completed before the call is durable.</summary>
    public Task FlushAsync() => FlushOnceAsync().AsTask();

    /// <summary>
    /// As <see cref="FlushAsync"/>, for a caller that awaits it exactly once and never calls AsTask
    /// (a commit round's flush): pooled, so no state machine box per flush (issue 17).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    public async ValueTask FlushOnceAsync()
    {
        long ticket = Interlocked.Increment(ref _requested);
        await _slots.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfFailed();
            if (Volatile.Read(ref _covered) >= ticket)
                return;
            // Every ticket issued so far belongs to a caller whose writes had completed.
            long covers = Interlocked.Read(ref _requested);
            try
            {
                await _device.FlushAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _failure, e, null);
                throw;
            }
            ThrowIfFailed();
            for (long seen = Volatile.Read(ref _covered); seen < covers;)
            {
                long was = Interlocked.CompareExchange(ref _covered, covers, seen);
                if (was == seen)
                    break;
                seen = was;
            }
        }
        finally
        {
            _slots.Release();
        }
    }

    private void ThrowIfFailed()
    {
        var failure = Volatile.Read(ref _failure);
        if (failure != null)
            throw new IOException($"{_device.Name}: an earlier flush failed; nothing written since can be made durable: {failure.Message}", failure);
    }
}
