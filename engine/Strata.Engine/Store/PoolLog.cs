using System.Threading.Channels;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

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
internal sealed partial class PoolLog
{
    private readonly Pool _pool;
    private readonly Channel<Pending> _queue = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    /// <summary>The framing new batches get (1 or <see cref="WalFormatV2.Format"/>) and its CRC seed; changed only by the committer, between rounds.</summary>
    private uint _format;
    private uint _seed;
    private readonly ulong _epoch;
    private readonly long _walLength;
    private readonly int _blockSize;
    private Task? _loop;
    private long _head;
    private long _tail;
    /// <summary>
    /// The tail after the last applied round (under the state's lock, with its LastSeq): where replay from a
    /// checkpoint of the applied state must start, while later rounds are still in flight.
    /// </summary>
    private long _appliedTail;
    private ulong _nextSeq;
    /// <summary>Every record up to this sequence is durable (the last completed flush round, or the open's checkpoint).</summary>
    private ulong _durableThrough;
    private CommitStats _stats;

    /// <summary>Counters of the commit rounds so far (perf and diagnostics; read without a lock, so approximate).</summary>
    internal CommitStats Stats => _stats;

    /// <summary>Commit rounds, records, and stopwatch ticks spent writing the log, flushing, and waiting for work.</summary>
    internal record struct CommitStats(long Rounds, long Records, long WriteTicks, long FlushTicks, long IdleTicks, long SlotTicks, long Flushes, long SettleTicks = 0, long Checkpoints = 0, long CheckpointTicks = 0, long LogBytes = 0, long RoundsBesideCheckpoint = 0, long CapturesBeforeRoundsDone = 0);

    public PoolLog(Pool pool, long tail, ulong nextSeq, ulong epoch, uint format = 1)
    {
        _pool = pool;
        _epoch = epoch;
        _format = format;
        _seed = SeedFor(format);
        _walLength = pool.Shards[0].Header.WalLength;
        _blockSize = pool.Shards.Max(s => s.Device.Geometry.LogicalBlockSize);
        _head = _tail = _appliedTail = tail;
        _nextSeq = nextSeq;
        _durableThrough = nextSeq - 1;
    }

    private uint SeedFor(uint format) => format == WalFormatV2.Format ? WalFormatV2.Seed(_pool.Id, _epoch) : WalFormat.Seed(_pool.Id, _epoch);

    /// <summary>How the log frames new batches (1 or <see cref="WalFormatV2.Format"/>; the shard headers say it for the log after their head).</summary>
    public uint Format => Volatile.Read(ref _format);

    /// <summary>Bytes of the log in use (between the checkpoint's head and the tail).</summary>
    public long Used => (_tail - Volatile.Read(ref _head) + _walLength) % _walLength;

    /// <summary>Checkpoint bytes other than chunk maps, plus what was logged since (to refuse metadata that would not fit).</summary>
    public long MetadataEstimate { get; private set; }

    public ulong NextSeq => _nextSeq;

    public void Start() => _loop = Task.Run(LoopAsync);

    public async Task StopAsync()
    {
        lock (_drops)
            _stopping = true;
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
    /// <remarks>
    /// <paramref name="data"/> is this log's to await, once, when the call returns; when it throws, the
    /// caller's. A data write's failure is the only DeviceException the returned task ever holds (every
    /// other failure comes as a StoreException), so a caller can tell a voided record by it.
    /// </remarks>
    public Task CommitAfterAsync(MetaRecord record, ValueTask data) => Enqueue([record], data);

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
    /// <param name="overwritable">
    /// Whether the new mappings' extents may be overwritten in place until a flush covers them (docs/format.md,
    /// "Overwriting a writeback extent in place"): true for a client write, whose extents are all fresh. A chunk
    /// switch passes false: its mapping may keep replicas of the source, which the last durable record names.
    /// </param>
    public void CommitWriteback(MetaRecord[] records, bool overwritable = true) =>
        QueueWriteback(new Pending(records, Acknowledged, null, applied: true), overwritable);

    /// <summary>Validates, applies and queues a writeback commit (<see cref="CommitWriteback"/>); throws with nothing applied.</summary>
    private void QueueWriteback(Pending p, bool overwritable)
    {
        var records = p.Records!;
        Validate(records);
        var state = _pool.Meta;
        lock (state.Sync)
        {
            _pool.ThrowIfNotLoggable();
            foreach (var r in records)
            {
                if (r.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkMapBlocks))
                    throw new InvalidOperationException($"a writeback commit holds chunk-map records only, not {r.Type}");
                if (_pool.ExcludedTargets.Count > 0 && OnlyOnExcluded([r]) is { } gone)
                    throw gone;
                uint image = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(r.Payload);
                if (!state.Images.ContainsKey(image))
                    throw new NotFoundException($"pool '{_pool.Label}' has no image {image} (it was removed)");
            }
            QueueLocked(p);
            Volatile.Write(ref _writebackEnqueued, p.Ordinal);
            // The sequence is assigned when the round is written; LastSeq moves with the rounds.
            foreach (var r in records)
                ApplyWritebackLocked(r, overwritable ? p.Ordinal : 0, p.Ordinal);
        }
        // Enough gathered: a round that holds more commits than the pool keeps spare makes new ones.
        if (p.Ordinal - Volatile.Read(ref _takenOrdinal) >= WritebackGatherLimit)
            Volatile.Read(ref _gathering)?.TrySetResult();
        ArmWritebackFlush();
    }

