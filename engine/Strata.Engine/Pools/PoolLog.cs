using System.Threading.Channels;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The pool's replicated write-ahead log with group commit: one committer loop
/// drains the queue, writes every waiting record to every shard's log in one
/// write per shard, flushes every shard once, applies the records to the state
/// in sequence order and only then completes the callers (writeback commits,
/// <see cref="CommitWriteback"/>, are applied and answered when queued instead). It checkpoints when
/// the log is half full, so replay time stays bounded.
/// <para>
/// That one flush per round is also the data flush of the chunk writes whose
/// records are in the batch: a chunk's data write completes before its record
/// is enqueued, so before the round's flush is issued. Each batch starts with a
/// DurableThrough record naming the last sequence the previous round's flush
/// made durable; replay verifies the data of chunk-map records after the
/// highest such mark (the log write may reach the media while the data write
/// does not). docs/format.md, "Durability".
/// </para>
/// </summary>
internal sealed class PoolLog
{
    /// <summary>Records committed together (null: a checkpoint request).</summary>
    private sealed class Pending(MetaRecord[]? Records, TaskCompletionSource Done, Task? Data = null, bool applied = false)
    {
        public MetaRecord[]? Records { get; } = Records;
        /// <summary>
        /// A writeback commit (<see cref="CommitWriteback"/>): applied and acknowledged when enqueued, logged by
        /// the next round without a flush, durable at the next flush round. Every other commit is durable when done.
        /// </summary>
        public bool Applied { get; } = applied;
        public TaskCompletionSource Done { get; } = Done;
        /// <summary>Its place in the queue (1, 2, ...): the rounds take commits in this order.</summary>
        public long Ordinal;
        /// <summary>The data writes of the (single) chunk-map record, still running when it was enqueued.</summary>
        public Task? Data { get; } = Data;
        /// <summary>Where the record sits in its round's log buffer, and its sequence (to void it).</summary>
        public int Pos, Length;
        public ulong Seq;
        /// <summary>Why the data writes failed: the record was voided (a pad in its place).</summary>
        public Exception? DataError;
    }

    private readonly Pool _pool;
    private readonly Channel<Pending> _queue = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    private readonly uint _seed;
    private readonly ulong _epoch;
    private readonly long _walLength;
    private readonly int _blockSize;
    private Task? _loop;
    private long _head;
    private long _tail;
    private ulong _nextSeq;
    /// <summary>Every record up to this sequence is durable (the last completed flush round, or the open's checkpoint).</summary>
    private ulong _durableThrough;
    private CommitStats _stats;

    /// <summary>Counters of the commit rounds so far (perf and diagnostics; read without a lock, so approximate).</summary>
    internal CommitStats Stats => _stats;

    /// <summary>Commit rounds, records, and stopwatch ticks spent writing the log, flushing, and waiting for work.</summary>
    internal record struct CommitStats(long Rounds, long Records, long WriteTicks, long FlushTicks, long IdleTicks, long SlotTicks);

    public PoolLog(Pool pool, long tail, ulong nextSeq, ulong epoch)
    {
        _pool = pool;
        _epoch = epoch;
        _seed = WalFormat.Seed(pool.Id, epoch);
        _walLength = pool.Shards[0].Header.WalLength;
        _blockSize = pool.Shards.Max(s => s.Device.Geometry.LogicalBlockSize);
        _head = _tail = tail;
        _nextSeq = nextSeq;
        _durableThrough = nextSeq - 1;
    }

    /// <summary>Bytes of the log in use (between the checkpoint's head and the tail).</summary>
    public long Used => (_tail - _head + _walLength) % _walLength;

    /// <summary>Checkpoint bytes other than chunk maps, plus what was logged since (to refuse metadata that would not fit).</summary>
    public long MetadataEstimate { get; private set; }

    public ulong NextSeq => _nextSeq;

    public void Start() => _loop = Task.Run(LoopAsync);

    public async Task StopAsync()
    {
        _queue.Writer.TryComplete();
        Volatile.Read(ref _gathering)?.TrySetResult();
        if (_loop != null)
            await _loop.ConfigureAwait(false);
    }

