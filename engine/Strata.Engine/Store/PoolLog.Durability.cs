using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// When commits are durable and what waits for it: flush requests, writers out of space, frees
/// deferred until the records that superseded their extents are durable, fresh-extent holds, and
/// the writeback flush timer.
/// </summary>
internal sealed partial class PoolLog
{
    private int _writebackTimer;
    /// <summary>Frees waiting for a commit to be durable: an action, or (no closure per write) a chunk mapping's extents to free.</summary>
    private readonly Queue<(long Ordinal, Action? Free, ChunkMap? Chunk, int ChunkSize)> _deferredFrees = new();
    private long _lastDeferred;


    /// <summary>
    /// Completes once every record applied before the call is durable: at once when nothing was
    /// committed as writeback since the last flush round, else after a flush round of its own.
    /// </summary>
    public Task FlushAsync()
    {
        if (!FlushPending)
        {
            _pool.ThrowIfNotLoggable();
            return Task.CompletedTask;
        }
        return Enqueue([]);
    }

    /// <summary>
    /// Commits <paramref name="records"/> once every record applied before the call is durable
    /// (<see cref="FlushAsync"/> first). For a record that vouches for what was seen before it, such as
    /// a job's cursor or end: a writeback record it relied on is dropped at replay if its data did not
    /// reach the disk, and a flush that fails leaves the pool read-only before these are written.
    /// </summary>
    public async Task CommitAfterFlushAsync(MetaRecord[] records)
    {
        await FlushAsync().ConfigureAwait(false);
        await CommitAsync(records).ConfigureAwait(false);
    }

    /// <summary>
    /// For a writer out of space (that holds no fresh extents itself): says true once trying again may
    /// find space, false when nothing can return any. When writeback commits are not durable yet or
    /// frees wait for a flush, it runs a flush round, which returns the extents they superseded. Else,
    /// when other writes hold fresh extents they have not committed (<see cref="HoldFresh"/>), it waits
    /// until one commits (the extents it supersedes then wait for a flush) or gives its extents back.
    /// Concurrent writers may take what came back first, so callers try again, up to
    /// <see cref="SpaceRetries"/> times, before reporting ENOSPC.
    /// </summary>
    /// <param name="frees">
    /// <see cref="Pool.ExtentFrees"/> read before the attempt that found no space. What this sees is
    /// the state after that attempt: a flush round or a write that finished in between may have
    /// returned extents and left nothing pending or held, so extents freed since also say true.
    /// </param>
    public async Task<bool> FlushForSpaceAsync(long frees)
    {
        if (_pool.BeforeSpaceCheck is { } hook)
            await hook().ConfigureAwait(false);
        bool released = !FlushPending && await WaitForFreshReleasedAsync().ConfigureAwait(false);
        // A released write may have left frees waiting for a flush (checked again either way).
        if (!FlushPending)
            return released || _pool.ExtentFrees != frees;
        await Enqueue([]).ConfigureAwait(false);
        return true;
    }

    /// <summary>Writeback commits are not durable yet or frees wait for a flush: a flush round has work (and may return extents).</summary>
    private bool FlushPending => Volatile.Read(ref _writebackEnqueued) > Volatile.Read(ref _durableOrdinal) || HasDeferredFrees;

    /// <summary>
    /// Times a writer out of space tries again, each after a flush round or another write's commit.
    /// Each attempt follows progress by some writer; only a writer that others overtake this often fails.
    /// </summary>
    public const int SpaceRetries = 64;

    private long _freshHolders, _spaceWaiters;
    private TaskCompletionSource _freshReleased = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// A write has allocated every extent it needs and holds them until its commit is queued and the
    /// extents it supersedes are freed or deferred (<see cref="ReleaseFresh"/>, once). Writers out of space
    /// wait for such writes rather than report ENOSPC while the space is in flight.
    /// </summary>
    public void HoldFresh() => Interlocked.Increment(ref _freshHolders);