    /// <summary>
    /// Applies a writeback chunk-map record and marks the new mapping with its commit's ordinal (<paramref name="commit"/>:
    /// not durable until a flush round covers it) and with <paramref name="ordinal"/>, the same or 0: not to be
    /// overwritten in place (under the state's lock).
    /// </summary>
    private void ApplyWritebackLocked(MetaRecord r, long ordinal, long commit)
    {
        var state = _pool.Meta;
        state.Apply(r, state.LastSeq);
        uint image = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(r.Payload);
        long chunk = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(r.Payload.AsSpan(4));
        if (state.Images.TryGetValue(image, out var img) && img.Chunks.GetLocked(chunk) is { } map)
        {
            map.WritebackOrdinal = ordinal;
            map.CommitOrdinal = commit;
        }
    }

    /// <summary>Last ordinal a flushing round took or a checkpoint captured: mappings of writeback commits above it may be overwritten in place (under the state's lock).</summary>
    private long _flushHorizon;
    /// <summary>The committer is taking a round, or a checkpoint waits to capture: no in-place claim starts (under the state's lock).</summary>
    private bool _taking, _capturing;
    /// <summary>The ordinal of the last in-place record queued: a flushing round takes at least up to it (under the state's lock).</summary>
    private long _lastInPlace;
    /// <summary>In-place data writes claimed and not yet finished; a checkpoint capture waits for none (under the state's lock).</summary>
    private int _inPlaceInFlight;
    private TaskCompletionSource? _inPlaceDrained;
    private long _inPlaceWrites;

    /// <summary>Writes committed in place so far (diagnostics and tests).</summary>
    internal long InPlaceWrites => Interlocked.Read(ref _inPlaceWrites);

    /// <summary>
    /// Whether <paramref name="current"/>, a chunk's mapping, may be overwritten in place now (a hint: the
    /// claim decides). The caller holds the chunk's lock.
    /// </summary>
    public bool MayOverwriteInPlace(ChunkMap current) =>
        current.WritebackOrdinal > Volatile.Read(ref _flushHorizon) && current.Moving == null;

    /// <summary>
    /// Commits the chunk-map record mapping <paramref name="chunk"/> of <paramref name="image"/> to
    /// <paramref name="map"/> (made for this write, ChunkMapSpares.Rent), the same extents as its current mapping <paramref name="current"/> with new
    /// contents, as a writeback commit whose data write (not started yet) overwrites those extents in place;
    /// docs/format.md, "Overwriting a writeback extent in place". Under the state's lock: only if no flush
    /// covers <paramref name="current"/>'s commit yet, no round is being taken and no checkpoint captures, the
    /// record is applied and queued (the round that logs it flushes only after the data write), and the
    /// in-place write is counted in flight until <see cref="EndInPlace"/>. Returns the data write's signal,
    /// which the caller completes exactly once (<see cref="SignalledWrite.Complete"/>) when its write is done,
    /// and does not touch after; or null, with nothing done, when the write must copy on write instead. The
    /// commit is pooled (its record, array and completion reused: no allocation per write, issue 17). The
    /// caller holds the chunk's lock and starts the write only after this returned a signal.
    /// </summary>
    public SignalledWrite? TryCommitInPlace(ChunkMap current, uint image, long chunk, ChunkMap map)
    {
        var state = _pool.Meta;
        var p = RentSpare(image, chunk, map, inPlace: true);
        try
        {
            lock (state.Sync)
            {
                _pool.ThrowIfNotLoggable();
                if (_taking || _capturing || current.WritebackOrdinal <= _flushHorizon || current.Moving != null
                    || !state.Images.TryGetValue(image, out var img) || !ReferenceEquals(img.Chunks.GetLocked(chunk), current))
                {
                    p.Abandon();
                    return null;
                }
                QueueLocked(p);
                Volatile.Write(ref _writebackEnqueued, p.Ordinal);
                _lastInPlace = p.Ordinal;
                _inPlaceInFlight++;
                ApplyWritebackLocked(p.Records![0], p.Ordinal, p.Ordinal);
            }
        }
        catch
        {
            p.Abandon();
            throw;
        }
        Interlocked.Increment(ref _inPlaceWrites);
        if (p.Ordinal - Volatile.Read(ref _takenOrdinal) >= WritebackGatherLimit)
            Volatile.Read(ref _gathering)?.TrySetResult();
        ArmWritebackFlush();
        return p.Write;
    }

