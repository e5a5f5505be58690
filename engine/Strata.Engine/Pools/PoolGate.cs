using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The pool's I/O barrier (Lustre's barrier_freeze for one pool): every image
/// operation passes through it, and an upgrade step or `system prepare` closes it
/// to drain what is in flight; new operations wait until it reopens (held, never
/// failed). The open path is two interlocked operations and no allocation.
/// </summary>
internal sealed class PoolGate
{
    private readonly Lock _sync = new();
    private int _active;
    private int _waiting;
    private volatile TaskCompletionSource? _closed;
    private volatile TaskCompletionSource? _drained;
    private volatile TaskCompletionSource _closing = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ValueTask<Ticket> EnterAsync()
    {
        while (true)
        {
            var closed = _closed;
            if (closed != null)
                return WaitThenEnterAsync(closed);
            Interlocked.Increment(ref _active);
            if (_closed == null)
                return new ValueTask<Ticket>(new Ticket(this));
            // Raced with a close: step back out (maybe completing its drain) and wait.
            Exit();
        }
    }

    private async ValueTask<Ticket> WaitThenEnterAsync(TaskCompletionSource closed)
    {
        Interlocked.Increment(ref _waiting);
        try
        {
            await closed.Task.ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _waiting);
        }
        return await EnterAsync().ConfigureAwait(false);
    }

    /// <summary>Operations waiting for the gate to reopen (held by a barrier, a prepare or an upgrade step).</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    private void Exit()
    {
        if (Interlocked.Decrement(ref _active) == 0 && _closed != null)
            _drained?.TrySetResult();
    }

    /// <summary>Completes when the gate next starts closing (what a test waits for instead of polling).</summary>
    public Task Closing => _closing.Task;

    /// <summary>Closes the gate and waits until nothing is inside; dispose the result to reopen.</summary>
    public async Task<Closure> CloseAsync(CancellationToken ct = default)
    {
        TaskCompletionSource drained;
        lock (_sync)
        {
            if (_closed != null)
                throw new InvalidOperationException("the pool gate is already closed");
            drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _drained = drained;
            _closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _closing.TrySetResult();
        }
        if (Volatile.Read(ref _active) == 0)
            drained.TrySetResult();
        var closure = new Closure(this);
        try
        {
            await drained.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        catch
        {
            closure.Dispose();
            throw;
        }
        return closure;
    }

    private void Open()
    {
        TaskCompletionSource? closed;
        lock (_sync)
        {
            closed = _closed;
            _drained = null;
            _closed = null;
            _closing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        closed?.TrySetResult();
    }

    /// <summary>One operation inside the gate.</summary>
    public readonly struct Ticket(PoolGate gate) : IDisposable
    {
        public void Dispose() => gate?.Exit();
    }

    /// <summary>The gate held closed; disposing reopens it.</summary>
    public sealed class Closure(PoolGate gate) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
                gate.Open();
        }
    }
}
