using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// A commit waiting in the queue or in a round (<see cref="Pending"/>), and the pooled form a durable
/// chunk write uses (<see cref="CommitWithWriteAsync"/>): one object for the commit, its record array,
/// its data write's completion and its own, reused, so the write path allocates none of them (issue 17).
/// </summary>
internal sealed partial class PoolLog
{
    /// <summary>
    /// Records committed together (null: a checkpoint request). Completed once, by <see cref="Succeed"/>
    /// or <see cref="Fail"/> (later calls do nothing): through <see cref="Done"/>, or, pooled, as the
    /// IValueTaskSource its writer awaits.
    /// </summary>
    /// <remarks>
    /// A pooled commit goes back to <see cref="_spares"/> when its three holders let it go: the writer
    /// (after it took the result), the data write (after it completed the data source) and the log (after
    /// the completer, or the drop that held its acknowledgement, is done with it and its round's
    /// SettleDataAsync has finished). Until then nothing can see it reused.
    /// </remarks>
    private sealed class Pending : IValueTaskSource, IThreadPoolWorkItem
    {
        public Pending(MetaRecord[]? records, TaskCompletionSource done, ValueTask? data = null, bool applied = false, uint switchTo = 0,
            TaskCompletionSource? switched = null, Shard? join = null, int exclude = -1, bool dropped = false, bool rejoin = false, int lift = -1)
        {
            Records = records;
            Done = done;
            Data = data;
            Applied = applied;
            SwitchTo = switchTo;
            Switched = switched;
            Join = join;
            Exclude = exclude;
            Dropped = dropped;
            Rejoin = rejoin;
            Lift = lift;
        }

        /// <summary>A pooled commit of one chunk-map record and its one data write (<see cref="CommitWithWriteAsync"/>).</summary>
        public Pending(PoolLog owner)
        {
            _owner = owner;
            Records = [new MetaRecord(MetaRecordType.ChunkMap, [])];
            Exclude = -1;
            Lift = -1;
            _release = Release;
            Write = new SignalledWrite(_release);
        }

        /// <summary>A checkpoint request that first takes this target's shard out of the log (-1: none).</summary>
        public int Exclude { get; }
        /// <summary>The shard left the log after its device failed a write (<see cref="TryDropShard"/>): the checkpoint also records the exclusion, then releases the held acknowledgements.</summary>
        public bool Dropped { get; }
        /// <summary>The dropped shard was rejoining the log for a reintegration (still excluded): nothing was placed on it.</summary>
        public bool Rejoin { get; }
        /// <summary>Records that lift this rejoining target's exclusion: refused when the target left the log before its round (-1: none).</summary>
        public int Lift { get; }
        /// <summary>A checkpoint request that first adds this shard to the log (a pool extension).</summary>
        public Shard? Join { get; }
        /// <summary>A checkpoint request that first switches the log to this format (0: none).</summary>
        public uint SwitchTo { get; }
        /// <summary>Completed once the committer switched (the checkpoint then runs before any later round).</summary>
        public TaskCompletionSource? Switched { get; }
        /// <summary>The records (pooled: an array of one, reused).</summary>
        public MetaRecord[]? Records { get; }
        /// <summary>
        /// A writeback commit (<see cref="CommitWriteback"/>): applied and acknowledged when enqueued, logged by
        /// the next round without a flush, durable at the next flush round. Every other commit is durable when done.
        /// </summary>
        public bool Applied { get; private set; }
        /// <summary>What its caller waits for; null for a pooled commit (its writer awaits the commit itself).</summary>
        public TaskCompletionSource? Done { get; }
        /// <summary>Its place in the queue (1, 2, ...): the rounds take commits in this order.</summary>
        public long Ordinal;
        /// <summary>
        /// The data writes of the (single) chunk-map record, still running when it was enqueued. A ValueTask
        /// (pooled: <see cref="Write"/>'s): awaited exactly once, by the round's SettleDataAsync.
        /// </summary>
        public ValueTask? Data { get; private set; }
        /// <summary>
        /// A writeback commit whose data write overwrites, in place, extents an earlier writeback record named
        /// (<see cref="TryCommitInPlace"/>): if that write fails, the round fails (the pool goes read-only)
        /// instead of voiding the record, since the earlier record's acknowledged data may be torn.
        /// </summary>
        public bool InPlace { get; private set; }
        /// <summary>A deferred write's in-place part (<see cref="CommitDeferredAsync"/>): its round writes it after its flush, before it applies the record.</summary>
        public DeferredWrite? Deferred { get; private set; }

        /// <summary>A pooled commit's own in-place part, reused by its deferred writes (<see cref="ReuseDeferred"/>).</summary>
        private DeferredWrite? _deferredPart;
        /// <summary>Where the record sits in its round's log buffer, and its sequence (to void it).</summary>
        public int Pos, Length;
        public ulong Seq;
        /// <summary>Why the data writes failed: the record was voided (a pad in its place).</summary>
        public Exception? DataError;