    /// <summary>An in-place data write claimed by <see cref="TryCommitInPlace"/> finished (or failed: its round then fails).</summary>
    public void EndInPlace()
    {
        lock (_pool.Meta.Sync)
        {
            if (--_inPlaceInFlight == 0 && _inPlaceDrained != null)
            {
                _inPlaceDrained.TrySetResult();
                _inPlaceDrained = null;
            }
        }
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


    /// <summary>Completes after a checkpoint that includes everything committed before the call.</summary>
    public Task CheckpointAsync() => Enqueue(null);

    /// <summary>
    /// Switches the log to <paramref name="format"/> and checkpoints: the committer waits for the rounds in
    /// flight, changes its framing, then writes a checkpoint of everything committed before the call, whose
    /// headers name the format (and the wal_v2 incompat bit) for the log after their head. Completes at the
    /// switch, before the checkpoint is written: every later commit waits for that checkpoint (its round
    /// comes after it), as commits wait for any checkpoint, so callers need not hold clients off meanwhile.
    /// Batches before it stay in the old format behind the new head; none is ever mixed. If the
    /// checkpoint fails, the pool fails (read-only) and later commits report it.
    /// </summary>
    public Task SwitchFormatAsync(uint format)
    {
        if (format is not (1 or WalFormatV2.Format))
            throw new ArgumentOutOfRangeException(nameof(format), $"WAL format {format} does not exist");
        var switched = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var done = Enqueue(null, switchTo: format, switched: switched);
        // Its failure is the pool's (reported where it happened); nobody waits for it here.
        _ = done.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        return switched.Task;
    }

    /// <summary>
    /// Adds <paramref name="shard"/> (the pool's next target) to the log and checkpoints: between rounds,
    /// so that every round after it writes the new shard too, and the checkpoint gives it the state.
    /// Completes when that checkpoint is durable on every shard.
    /// </summary>
    public Task JoinShardAsync(Shard shard) => Enqueue(null, join: shard);

    /// <summary>
    /// Takes target <paramref name="target"/>'s shard out of the log (an excluded target): between rounds,
    /// so no later round or checkpoint writes or flushes it, then checkpoints on the others. Reads and
    /// placement avoid the target from the same moment (Pool.ExcludeShard).
    /// </summary>
    public Task ExcludeShardAsync(int target) => Enqueue(null, exclude: target);

    /// <summary>
    /// Puts an excluded target's shard back into the log (a reintegration): between rounds, so every
    /// later round writes it too, and the checkpoint gives it the state (its own log is stale).
    /// Reads and placement keep skipping it until the pool lifts the exclusion (Pool.JoinShard).
    /// </summary>
    public Task RejoinShardAsync(Shard shard) => Enqueue(null, join: shard);

    /// <summary>
    /// Commits <paramref name="records"/>, which lift rejoining target <paramref name="target"/>'s
    /// exclusion, in one batch, unless the target has left the log (its device failed a write,
    /// <see cref="TryDropShard"/>) before the round that would write them: then nothing is written
    /// and this throws <see cref="RejoinFailedException"/>. Decided by the committer as it takes the
    /// batch, so a drop after that comes after the round, and its checkpoint records the exclusion again.
    /// </summary>
    public Task CommitLiftAsync(int target, MetaRecord[] records) => Enqueue(records, lift: target);

    private Task Enqueue(MetaRecord[]? records, ValueTask? data = null, uint switchTo = 0, TaskCompletionSource? switched = null, Shard? join = null, int exclude = -1,
        bool dropped = false, bool rejoin = false, int lift = -1)
    {
        _pool.ThrowIfNotLoggable();
        if (records != null)
            Validate(records);
        var p = new Pending(records, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), data, switchTo: switchTo, switched: switched, join: join, exclude: exclude, dropped: dropped, rejoin: rejoin, lift: lift);
        // Ordinals follow the queue's order (CommitWriteback queues under the same lock).
        lock (_pool.Meta.Sync)
            QueueLocked(p);
        Volatile.Read(ref _gathering)?.TrySetResult();
        return p.Done!.Task;
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
            var (batch, records) = RentRoundLists();
            // The committer's own list, reused: every use of it ends before the next round is taken.
            var checkpoints = _checkpointRequests;
            checkpoints.Clear();
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
            {
                bool beside = BackgroundCheckpointRunning;
                if (beside)
                    _stats.RoundsBesideCheckpoint++;
                await StartRoundAsync(RentRound(batch, records)).ConfigureAwait(false);
                if (beside)
                    _checkpointHold?.TrySetResult();
            }
            else
            {
                ReturnRoundLists(batch, records);
                _roundSlots.Release();
            }
            Volatile.Write(ref _startedOrdinal, _takenOrdinal);
            if (checkpoints.Count > 0)
            {
                long cp = System.Diagnostics.Stopwatch.GetTimestamp();
                await BackgroundCheckpointDoneAsync().ConfigureAwait(false);
                await CheckpointAfterRoundsAsync(checkpoints).ConfigureAwait(false);
                _stats.Checkpoints++;
                _stats.CheckpointTicks += System.Diagnostics.Stopwatch.GetTimestamp() - cp;
            }
            else if (Used > _walLength / 2 && !BackgroundCheckpointRunning)
            {
                // The log half full: capture now, write while later rounds go on.
                long cp = System.Diagnostics.Stopwatch.GetTimestamp();
                await StartBackgroundCheckpointAsync().ConfigureAwait(false);
                _stats.Checkpoints++;
                _stats.CheckpointTicks += System.Diagnostics.Stopwatch.GetTimestamp() - cp;
            }
        }
        await BackgroundCheckpointDoneAsync().ConfigureAwait(false);
        _rounds.Writer.TryComplete();
        await completer.ConfigureAwait(false);
    }

    /// <summary>Checkpoint requests the committer took with the current round (its loop's only).</summary>
    private readonly List<Pending> _checkpointRequests = [];

    /// <summary>
    /// How long a batch of writeback commits only waits for more before it is logged. Nobody waits for
    /// such a round (its commits were answered when queued, and a flush ends the wait at once), so the
    /// window only trades the round's size against their count: at 1 ms a 4 KiB random-write load wrote
    /// a round (a log block, its own wake-ups of the committer, the timer and the completer) per 30-40
    /// writes, and the padded blocks filled the log towards a checkpoint of the whole map every few seconds.
    /// </summary>
    internal static readonly TimeSpan WritebackGather = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// Writeback commits queued since the last take that end a gather early. Each is held until its round
    /// is done; at an eighth of the pooled commits kept spare (PoolLog.MaxSpares) the rounds in flight
    /// (MaxRoundsInFlight) hold no more than half the spares, with room for what a round takes past the
    /// mark, so fast writes make no new ones (issue 17: at a quarter, the perf nbd 4K write row at 38k
    /// IOPS still made a commit for one write in six).
    /// </summary>
    internal const int WritebackGatherLimit = MaxSpares / MaxRoundsInFlight / 2;

    /// <summary>Set while the committer gathers writeback commits: a commit that someone waits for completes it.</summary>
    private TaskCompletionSource? _gathering;

    /// <summary>
    /// Adds everything queued to the batch (checkpoint requests to <paramref name="checkpoints"/>), up
    /// to a quarter of the log (each entry is at most a quarter itself); returns the batch's log bytes.
    /// </summary>
    private long TakeQueued(ChannelReader<Pending> reader, List<Pending> batch, List<MetaRecord> records, List<Pending> checkpoints, long bytes)
    {
        var state = _pool.Meta;
        long lastInPlace;
        // No in-place claim while taking: a claim's two records must not straddle the end of a round that flushes.
        lock (state.Sync)
        {
            _taking = true;
            lastInPlace = _lastInPlace;
        }
        bool flushes = batch.Exists(p => !p.Applied);
        try
        {
            while ((bytes < _walLength / 4 || (flushes && _takenOrdinal < lastInPlace)) && reader.TryRead(out var p))
            {
                _takenOrdinal = p.Ordinal;
                if (p.Records == null)
                {
                    checkpoints.Add(p);
                    continue;
                }
                if (p.Lift >= 0 && !InLog(p.Lift))
                {
                    p.Fail(new RejoinFailedException(p.Lift));
                    continue;
                }
                flushes |= !p.Applied;
                batch.Add(p);
                records.AddRange(p.Records);
                foreach (var r in p.Records)
                    bytes += WalFormat.EncodedLength(r.Payload.Length);
            }
        }
        finally
        {
            lock (state.Sync)
            {
                // This round's flush covers everything taken so far: those mappings are no longer overwritten in place.
                if (flushes && _takenOrdinal > _flushHorizon)
                    _flushHorizon = _takenOrdinal;
                _taking = false;
            }
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
        Task done;
        lock (_lastRoundSync)
            done = LastRoundDone();
        await done.ConfigureAwait(false);
    }
}