    /// <summary>
    /// Completes when the record is durable on every shard and applied. A chunk-map
    /// record's data writes must have completed before the call: the commit's flush
    /// is what makes them durable.
    /// </summary>
    public Task CommitAsync(MetaRecord record) => Enqueue([record]);

    /// <summary>
    /// Commits a chunk-map record whose data writes (<paramref name="data"/>) may still be running:
    /// the log write goes ahead at once and the round's flush waits for them, so a write costs one
    /// device round trip less. If they fail, the record is voided (a pad takes its place in the log
    /// before the round's flush) and this throws their exception; its extents may then be freed.
    /// A crash before that flush may keep the record but not the data: replay verifies records past
    /// the last durable mark (PoolOpener), as for any record of the tail.
    /// </summary>
    public Task CommitAfterAsync(MetaRecord record, Task data) => Enqueue([record], data);

    /// <summary>Commits records in one batch, in order (a crash may keep a prefix of them); durable as above.</summary>
    public Task CommitAsync(MetaRecord[] records) => records.Length == 0 ? Task.CompletedTask : Enqueue(records);

    /// <summary>
    /// Writeback commit of chunk-map records whose data writes have completed: the records are applied
    /// at once (reads see them when this returns) and queued; the next round logs them without a flush,
    /// and they are durable with the next flush round (<see cref="FlushAsync"/>, any durable commit, a
    /// checkpoint, or at most StorageEngineOptions.WritebackFlushInterval later). A crash before then
    /// loses them, record by record; replay verifies the data of records past the last durable mark,
    /// as for any record of the tail. Extents they supersede must be freed through <see cref="FreeWhenDurable"/>.
    /// <para>
    /// Applying before logging keeps the order that matters: a record is applied and queued under the
    /// state's lock, so records are logged in the order they were applied; the caller holds the chunk's
    /// lock, so no other record on that chunk (write, trim, resize, removal) is queued in between. Throws,
    /// with nothing applied, when the pool cannot log (the caller frees the records' new extents).
    /// </para>
    /// </summary>
    public void CommitWriteback(MetaRecord[] records)
    {
        Validate(records);
        var state = _pool.Meta;
        var p = new Pending(records, Acknowledged, null, applied: true);
        lock (state.Sync)
        {
            _pool.ThrowIfNotLoggable();
            foreach (var r in records)
            {
                if (r.Type != MetaRecordType.ChunkMap)
                    throw new InvalidOperationException($"a writeback commit holds chunk-map records only, not {r.Type}");
                uint image = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(r.Payload);
                if (!state.Images.ContainsKey(image))
                    throw new NotFoundException($"pool '{_pool.Label}' has no image {image} (it was removed)");
            }
            QueueLocked(p);
            Volatile.Write(ref _writebackEnqueued, p.Ordinal);
            // The sequence is assigned when the round is written; LastSeq moves with the rounds.
            foreach (var r in records)
                state.Apply(new WalRecord(state.LastSeq, (ushort)r.Type, r.Flags, r.Payload));
        }
        ArmWritebackFlush();
    }

    /// <summary>What writeback commits wait on: nothing (they are acknowledged when enqueued).</summary>
    private static readonly TaskCompletionSource Acknowledged = NewAcknowledged();

    private static TaskCompletionSource NewAcknowledged()
    {
        var t = new TaskCompletionSource();
        t.SetResult();
        return t;
    }