    public void ReleaseFresh()
    {
        Interlocked.Decrement(ref _freshHolders);
        if (Volatile.Read(ref _spaceWaiters) > 0)
            Interlocked.Exchange(ref _freshReleased, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    /// <summary>True after some write released its fresh extents; false at once when none holds any.</summary>
    private async Task<bool> WaitForFreshReleasedAsync()
    {
        Interlocked.Increment(ref _spaceWaiters);
        try
        {
            // The signal is read before the count: a release after the count was read completes it.
            var released = Volatile.Read(ref _freshReleased);
            if (Interlocked.Read(ref _freshHolders) == 0)
                return false;
            await released.Task.ConfigureAwait(false);
            return true;
        }
        finally
        {
            Interlocked.Decrement(ref _spaceWaiters);
        }
    }

    /// <summary>Extents waiting for a flush round before they may be reused.</summary>
    public bool HasDeferredFrees
    {
        get
        {
            lock (_deferredFrees)
                return _deferredFrees.Count > 0;
        }
    }

    /// <summary>
    /// Runs <paramref name="free"/> once every record applied so far is durable (at once if it is):
    /// extents that a writeback record superseded stay allocated until that record is durable, since
    /// a crash before then replays the mapping that still refers to them.
    /// </summary>
    public void FreeWhenDurable(Action free)
    {
        if (!DeferFree(free, null, 0))
            free();
    }

    /// <summary>
    /// As <see cref="FreeWhenDurable"/> with Pool.FreeChunk(<paramref name="old"/>, <paramref name="chunkSize"/>), without a
    /// closure per call; <paramref name="old"/>, superseded by the caller's write, then goes back to the spares (when reusable).
    /// </summary>
    public void FreeChunkWhenDurable(ChunkMap old, int chunkSize)
    {
        if (!DeferFree(null, old, chunkSize))
        {
            _pool.FreeChunk(old, chunkSize);
            _pool.MapSpares.Return(old);
        }
    }

    /// <summary>Queues a free behind the last commit queued; false when that commit is durable already (the caller frees now).</summary>
    private bool DeferFree(Action? free, ChunkMap? chunk, int chunkSize)
    {
        // The caller queued the commit that superseded these extents before it called: this read sees that
        // ordinal or a later one (a free may wait longer, never less), without the state's lock every writer takes.
        long queued = Volatile.Read(ref _enqueued);
        lock (_deferredFrees)
        {
            if (queued > _durableOrdinal)
            {
                // Two callers may enqueue out of the order they read in: keep the queue's ordinals
                // nondecreasing (a free may wait for a later commit, never an earlier one), so
                // MarkDurable can stop at the first one not durable.
                _lastDeferred = Math.Max(_lastDeferred, queued);
                _deferredFrees.Enqueue((_lastDeferred, free, chunk, chunkSize));
                return true;
            }
        }
        return false;
    }

    /// <summary>The last sequence a DurableThrough mark may name now (white-box tests).</summary>
    internal ulong DurableThrough => Volatile.Read(ref _durableThrough);

    /// <summary>
    /// Everything up to sequence <paramref name="seq"/> and commit <paramref name="ordinal"/> is durable:
    /// advance the marks, run the frees it releases. The frees run under the lock: a writer out of space
    /// that finds none pending (FlushAsync, HasDeferredFrees) must also find their extents back in the allocator.
    /// </summary>
    private void MarkDurable(ulong seq, long ordinal)
    {
        lock (_deferredFrees)
        {
            if (seq > _durableThrough)
                Volatile.Write(ref _durableThrough, seq);
            if (ordinal > _durableOrdinal)
                Volatile.Write(ref _durableOrdinal, ordinal);
            while (_deferredFrees.Count > 0 && _deferredFrees.Peek().Ordinal <= _durableOrdinal)
            {
                var (_, free, chunk, chunkSize) = _deferredFrees.Dequeue();
                if (free != null)
                    free();
                else
                {
                    _pool.FreeChunk(chunk!, chunkSize);
                    // The queue was the superseded map's last user (the write that queued it let it go).
                    _pool.MapSpares.Return(chunk!);
                }
            }
        }
    }

    /// <summary>After a writeback round: make sure a flush round follows within the interval.</summary>
    private void ArmWritebackFlush()
    {
        var interval = _pool.EngineOptions.WritebackFlushInterval;
        if (interval == Timeout.InfiniteTimeSpan || Interlocked.Exchange(ref _writebackTimer, 1) != 0)
            return;
        _ = Task.Delay(interval).ContinueWith(async _ =>
        {
            Volatile.Write(ref _writebackTimer, 0);
            try
            {
                await FlushAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is StoreException or ObjectDisposedException or IOException)
            {
                // The pool failed or closed: a close checkpoints, a failure was reported where it happened.
            }
        }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).Unwrap();
    }
}
