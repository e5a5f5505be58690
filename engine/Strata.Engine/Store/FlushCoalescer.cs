using Strata.Engine.Device;

namespace Strata.Engine.Store;

/// <summary>
/// Shares device flushes between concurrent callers: a flush that started after
/// a caller asked covers that caller's completed writes, so it need not issue
/// its own. A failed flush is sticky: after it the device may have dropped dirty
/// data, so no later flush on this device may be reported as success.
/// </summary>
public sealed class FlushCoalescer
{
    private readonly IBlockDevice _device;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private long _requested;
    private long _covered;
    private Exception? _failure;

    public FlushCoalescer(IBlockDevice device) => _device = device;

    /// <summary>The failure that made flushes impossible, if any.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>Completes when every write that completed before the call is durable.</summary>
    public async Task FlushAsync()
    {
        long ticket = Interlocked.Increment(ref _requested);
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_failure != null)
                throw new IOException($"{_device.Name}: an earlier flush failed; nothing written since can be made durable: {_failure.Message}", _failure);
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
                _failure = e;
                throw;
            }
            Volatile.Write(ref _covered, covers);
        }
        finally
        {
            _gate.Release();
        }
    }
}