    /// <summary>The last commit queued, the last writeback commit queued, and the last one durable (ordinals; 0: none).</summary>
    private long _enqueued, _writebackEnqueued, _durableOrdinal;
    /// <summary>The last commit of the last round applied (ordinal; under the state's lock).</summary>
    private long _appliedOrdinal;
    private int _writebackTimer;
    private readonly Queue<(long Ordinal, Action Free)> _deferredFrees = new();
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
        long queued;
        lock (_pool.Meta.Sync)
            queued = _enqueued;
        lock (_deferredFrees)
        {
            if (queued > _durableOrdinal)
            {
                // Two callers may enqueue out of the order they read in: keep the queue's ordinals
                // nondecreasing (a free may wait for a later commit, never an earlier one), so
                // MarkDurable can stop at the first one not durable.
                _lastDeferred = Math.Max(_lastDeferred, queued);
                _deferredFrees.Enqueue((_lastDeferred, free));
                return;
            }
        }
        free();
    }

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
                _deferredFrees.Dequeue().Free();
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

    /// <summary>Completes after a checkpoint that includes everything committed before the call.</summary>
    public Task CheckpointAsync() => Enqueue(null);

    private Task Enqueue(MetaRecord[]? records, Task? data = null)
    {
        _pool.ThrowIfNotLoggable();
        if (records != null)
            Validate(records);
        var p = new Pending(records, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), data);
        // Ordinals follow the queue's order (CommitWriteback queues under the same lock).
        lock (_pool.Meta.Sync)
            QueueLocked(p);
        Volatile.Read(ref _gathering)?.TrySetResult();
        return p.Done.Task;
    }

    /// <summary>Queues a commit with the next ordinal; under the state's lock, so ordinals follow the queue's order.</summary>
    private void QueueLocked(Pending p)
    {
        p.Ordinal = _enqueued + 1;
        if (!_queue.Writer.TryWrite(p))
            throw new ObjectDisposedException($"pool '{_pool.Label}'", "the pool is closed");
        _enqueued = p.Ordinal;
    }

    private void Validate(MetaRecord[] records)
    {
        long bytes = 0;
        foreach (var record in records)
        {
            if (record.Payload.Length > WalFormat.MaxPayload)
                throw new InvalidRequestException($"metadata record of {record.Payload.Length} bytes exceeds {WalFormat.MaxPayload}");
            bytes += WalFormat.EncodedLength(record.Payload.Length);
        }
        if (bytes > _walLength / 4)
            throw new InvalidRequestException($"{records.Length} metadata records of {bytes} bytes exceed a quarter of the {_walLength}-byte log");
    }

    /// <summary>
    /// One commit round: its log batch is written (sequences assigned) by the committer,
    /// then its flush runs while later rounds are written; rounds complete in order.
    /// </summary>
    private sealed class Round(List<Pending> batch, List<MetaRecord> records)
    {
        public List<Pending> Batch { get; } = batch;
        public List<MetaRecord> Records { get; } = records;
        /// <summary>The round's log block and where it was written (rewritten if a record is voided).</summary>
        public byte[] Buffer { get; set; } = [];
        public long At { get; set; }
        public ulong FirstSeq { get; set; }
        public ulong LastSeq { get; set; }
        /// <summary>The log write and the flush of every shard after it.</summary>
        public Task Durable { get; set; } = Task.CompletedTask;
        public long Started { get; set; }
        /// <summary>When its log writes completed (stopwatch ticks).</summary>
        public long Written { get; set; }
        /// <summary>Whether the round flushes (some commit in it is durable); writeback-only rounds do not.</summary>
        public bool Flushes { get; } = batch.Exists(p => !p.Applied);
        /// <summary>The ordinal of its last commit: every commit up to it is in this round or an earlier one.</summary>
        public long LastOrdinal { get; } = batch[^1].Ordinal;
        /// <summary>Its log writes and its records' data writes are done (failed ones voided): what a later round's flush must cover.</summary>
        public TaskCompletionSource Settled { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completed by the completer once the round was applied and acknowledged (or failed).</summary>
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>
    /// Commit rounds whose flushes may run at once. A device flush on this VM costs
    /// from tens of microseconds to milliseconds, and concurrent flushes overlap
    /// (fio: 1 job with fdatasync=1 ~1,300 writes/s, 8 jobs ~14,000/s), so a round
    /// does not wait for the previous round's flush. docs/format.md, "Group commit".
    /// </summary>
    internal const int MaxRoundsInFlight = 4;

    private readonly SemaphoreSlim _roundSlots = new(MaxRoundsInFlight, MaxRoundsInFlight);
    private readonly Channel<Round> _rounds = Channel.CreateUnbounded<Round>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private Task? _lastRoundDone;

    /// <summary>
    /// The committer: takes everything queued, writes it as one batch to every
    /// shard's log, starts that round's flush and goes on with the next batch; the
    /// completer acknowledges rounds in order as their flushes finish.
    /// </summary>
    private async Task LoopAsync()
    {
        var completer = Task.Run(CompleteLoopAsync);
        var reader = _queue.Reader;
        while (true)
        {
            long idle = System.Diagnostics.Stopwatch.GetTimestamp();
            if (!reader.TryPeek(out _) && !await reader.WaitToReadAsync().ConfigureAwait(false))
                break;
            _stats.IdleTicks += System.Diagnostics.Stopwatch.GetTimestamp() - idle;
            long slot = System.Diagnostics.Stopwatch.GetTimestamp();
            await _roundSlots.WaitAsync().ConfigureAwait(false);
            _stats.SlotTicks += System.Diagnostics.Stopwatch.GetTimestamp() - slot;
            var batch = new List<Pending>();
            var records = new List<MetaRecord>();
            var checkpoints = new List<Pending>();
            long bytes = TakeQueued(reader, batch, records, checkpoints, 0);
            // A batch of writeback commits only: nobody waits for its log write (they were answered
            // when queued), so gather more for a while instead of spending a log block (and
            // eventually a checkpoint) on a few records. A durable commit, a flush or checkpoint
            // request, or the time limit ends the wait.
            if (batch.Count > 0 && checkpoints.Count == 0 && batch.TrueForAll(p => p.Applied))
            {
                await WaitForMoreWritebackAsync(reader).ConfigureAwait(false);
                TakeQueued(reader, batch, records, checkpoints, bytes);
            }
            if (batch.Count > 0) // a flush request is a batch without records
                await StartRoundAsync(new Round(batch, records)).ConfigureAwait(false);
            else
                _roundSlots.Release();
            Volatile.Write(ref _startedOrdinal, _takenOrdinal);
            if (checkpoints.Count > 0 || Used > _walLength / 2)
                await CheckpointAfterRoundsAsync(checkpoints).ConfigureAwait(false);
        }
        _rounds.Writer.TryComplete();
        await completer.ConfigureAwait(false);
    }

    /// <summary>How long a batch of writeback commits only waits for more before it is logged.</summary>
    internal static readonly TimeSpan WritebackGather = TimeSpan.FromMilliseconds(1);

    /// <summary>Set while the committer gathers writeback commits: a commit that someone waits for completes it.</summary>
    private TaskCompletionSource? _gathering;

    /// <summary>
    /// Adds everything queued to the batch (checkpoint requests to <paramref name="checkpoints"/>), up
    /// to a quarter of the log (each entry is at most a quarter itself); returns the batch's log bytes.
    /// </summary>
    private long TakeQueued(ChannelReader<Pending> reader, List<Pending> batch, List<MetaRecord> records, List<Pending> checkpoints, long bytes)
    {
        while (bytes < _walLength / 4 && reader.TryRead(out var p))
        {
            _takenOrdinal = p.Ordinal;
            if (p.Records == null)
            {
                checkpoints.Add(p);
                continue;
            }
            batch.Add(p);
            records.AddRange(p.Records);
            foreach (var r in p.Records)
                bytes += WalFormat.EncodedLength(r.Payload.Length);
        }
        return bytes;
    }

    /// <summary>Waits until <see cref="WritebackGather"/> passed or a commit that someone waits for (durable, a flush or a checkpoint request) is queued.</summary>
    private async Task WaitForMoreWritebackAsync(ChannelReader<Pending> reader)
    {
        var signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _gathering, signal);
        // Queued before the signal was visible: go at once.
        if (!reader.TryPeek(out var first) || first.Applied)
            await Task.WhenAny(signal.Task, Task.Delay(WritebackGather)).ConfigureAwait(false);
        Volatile.Write(ref _gathering, null);
    }

    /// <summary>
    /// Lays out the round's batch and starts its log writes; the round's flush follows them
    /// (<see cref="WrittenThenFlushAsync"/>) while the committer goes on with the next batch.
    /// The completer takes it from there.
    /// </summary>
    private async Task StartRoundAsync(Round round)
    {
        round.Started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            _pool.ThrowIfNotLoggable();
            var written = await WriteRecordsAsync(round).ConfigureAwait(false);
            round.Durable = WrittenThenFlushAsync(round, written, _lastSettled);
        }
        catch (Exception e)
        {
            round.Durable = Task.FromException(e);
            round.Settled.TrySetException(e);
        }
        _lastRoundDone = round.Done.Task;
        _lastSettled = round.Settled.Task;
        _rounds.Writer.TryWrite(round);
    }

    private Task _lastSettled = Task.CompletedTask;
    /// <summary>The last commit or checkpoint request (ordinal) the committer took, and the last it started a round for or took (LoggedAsync).</summary>
    private long _takenOrdinal, _startedOrdinal;

    /// <summary>
    /// Completes once every commit queued before the call is written to the log, durable or not (a
    /// round that flushes, after its flush): what a power cut that keeps every unflushed write would
    /// then find. Writeback commits are answered before their log write even starts, so crash tests
    /// that mean to keep them wait for this. Failures are the commits' own to report.
    /// </summary>
    internal async Task LoggedAsync()
    {
        long target = Volatile.Read(ref _enqueued);
        while (Volatile.Read(ref _startedOrdinal) < target)
        {
            Volatile.Read(ref _gathering)?.TrySetResult();
            await Task.Delay(1).ConfigureAwait(false);
        }
        // Rounds complete in order, a writeback-only one once its log write is done.
        if (Volatile.Read(ref _lastRoundDone) is { } done)
            await done.ConfigureAwait(false);
    }

    private async Task WrittenThenFlushAsync(Round round, Task written, Task previousSettled)
    {
        try
        {
            await written.ConfigureAwait(false);
            round.Written = System.Diagnostics.Stopwatch.GetTimestamp();
            if (round.Batch.Exists(p => p.Data != null))
                await SettleDataAsync(round).ConfigureAwait(false);
            round.Settled.TrySetResult();
        }
        catch (Exception e)
        {
            round.Settled.TrySetException(e);
            throw;
        }
        if (!round.Flushes)
            return;
        // Ordering invariant: this batch's log write has completed, and the data writes of
        // every chunk-map record in it completed before the record was enqueued or (records
        // from CommitAfterAsync) have completed now; so have those of every earlier round
        // (writeback rounds do not flush: this flush covers them). The flushes issued now make
        // all of them durable (FlushCoalescer takes its ticket at the call).
        await previousSettled.ConfigureAwait(false);
        await FlushAllAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Waits for the data writes of the round's records and voids the records whose writes failed
    /// (rewrites the round's log block with pads in their place, same sequences and lengths); the
    /// round's flush, or a later round's for writeback, follows. Until a flush covers the rewrite no
    /// mark covers this round, so a crash may keep either version of the block: a voided record is
    /// then in the tail and replay drops it.
    /// </summary>
    private async Task SettleDataAsync(Round round)
    {
        bool voided = false;
        foreach (var p in round.Batch)
        {
            if (p.Data == null)
                continue;
            try
            {
                await p.Data.ConfigureAwait(false);
            }
            catch (Exception e)
            {
                p.DataError = e;
                WalFormat.Encode(round.Buffer.AsSpan(p.Pos), _seed, p.Seq, WalFormat.PadType, 0, default, p.Length);
                voided = true;
            }
        }
        if (voided)
            await Task.WhenAll(_pool.Shards.Select(s => DeviceIo.WriteAsync(s.Device, s.WalStart + round.At, round.Buffer).AsTask())).ConfigureAwait(false);
    }

    /// <summary>Waits until every started round is applied, then checkpoints (the state must hold exactly the durable records).</summary>
    private async Task CheckpointAfterRoundsAsync(List<Pending> waiting)
    {
        if (_lastRoundDone != null)
            await _lastRoundDone.ConfigureAwait(false);
        try
        {
            _pool.ThrowIfNotLoggable();
            await WriteCheckpointAsync().ConfigureAwait(false);
            foreach (var p in waiting)
                p.Done.TrySetResult();
        }
        catch (Exception e)
        {
            Fail(waiting, e);
        }
    }

    /// <summary>
    /// Completes rounds strictly in order: a round is acknowledged only after its own
    /// flush and every earlier round's succeeded. After any failure every later round
    /// fails too, even if its flush reported success (after a failed flush the device
    /// may have dropped data that flush was meant to cover).
    /// </summary>
    private async Task CompleteLoopAsync()
    {
        Exception? broken = null;
        await foreach (var round in _rounds.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                if (broken != null)
                {
                    // Its flush may still be running; nothing waits for it any more.
                    _ = round.Durable.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                    throw broken;
                }
                await round.Durable.ConfigureAwait(false);
                _stats.WriteTicks += round.Written - round.Started;
                _stats.FlushTicks += System.Diagnostics.Stopwatch.GetTimestamp() - round.Written;
                _stats.Rounds++;
                _stats.Records += round.Records.Count;
                // Before any acknowledgement: a record enqueued after this round's acks
                // must see a mark at or above this round (PoolOpener relies on it).
                ApplyAll(round);
                if (round.Flushes)
                    MarkDurable(round.LastSeq, round.LastOrdinal);
                foreach (var p in round.Batch)
                {
                    if (p.DataError != null)
                        p.Done.TrySetException(p.DataError);
                    else
                        p.Done.TrySetResult();
                }
            }
            catch (Exception e)
            {
                broken ??= e;
                Fail(round.Batch, e);
            }
            round.Done.TrySetResult();
            _roundSlots.Release();
        }
    }

    private void Fail(List<Pending> waiting, Exception e)
    {
        if (e is not PoolReadOnlyException)
            _pool.Fail(e, "the metadata log");
        var error = e as StoreException ?? new PoolReadOnlyException($"pool '{_pool.Label}' is read-only: {_pool.ReadOnlyReason}", e);
        foreach (var p in waiting)
            p.Done.TrySetException(error);
    }

    /// <summary>Applies the round's records in sequence order, except voided ones (their sequences are pads in the log).</summary>
    private void ApplyAll(Round round)
    {
        var state = _pool.Meta;
        lock (state.Sync)
        {
            ulong seq = round.FirstSeq;
            foreach (var p in round.Batch)
            {
                foreach (var r in p.Records!)
                {
                    if (p.DataError == null && !p.Applied)
                    {
                        state.Apply(new WalRecord(seq, (ushort)r.Type, r.Flags, r.Payload));
                        if (r.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkUnmap))
                            MetadataEstimate += r.Payload.Length;
                    }
                    seq++;
                }
            }
            state.LastSeq = round.LastSeq;
            _appliedOrdinal = round.LastOrdinal;
        }
    }

    private static readonly int MarkLength = WalFormat.EncodedLength(sizeof(ulong));

    /// <summary>
    /// Lays out the round's records as one batch headed by a DurableThrough mark, assigns their
    /// sequences, and starts writing it to every shard (no flush); returns those writes. Log
    /// writes of consecutive rounds may run at once: they go to different places, and each
    /// round's flush waits for its own.
    /// </summary>
    private async Task<Task> WriteRecordsAsync(Round round)
    {
        var records = round.Records;
        long total = MarkLength;
        foreach (var r in records)
            total += WalFormat.EncodedLength(r.Payload.Length);
        long padded = DeviceIo.AlignUp(total, _blockSize);
        if (padded - total is > 0 and < WalFormat.HeaderSize)
            padded += _blockSize;
        long wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
        if (Used + wrap + padded >= _walLength)
        {
            // Rounds still in flight hold records the checkpoint must include: let them finish.
            if (_lastRoundDone != null)
                await _lastRoundDone.ConfigureAwait(false);
            _pool.ThrowIfNotLoggable();
            await WriteCheckpointAsync().ConfigureAwait(false);
            wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
            if (wrap + padded >= _walLength)
                throw new InvalidRequestException($"a metadata batch of {padded} bytes does not fit the {_walLength}-byte log");
        }
        byte[]? wrapPad = null;
        if (wrap > 0)
        {
            wrapPad = new byte[wrap];
            WalFormat.Encode(wrapPad, _seed, _nextSeq++, WalFormat.PadType, 0, default, (int)wrap);
        }
        var buf = new byte[padded];
        var mark = MetaRecords.DurableThrough(Volatile.Read(ref _durableThrough));
        WalFormat.Encode(buf, _seed, _nextSeq++, (ushort)mark.Type, mark.Flags, mark.Payload, MarkLength);
        round.FirstSeq = _nextSeq;
        int pos = MarkLength;
        foreach (var p in round.Batch)
        {
            p.Pos = pos;
            p.Seq = _nextSeq;
            foreach (var r in p.Records!)
            {
                int len = WalFormat.EncodedLength(r.Payload.Length);
                WalFormat.Encode(buf.AsSpan(pos), _seed, _nextSeq++, (ushort)r.Type, r.Flags, r.Payload, len);
                pos += len;
            }
            p.Length = pos - p.Pos;
        }
        if (pos < padded)
            WalFormat.Encode(buf.AsSpan(pos), _seed, _nextSeq++, WalFormat.PadType, 0, default, (int)(padded - pos));
        round.LastSeq = _nextSeq - 1;
        long at = wrap > 0 ? 0 : _tail;
        long wrapAt = _tail;
        round.Buffer = buf;
        round.At = at;
        // The tail moves now: the next round's batch goes after this one even while this one's flush runs.
        _tail = (at + padded) % _walLength;
        return Task.WhenAll(_pool.Shards.Select(async s =>
        {
            if (wrapPad != null)
                await DeviceIo.WriteAsync(s.Device, s.WalStart + wrapAt, wrapPad).ConfigureAwait(false);
            await DeviceIo.WriteAsync(s.Device, s.WalStart + at, buf).ConfigureAwait(false);
        }));
    }

    private Task FlushAllAsync() =>
        Task.WhenAll(_pool.Shards.Select(s => s.FlushAsync()));

    /// <summary>
    /// Serializes the state into every shard's inactive slot, flushes, then points
    /// each shard header at it (new generation) and flushes. Only then does the log
    /// head move, so a crash at any step replays from a checkpoint that exists.
    /// </summary>
    public async Task WriteCheckpointAsync()
    {
        var state = _pool.Meta;
        PoolStateCodec.PoolStateCapture capture;
        string label;
        ulong applied;
        long appliedOrdinal;
        Store.ShardHeaderLayout layout;
        lock (state.Sync)
        {
            capture = PoolStateCodec.Capture(state);
            layout = _pool.DurableLayout();
            label = state.Props["label"];
            applied = state.LastSeq;
            appliedOrdinal = _appliedOrdinal;
        }
        // Encoded outside the lock, so writers go on meanwhile: serializing 131,072 chunk maps under
        // it held them off for 50-100 ms; capturing them takes 2-3 ms.
        byte[] payload = capture.Encode();
        long chunkBytes = capture.ChunkBytes;
        ulong seq = _nextSeq - 1;
        var ckpt = Checkpoint.Encode(_pool.Id, seq, _tail, payload, _blockSize);
        if (ckpt.Length > _pool.Shards[0].Header.CheckpointLength)
            throw new NoSpaceException($"no space left in pool '{label}': metadata of {ckpt.Length} bytes outgrew the {_pool.Shards[0].Header.CheckpointLength}-byte checkpoint area");
        await Task.WhenAll(_pool.Shards.Select(s =>
        {
            uint slot = s.Header.ActiveCheckpoint == 0 ? 1u : 0u;
            return DeviceIo.WriteAsync(s.Device, s.Base + s.Header.CheckpointOffset(slot), ckpt).AsTask();
        })).ConfigureAwait(false);
        await FlushAllAsync().ConfigureAwait(false);
        await Task.WhenAll(_pool.Shards.Select(async s =>
        {
            var h = s.Header with
            {
                ActiveCheckpoint = s.Header.ActiveCheckpoint == 0 ? 1u : 0u,
                CheckpointSeq = seq,
                WalHead = _tail,
                WalEpoch = _epoch,
                Label = label,
                // Headers follow the log: the layout the state is at, plus bit 62 while a job may
                // have written what older software cannot read (so it refuses before replaying).
                LayoutVersion = layout.Version,
                Compat = layout.Compat,
                RoCompat = layout.RoCompat,
                Incompat = layout.Incompat,
            };
            await s.WriteHeaderAsync(h).ConfigureAwait(false);
        })).ConfigureAwait(false);
        _head = _tail;
        MetadataEstimate = payload.Length - chunkBytes;
        // The checkpoint's flush made every applied record durable, writeback ones included (those
        // applied but not yet in a round are durable too, but counted only when their round flushes).
        MarkDurable(applied, appliedOrdinal);
    }
}
