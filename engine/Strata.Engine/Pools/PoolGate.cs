using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The pool's I/O barrier (Lustre's barrier_freeze for one pool): every image
/// operation passes through it, and an upgrade step or `system prepare` closes it
/// to drain what is in flight; new operations wait until it reopens (held, never
/// failed). It also tells a pool job when every operation that entered before a
/// moment has left (<see cref="EarlierLeftAsync"/>), without holding new ones: the
/// passes are counted per epoch (a grace period, as RCU's). The open path is two
/// interlocked operations and no allocation.
/// </summary>
internal sealed class PoolGate
{
    /// <summary>The passes that entered while it was current and have not left.</summary>
    internal sealed class Epoch
    {
        public int Active;

        /// <summary>Set when a newer epoch replaces this one: completed by the last pass to leave.</summary>
        public TaskCompletionSource? Empty;

        public void Exit()
        {
            if (Interlocked.Decrement(ref Active) == 0)
                Volatile.Read(ref Empty)?.TrySetResult();
        }
    }

    private readonly Lock _sync = new();
    private volatile Epoch _epoch = new();
    private int _waiting;
    private volatile TaskCompletionSource? _closed;

    /// <summary>Completes once every epoch replaced so far is empty.</summary>
    private Task _earlier = Task.CompletedTask;

    private volatile TaskCompletionSource _closing = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile TaskCompletionSource _waitingForEarlier = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ValueTask<Ticket> EnterAsync()
    {
        while (true)
        {
            var closed = _closed;
            if (closed != null)
                return WaitThenEnterAsync(closed);
            var epoch = _epoch;
            Interlocked.Increment(ref epoch.Active);
            // Counted in the current epoch of an open gate; else (a close or a newer epoch came
            // between) step back out, maybe emptying the old epoch, and try again.
            if (_closed == null && ReferenceEquals(epoch, _epoch))
                return new ValueTask<Ticket>(new Ticket(epoch));
            epoch.Exit();
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

    /// <summary>Completes when the gate next starts closing (what a test waits for instead of polling).</summary>
    public Task Closing => _closing.Task;

    /// <summary>Completes when <see cref="EarlierLeftAsync"/> is next called (what a test waits for instead of polling).</summary>
    public Task WaitingForEarlier => _waitingForEarlier.Task;

    /// <summary>
    /// Completes once every operation that entered the gate before this call has left; operations
    /// entering from now on pass as usual and are not waited for. A pool job calls it after it changed
    /// where new replicas go: an operation that chose targets the old way is then done and its chunk
    /// mapped, so the job's pass over the mapped chunks sees it.
    /// </summary>
    public Task EarlierLeftAsync()
    {
        Task earlier;
        lock (_sync)
        {
            earlier = Retire();
            var signal = _waitingForEarlier;
            _waitingForEarlier = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            signal.TrySetResult();
        }
        return earlier;
    }

    /// <summary>Makes a new epoch current; returns a task that completes once the old one and every one before it is empty (caller holds _sync).</summary>
    private Task Retire()
    {
        var old = _epoch;
        _epoch = new Epoch();
        var empty = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // A full fence between the switch above and the count below: a pass that entered the old epoch
        // and is not counted here sees the new one and steps back out (EnterAsync).
        Interlocked.Exchange(ref old.Empty, empty);
        if (Volatile.Read(ref old.Active) == 0)
            empty.TrySetResult();
        _earlier = _earlier.IsCompleted ? empty.Task : Task.WhenAll(_earlier, empty.Task);
        return _earlier;
    }

    /// <summary>Closes the gate and waits until nothing is inside; dispose the result to reopen.</summary>
    public async Task<Closure> CloseAsync(CancellationToken ct = default)
    {
        Task drained;
        lock (_sync)
        {
            if (_closed != null)
                throw new InvalidOperationException("the pool gate is already closed");
            _closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _closing.TrySetResult();
            // Closed first: nothing enters the new epoch, so the ones before it are everything inside.
            drained = Retire();
        }
        var closure = new Closure(this);
        try
        {
            await drained.WaitAsync(ct).ConfigureAwait(false);
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
            _closed = null;
            _closing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        closed?.TrySetResult();
    }

    /// <summary>One operation inside the gate.</summary>
    public readonly struct Ticket(Epoch epoch) : IDisposable
    {
        public void Dispose() => epoch?.Exit();
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