        private readonly PoolLog? _owner;
        private readonly Action? _release;
        private ManualResetValueTaskSourceCore<bool> _done;
        /// <summary>The writer's continuation, resumed on the thread pool through this object (<see cref="OnCompleted"/>).</summary>
        private Threading.QueuedContinuation _continuation;
        private int _completed;
        private int _holders;

        /// <summary>A pooled commit's data write (its completion is <see cref="Data"/>).</summary>
        public SignalledWrite? Write { get; }

        public bool Pooled => _owner != null;

        /// <summary>
        /// Readies a pooled commit for a chunk-map record (its own, reused: the payload array too when the
        /// replica count is the same), whose new mapping takes <paramref name="replicas"/>, nothing completed:
        /// a durable commit with its data write (three holders: writer, write, log); a <paramref name="writeback"/>
        /// commit whose data is written already and that nobody awaits (the log alone holds it); or an
        /// <paramref name="inPlace"/> writeback commit whose writer signals its data write's end (two: write, log).
        /// </summary>
        public void Reuse(uint image, long chunk, ChunkMap map, bool writeback, bool inPlace)
        {
            var record = Records![0];
            int length = MetaRecords.ChunkMapLength(map.Replicas);
            if (record.Payload.Length != length)
                record.Payload = new byte[length];
            MetaRecords.EncodeChunkMap(record.Payload, image, chunk, map.Replicas);
            record.Type = map.Blocks ? MetaRecordType.ChunkMapBlocks : MetaRecordType.ChunkMap;
            record.Map = map;
            Applied = writeback || inPlace;
            InPlace = inPlace;
            Data = writeback ? null : Write!.Prepare();
            Ordinal = 0;
            Pos = Length = 0;
            Seq = 0;
            DataError = null;
            _completed = 0;
            _holders = writeback ? 1 : inPlace ? 2 : 3;
            _done.Reset();
            _done.RunContinuationsAsynchronously = false;
        }

        /// <summary>
        /// Readies a pooled commit for a deferred write's ChunkDeferred record (<paramref name="payload"/>, the
        /// caller's), whose mapping takes <paramref name="map"/>, and its in-place part; two holders: the writer
        /// (after it took the result) and the log (once its round is done).
        /// </summary>
        public void ReuseDeferred(byte[] payload, ChunkMap map, int from, ReadOnlyMemory<byte> table, ReadOnlyMemory<byte> blocks)
        {
            var record = Records![0];
            record.Payload = payload;
            record.Type = MetaRecordType.ChunkDeferred;
            record.Map = map;
            Deferred = (_deferredPart ??= new DeferredWrite()).Set(map.Replicas, from, table, blocks);
            Applied = false;
            InPlace = false;
            Data = null;
            Ordinal = 0;
            Pos = Length = 0;
            Seq = 0;
            DataError = null;
            _completed = 0;
            _holders = 2;
            _done.Reset();
            _done.RunContinuationsAsynchronously = false;
        }

        public short Version => _done.Version;

        public void Succeed()
        {
            if (Done != null)
                Done.TrySetResult();
            else if (Interlocked.Exchange(ref _completed, 1) == 0)
                _done.SetResult(true);
        }

        public void Fail(Exception error)
        {
            if (Done != null)
                Done.TrySetException(error);
            else if (Interlocked.Exchange(ref _completed, 1) == 0)
                _done.SetException(error);
        }

        /// <summary>One holder lets a pooled commit go; the last one returns it to the spares. Nothing for the others.</summary>
        public void Release()
        {
            if (_owner == null || Interlocked.Decrement(ref _holders) != 0)
                return;
            Records![0].Map = null;
            if (Deferred != null)
            {
                // A deferred write's payload is its writer's (back to its pool once it succeeded): not this record's to reuse.
                Records[0].Payload = [];
                Deferred.Clear();
                Deferred = null;
            }
            _owner.ReturnSpare(this);
        }

        /// <summary>A pooled commit that was never queued, its write never started: back to the spares at once.</summary>
        public void Abandon()
        {
            _holders = 1;
            Release();
        }

        public ValueTaskSourceStatus GetStatus(short token) => _done.GetStatus(token);

        /// <summary>
        /// The writer resumes on the thread pool, as from the TaskCompletionSource of the other commits, not on the
        /// completer: queued as this object (the core's own asynchronous continuation makes a work item each time,
        /// issue 17). An awaiter that flows a context (none on the write path: ConfigureAwait(false)) gets the core's.
        /// </summary>
        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _continuation.OnCompleted(ref _done, this, continuation, state, token, flags);

        void IThreadPoolWorkItem.Execute() => _continuation.Run();

        /// <summary>The writer takes the result, once; it then lets the commit go.</summary>
        public void GetResult(short token)
        {
            try
            {
                _done.GetResult(token);
            }
            finally
            {
                Release();
            }
        }
    }

