namespace Strata.Engine.Migration;

/// <summary>
/// A counting gate for one target's read or write slots whose <see cref="Release"/> hands the slot
/// to the first waiter and runs its continuation on the releasing thread. A migration's slot is
/// released where its I/O completed (the poller thread, DeviceOptions.InlineCompletions), and the
/// waiter's continuation does little more than submit its own I/O before its next await, so the
/// target's queue is refilled at once. SemaphoreSlim runs waiters' continuations on the thread
/// pool instead: perf migrate --stages showed a quarter to half of the slots held by chunks whose
/// continuation had not run yet (the slot taken, its I/O not issued) when the pool was busy.
/// </summary>
internal sealed class SlotGate(int slots)
{
    private readonly Queue<TaskCompletionSource> _waiters = new();
    private int _free = slots;

    /// <summary>Takes a slot, or waits for one in order of arrival.</summary>
    public Task TakeAsync()
    {
        lock (_waiters)
        {
            if (_free > 0)
            {
                _free--;
                return Task.CompletedTask;
            }
            // Without RunContinuationsAsynchronously: Release runs the waiter inline.
            var waiter = new TaskCompletionSource();
            _waiters.Enqueue(waiter);
            return waiter.Task;
        }
    }

    /// <summary>Gives a slot back: to the first waiter (its continuation runs now, on this thread), else to the gate.</summary>
    public void Release()
    {
        TaskCompletionSource? next;
        lock (_waiters)
        {
            if (!_waiters.TryDequeue(out next))
            {
                _free++;
                return;
            }
        }
        next.SetResult();
    }
}
