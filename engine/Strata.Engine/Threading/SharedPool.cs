using System.Collections.Concurrent;

namespace Strata.Engine.Threading;

/// <summary>
/// Reusable objects of one type that every thread shares: one kept per thread, then up to
/// <see cref="MaxPooled"/> in a queue, else a new one. An object rented on one thread and returned
/// on another (a write's async step, resumed on the device's polling thread) goes back to the queue,
/// where the runtime's per-thread caches would drop it. The async method builders' boxes and the
/// chunk lock's writer waits use it.
/// </summary>
internal static class SharedPool<T> where T : class, new()
{
    /// <summary>
    /// Objects kept beyond one per thread: as many as may be in flight at once on a busy server (a
    /// write's steps at every connection's queue depth); a box is a few hundred bytes, kept only once
    /// that many were in flight together.
    /// </summary>
    public const int MaxPooled = 1024;

    [ThreadStatic]
    private static T? t_cached;
    private static readonly ConcurrentQueue<T> s_pool = new();
    private static int s_count;

    /// <summary>This thread's object if it has one, else one from the queue, else a new one.</summary>
    public static T Rent()
    {
        var item = t_cached;
        if (item != null)
        {
            t_cached = null;
            return item;
        }
        if (s_pool.TryDequeue(out item))
        {
            Interlocked.Decrement(ref s_count);
            return item;
        }
        return new T();
    }

    /// <summary>Keeps a cleared object for the next <see cref="Rent"/> (dropped when the queue is full).</summary>
    public static void Return(T item)
    {
        if (t_cached == null)
        {
            t_cached = item;
            return;
        }
        if (Interlocked.Increment(ref s_count) <= MaxPooled)
            s_pool.Enqueue(item);
        else
            Interlocked.Decrement(ref s_count);
    }
}

/// <summary>
/// The continuation of a reusable IValueTaskSource that resumes its awaiter on the thread pool, queued as
/// the source itself (an IThreadPoolWorkItem), not through the core's asynchronous continuation, which
/// makes a work item each time (issue 17). An awaiter that flows a context (none on the write path:
/// ConfigureAwait(false)) gets the core's own way. The source calls <see cref="OnCompleted"/> from its
/// IValueTaskSource.OnCompleted and <see cref="Run"/> from IThreadPoolWorkItem.Execute.
/// </summary>
internal struct QueuedContinuation
{
    private static readonly Action<object?> s_queue = w => ThreadPool.UnsafeQueueUserWorkItem((IThreadPoolWorkItem)w!, preferLocal: true);

    private Action<object?>? _continuation;
    private object? _state;

    public void OnCompleted(ref System.Threading.Tasks.Sources.ManualResetValueTaskSourceCore<bool> core, IThreadPoolWorkItem source,
        Action<object?> continuation, object? state, short token, System.Threading.Tasks.Sources.ValueTaskSourceOnCompletedFlags flags)
    {
        if (flags != System.Threading.Tasks.Sources.ValueTaskSourceOnCompletedFlags.None)
        {
            core.RunContinuationsAsynchronously = true;
            core.OnCompleted(continuation, state, token, flags);
            return;
        }
        _continuation = continuation;
        _state = state;
        core.OnCompleted(s_queue, source, token, flags);
    }

    /// <summary>Runs the awaiter's continuation (on the pool thread), forgetting it first.</summary>
    public void Run()
    {
        var continuation = _continuation!;
        var state = _state;
        _continuation = null;
        _state = null;
        continuation(state);
    }
}