    /// <summary>
    /// Pooled commits not in use (at most <see cref="MaxSpares"/>). A durable commit is held while its write
    /// is in flight, a writeback one until its round is done: the gather window (WritebackGather) and the
    /// round's log write, so the spares must cover about that long of writes (8,192: 80 ms at 100,000 writes
    /// a second, about 5 MiB at most kept per pool: some 600 B each), else every commit beyond them is a new object.
    /// 8,192 rather than 4,096 because the writeback gather ends at an eighth of them (PoolLog.WritebackGatherLimit):
    /// at 512 commits a round, NBD 4 KiB writes at 75-80k IOPS took three times the log rounds and 6% more CPU
    /// per write than with the 20 ms gather alone (perf/README.md, nbd, "Quiet run, session 18").
    /// </summary>
    private readonly ConcurrentQueue<Pending> _spares = new();
    private int _spareCount;
    private long _pooledCreated;

    /// <summary>Pooled commits made so far (each is reused after that): white-box tests.</summary>
    internal long PooledCommitsCreated => Interlocked.Read(ref _pooledCreated);
    private const int MaxSpares = 8192;

    private Pending RentSpare(uint image, long chunk, ChunkMap map, bool writeback = false, bool inPlace = false)
    {
        var p = RentPooled();
        p.Reuse(image, chunk, map, writeback, inPlace);
        return p;
    }

    /// <summary>A pooled commit, spare or new, not yet readied (<see cref="Pending.Reuse"/>, <see cref="Pending.ReuseDeferred"/>).</summary>
    private Pending RentPooled()
    {
        if (_spares.TryDequeue(out var p))
        {
            Interlocked.Decrement(ref _spareCount);
        }
        else
        {
            p = new Pending(this);
            Interlocked.Increment(ref _pooledCreated);
        }
        return p;
    }

    /// <summary>
    /// <see cref="CommitWriteback"/> of the one chunk-map record mapping <paramref name="chunk"/> of
    /// <paramref name="image"/> to <paramref name="map"/> (made for this write, ChunkMapSpares.Rent: the state
    /// installs it), as a pooled commit: the commit, its record, the record's array and payload are
    /// reused, so a writeback write allocates none of them (issue 17). The log lets it go once its round is done.
    /// </summary>
    public void CommitWritebackChunk(uint image, long chunk, ChunkMap map)
    {
        var p = RentSpare(image, chunk, map, writeback: true);
        try
        {
            QueueWriteback(p, overwritable: true);
        }
        catch
        {
            p.Abandon();
            throw;
        }
    }

    private void ReturnSpare(Pending p)
    {
        if (Interlocked.Increment(ref _spareCount) <= MaxSpares)
            _spares.Enqueue(p);
        else
            Interlocked.Decrement(ref _spareCount);
    }

    /// <summary>
    /// As <see cref="CommitAfterAsync"/>, for the chunk-map record mapping <paramref name="chunk"/> of
    /// <paramref name="image"/> to <paramref name="map"/>, one replica (made for this write, ChunkMapSpares.Rent:
    /// the state installs it), whose write this starts once the record is queued: <paramref name="source"/>
    /// to <paramref name="shard"/>'s data area at <paramref name="dataOffset"/>. The commit, its record and
    /// its array and both completions are one pooled object, so a durable write allocates none of them.
    /// Throws, with nothing written, when the record cannot be queued. The ValueTask is awaited exactly
    /// once; it fails as CommitAfterAsync's task does (a DeviceException: the data write failed and the
    /// record was voided).
    /// </summary>
    public ValueTask CommitWithWriteAsync(uint image, long chunk, ChunkMap map, Shard shard, long dataOffset, ReadOnlyMemory<byte> source)
    {
        _pool.ThrowIfNotLoggable();
        var p = RentSpare(image, chunk, map);
        QueuePooled(p);
        // The round that takes it waits for this write (SettleDataAsync) before its flush.
        p.Write!.Start(shard.Device, shard.DataStart + dataOffset, source);
        return new ValueTask(p, p.Version);
    }

    /// <summary>
    /// Validates and queues a readied pooled commit that someone waits for (it ends a writeback gather); when it
    /// cannot be queued, gives it back to the spares and throws, nothing having started.
    /// </summary>
    /// <param name="writeback">The commit is a writeback write's: a FLUSH waits for it (PoolLog.FlushPending).</param>
    private void QueuePooled(Pending p, bool writeback = false)
    {
        try
        {
            Validate(p.Records!);
            // Ordinals follow the queue's order (CommitWriteback queues under the same lock).
            lock (_pool.Meta.Sync)
            {
                QueueLocked(p);
                if (writeback)
                    Volatile.Write(ref _writebackEnqueued, p.Ordinal);
            }
        }
        catch
        {
            p.Abandon();
            throw;
        }
        Volatile.Read(ref _gathering)?.TrySetResult();
    }

    /// <summary>
    /// The log lets the pooled commits of a round go, once its SettleDataAsync cannot touch them any more:
    /// at once when the round is <paramref name="finished"/> (its Durable task done), else when it is (its DurableTask).
    /// </summary>
    private static void ReleasePooled(Round round, bool finished)
    {
        if (!round.Batch.Exists(p => p.Pooled))
            return;
        if (finished)
        {
            foreach (var p in round.Batch)
                p.Release();
            return;
        }
        // A round completed after an earlier one failed: its flush (and settling) may still run.
        _ = round.DurableTask!.ContinueWith(static (_, r) =>
        {
            foreach (var p in ((Round)r!).Batch)
                p.Release();
        }, round, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
