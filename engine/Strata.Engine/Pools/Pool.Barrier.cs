using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>A pool's part in a barrier (<see cref="EngineBarrier"/>): its gate held closed, metadata changes refused.</summary>
public sealed partial class Pool
{
    private PoolGate.Closure? _barrierClosure;
    private volatile string? _barrierReason;

    /// <summary>
    /// Freezes the pool: image operations already inside finish and new ones wait at the gate (held,
    /// not failed), metadata changes are refused with <paramref name="reason"/>, and a flush round
    /// makes every acknowledged write durable. Refused while the pool cannot change (read-only,
    /// prepared, upgrading).
    /// </summary>
    internal async Task FreezeAsync(string reason, CancellationToken ct)
    {
        await MetaLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            if (_upgradeTask is { IsCompleted: false })
                throw new BusyException($"pool '{Label}' is upgrading; freeze after the upgrade completes");
            // Metadata changes take MetaLock and check the reason under it: none is half done now.
            _barrierClosure = await Gate.CloseAsync(ct).ConfigureAwait(false);
            _barrierReason = reason;
        }
        finally
        {
            MetaLock.Release();
        }
        await Log.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>Accepts metadata changes again and reopens the gate: held operations go on.</summary>
    internal void Thaw()
    {
        _barrierReason = null;
        Interlocked.Exchange(ref _barrierClosure, null)?.Dispose();
    }

    /// <summary>Image operations waiting at the pool's gate.</summary>
    public int HeldRequests => Gate.Waiting;

    private void ThrowIfFrozen()
    {
        if (_barrierReason is { } b)
            throw new BusyException($"pool '{Label}' {b}");
    }
}
