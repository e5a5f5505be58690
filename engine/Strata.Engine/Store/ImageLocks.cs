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

        // Pooled: a contended chunk lock (writers of one stripe at QD 32) made a box per wait (issue 17).
        [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
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
/// Uncontended entry allocates nothing.
/// </summary>
internal sealed class AsyncReaderWriterLock
{
    private readonly object _sync = new();
    private int _state; // > 0: readers inside, -1: a writer inside, 0: free
    private int _waitingReaders;
    private TaskCompletionSource? _readerGate;
    private Queue<TaskCompletionSource>? _writers;

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
            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            (_writers ??= new Queue<TaskCompletionSource>()).Enqueue(tcs);
            return new ValueTask(tcs.Task);
        }
    }

    public void ExitRead()
    {
        TaskCompletionSource? wake = null;
        lock (_sync)
        {
            if (--_state == 0 && _writers is { Count: > 0 })
            {
                _state = -1;
                wake = _writers.Dequeue();
            }
        }
        wake?.SetResult();
    }

    public void ExitWrite()
    {
        TaskCompletionSource? wake = null;
        lock (_sync)
        {
            if (_waitingReaders > 0)
            {
                _state = _waitingReaders;
                _waitingReaders = 0;
                wake = _readerGate;
                _readerGate = null;
            }
            else if (_writers is { Count: > 0 })
            {
                wake = _writers.Dequeue(); // the lock passes straight to it (_state stays -1)
            }
            else
            {
                _state = 0;
            }
        }
        wake?.SetResult();
    }
}
