namespace Strata.Engine.Nbd;

/// <summary>
/// The engine-wide bound on NBD payload bytes in flight (READ data being read or waiting to be
/// sent, WRITE data being received or written), over every connection. A connection whose next
/// request does not fit waits, in arrival order, before it reads further from its socket
/// (backpressure: the request is never failed for it). The largest payload always fits in an
/// empty budget, so a waiting connection proceeds once the requests ahead of it have gone.
/// </summary>
internal sealed class NbdPayloadBudget
{
    private readonly object _sync = new();
    private readonly LinkedList<NbdConnection> _waiters = new();
    private long _used;
    private long _peak;

    public NbdPayloadBudget(long limit) => Limit = limit;

    public long Limit { get; }

    /// <summary>Payload bytes in flight now.</summary>
    public long Used => Interlocked.Read(ref _used);

    /// <summary>The most payload bytes ever in flight at once.</summary>
    public long Peak => Interlocked.Read(ref _peak);

    /// <summary>
    /// Takes <paramref name="bytes"/> when they fit and no connection waits ahead of this one; else
    /// queues the connection (once) and returns false: it is woken (<see cref="NbdConnection.WakeForBudget"/>)
    /// when it is first in line and may try again.
    /// </summary>
    public bool TryTake(NbdConnection c, long bytes)
    {
        NbdConnection? next = null;
        lock (_sync)
        {
            var node = c.BudgetNode;
            bool first = _waiters.First == null || _waiters.First == node;
            if (!first || _used + bytes > Limit)
            {
                if (node.List == null)
                    _waiters.AddLast(node);
                return false;
            }
            _used += bytes;
            if (_used > _peak)
                Interlocked.Exchange(ref _peak, _used);
            if (node.List != null)
            {
                _waiters.Remove(node);
                next = _waiters.First?.Value; // it may fit as well
            }
        }
        next?.WakeForBudget();
        return true;
    }

    public void Give(long bytes)
    {
        NbdConnection? next;
        lock (_sync)
        {
            _used -= bytes;
            next = _waiters.First?.Value;
        }
        next?.WakeForBudget();
    }

    /// <summary>A connection that goes leaves the line (waking the next when it was first).</summary>
    public void Leave(NbdConnection c)
    {
        NbdConnection? next = null;
        lock (_sync)
        {
            var node = c.BudgetNode;
            if (node.List == null)
                return;
            bool wasFirst = _waiters.First == node;
            _waiters.Remove(node);
            if (wasFirst)
                next = _waiters.First?.Value;
        }
        next?.WakeForBudget();
    }
}
