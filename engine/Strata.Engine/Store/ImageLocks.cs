using System.Threading.Tasks.Sources;

namespace Strata.Engine.Store;

/// <summary>
/// Striped per-chunk locks of one image. Reads share a stripe (they only need the
/// chunk's mapping and extents to stay put); writes, trims and resizes take it
/// exclusively. Taking every stripe exclusively excludes every chunk operation.
/// Enough stripes that 32 concurrent random I/Os rarely meet on one by chance.
/// </summary>
internal sealed class ImageLocks
{
    public const int Stripes = 1024;
    private readonly AsyncReaderWriterLock[] _stripes = Enumerable.Range(0, Stripes).Select(_ => new AsyncReaderWriterLock()).ToArray();

    private AsyncReaderWriterLock Stripe(long chunk) => _stripes[(int)((ulong)chunk % Stripes)];

    /// <summary>Shared hold on a chunk: its mapping cannot change (nor its extents be reused) until disposed.</summary>
    public ValueTask<Held> ReadAsync(long chunk) => Enter(Stripe(chunk), write: false);

    /// <summary>Exclusive hold on a chunk.</summary>
    public ValueTask<Held> ChunkAsync(long chunk) => Enter(Stripe(chunk), write: true);

    private static ValueTask<Held> Enter(AsyncReaderWriterLock l, bool write)
    {
        var wait = write ? l.EnterWriteAsync() : l.EnterReadAsync();
        if (wait.IsCompletedSuccessfully)
            return new ValueTask<Held>(new Held(l, write));
        return Slow(wait, l, write);

        // Pooled: a contended chunk lock (writers of one stripe at QD 32) made a box per wait (issue 17);
        // the box is rented by the waiter and given back where the holder's exit resumed it.
        [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder<>))]
        static async ValueTask<Held> Slow(ValueTask wait, AsyncReaderWriterLock l, bool write)
        {
            await wait.ConfigureAwait(false);
            return new Held(l, write);
        }
    }

    /// <summary>
    /// Holds the consecutive chunks [first, first + count): their stripes, each once, in
    /// ascending stripe order like <see cref="AllAsync"/>, so holders of several stripes
    /// never wait for each other in a cycle.
    /// </summary>
    public async ValueTask<ManyHeld> ChunksAsync(long first, long count, bool write)
    {
        int n = (int)Math.Min(count, Stripes);
        var held = new int[n];
        int start = (int)((ulong)first % Stripes);
        for (int i = 0; i < n; i++)
            held[i] = (start + i) % Stripes;
        Array.Sort(held);
        for (int i = 0; i < n; i++)
        {
            var l = _stripes[held[i]];
            try
            {
                await (write ? l.EnterWriteAsync() : l.EnterReadAsync()).ConfigureAwait(false);
            }
            catch
            {
                new ManyHeld(_stripes, held.AsMemory(0, i), write).Dispose();
                throw;
            }
        }
        return new ManyHeld(_stripes, held, write);
    }

    public readonly struct ManyHeld(AsyncReaderWriterLock[] stripes, ReadOnlyMemory<int> held, bool write) : IDisposable
    {
        public void Dispose()
        {
            foreach (int s in held.Span)
            {
                if (write)
                    stripes[s].ExitWrite();
                else
                    stripes[s].ExitRead();
            }
        }
    }

    public async Task<IDisposable> AllAsync()
    {
        foreach (var s in _stripes)
            await s.EnterWriteAsync().ConfigureAwait(false);
        return new AllHeld(_stripes);
    }

    public readonly struct Held(AsyncReaderWriterLock l, bool write) : IDisposable
    {
        public void Dispose()
        {
            if (write)
                l.ExitWrite();
            else
                l.ExitRead();
        }
    }

    private sealed class AllHeld(AsyncReaderWriterLock[] stripes) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
                foreach (var s in stripes)
                    s.ExitWrite();
        }
    }
}

/// <summary>
/// A small async reader/writer lock. New readers queue behind a waiting writer;
/// a leaving writer admits every waiting reader first, so neither side starves.
/// Uncontended entry allocates nothing, nor does a writer's wait (a pooled <see cref="WriterWait"/>).
/// </summary>
internal sealed class AsyncReaderWriterLock
{
    private readonly object _sync = new();
    private int _state; // > 0: readers inside, -1: a writer inside, 0: free
    private int _waitingReaders;
    private TaskCompletionSource? _readerGate;
    private Queue<WriterWait>? _writers;

    public ValueTask EnterReadAsync()
    {
        lock (_sync)
        {
            if (_state >= 0 && (_writers == null || _writers.Count == 0))
            {
                _state++;
                return default;
            }
            _readerGate ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waitingReaders++;
            return new ValueTask(_readerGate.Task);
        }
    }

    public ValueTask EnterWriteAsync()
    {
        lock (_sync)
        {
            if (_state == 0)
            {
                _state = -1;
                return default;
            }
            var wait = WriterWait.Rent();
            (_writers ??= new Queue<WriterWait>()).Enqueue(wait);
            return wait.Task;
        }
    }

    public void ExitRead()
    {
        WriterWait? wake = null;
        lock (_sync)
        {
            if (--_state == 0 && _writers is { Count: > 0 })
            {
                _state = -1;
                wake = _writers.Dequeue();
            }
        }
        wake?.Grant();
    }

    public void ExitWrite()
    {
        TaskCompletionSource? readers = null;
        WriterWait? writer = null;
        lock (_sync)
        {
            if (_waitingReaders > 0)
            {
                _state = _waitingReaders;
                _waitingReaders = 0;
                readers = _readerGate;
                _readerGate = null;
            }
            else if (_writers is { Count: > 0 })
            {
                writer = _writers.Dequeue(); // the lock passes straight to it (_state stays -1)
            }
            else
            {
                _state = 0;
            }
        }
        readers?.SetResult();
        writer?.Grant();
    }

    /// <summary>
    /// A writer's wait for the lock, awaited exactly once (the ValueTask of <see cref="EnterWriteAsync"/>),
    /// then reused: a TaskCompletionSource and its task per contended write before (issue 17). The writer
    /// resumes on the thread pool, not on the thread that let the lock go, as from the TaskCompletionSource
    /// (RunContinuationsAsynchronously): queued as this object, so that no work item is made either.
    /// </summary>
    internal sealed class WriterWait : IValueTaskSource, IThreadPoolWorkItem
    {
        private ManualResetValueTaskSourceCore<bool> _core;
        private Threading.QueuedContinuation _continuation;

        public static WriterWait Rent() => Threading.SharedPool<WriterWait>.Rent();

        public ValueTask Task => new(this, _core.Version);

        /// <summary>The lock is the writer's: resume it.</summary>
        public void Grant() => _core.SetResult(true);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _continuation.OnCompleted(ref _core, this, continuation, state, token, flags);

        void IThreadPoolWorkItem.Execute() => _continuation.Run();

        /// <summary>The writer takes the lock, once; the wait is reused from then on.</summary>
        public void GetResult(short token)
        {
            try
            {
                _core.GetResult(token);
            }
            finally
            {
                _core.Reset();
                _core.RunContinuationsAsynchronously = false;
                Threading.SharedPool<WriterWait>.Return(this);
            }
        }
    }
}
