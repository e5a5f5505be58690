using System.Threading.Tasks.Sources;

namespace Strata.Engine.Nbd;

/// <summary>
/// An auto-reset event for one waiter that allocates nothing: a Set with nobody waiting is
/// remembered and satisfies the next wait. Waiters must re-check their condition (a
/// remembered Set may be stale).
/// </summary>
internal sealed class SingleWaiterSignal : IValueTaskSource
{
    private readonly object _sync = new();
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private bool _signaled;
    private bool _waiting;

    public ValueTask WaitAsync()
    {
        lock (_sync)
        {
            if (_signaled)
            {
                _signaled = false;
                return default;
            }
            if (_waiting)
                throw new InvalidOperationException("a SingleWaiterSignal has one waiter at a time");
            _core.Reset();
            _waiting = true;
            return new ValueTask(this, _core.Version);
        }
    }

    public void Set()
    {
        lock (_sync)
        {
            if (!_waiting)
            {
                _signaled = true;
                return;
            }
            _waiting = false;
        }
        _core.SetResult(true);
    }

    public void GetResult(short token) => _core.GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
