using System.Threading.Channels;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// Commit rounds: a batch laid out and written to every shard's log, its data writes settled
/// (failed ones voided), its flush, and the completer that applies and acknowledges rounds in order.
/// </summary>
internal sealed partial class PoolLog
{
    /// <summary>
    /// One commit round: its log batch is written (sequences assigned) by the committer,
    /// then its flush runs while later rounds are written; rounds complete in order.
    /// </summary>
    /// <remarks>
    /// Reused (<see cref="RentRound"/>): the completer gives a round back once it is done and its flush
    /// finished. A later round's flush and the waits on the last round may still hold it then: they name
    /// the <see cref="Generation"/> they mean, and a round reused since counts as settled and done.
    /// </remarks>
    private sealed class Round
    {
        public List<Pending> Batch { get; private set; } = [];
        public List<MetaRecord> Records { get; private set; } = [];
        /// <summary>
        /// The round's log block (its first <see cref="Length"/> bytes, in an array rented from the shared
        /// pool: returned once the round is done) and where it was written (rewritten if a record is voided).
        /// </summary>
        public byte[] Buffer { get; set; } = [];
        public int Length { get; set; }
        /// <summary>The framing and CRC seed the round was written with (to void a record the same way).</summary>
        public uint Format { get; set; }
        public uint Seed { get; set; }
        public long At { get; set; }
        /// <summary>Where the log's tail was after its batch: where the next round's records (or wrap filler) begin.</summary>
        public long End { get; set; }
        public ulong FirstSeq { get; set; }
        public ulong LastSeq { get; set; }
        /// <summary>
        /// The log write and the flush of every shard after it: pooled (no box per round, issue 17), so consumed
        /// exactly once, by the completer (awaited, or <see cref="DurableTask"/> when an earlier round failed).
        /// </summary>
        public ValueTask Durable { get; set; }
        /// <summary><see cref="Durable"/> as a task, when the completer does not await it (an earlier round failed): made once.</summary>
        public Task? DurableTask { get; set; }
        public long Started { get; set; }
        /// <summary>When its log writes completed (stopwatch ticks).</summary>
        public long Written { get; set; }
        /// <summary>When its flush was issued: its data writes and every earlier round's had completed (stopwatch ticks; 0: no flush).</summary>
        public long FlushIssued { get; set; }
        /// <summary>Whether the round flushes (some commit in it is durable); writeback-only rounds do not.</summary>
        public bool Flushes { get; private set; }
        /// <summary>Whether it holds a deferred write, whose in-place writes follow its flush (<see cref="WriteDeferredAsync"/>).</summary>
        public bool HasDeferred { get; private set; }
        /// <summary>The ordinal of its last commit: every commit up to it is in this round or an earlier one.</summary>
        public long LastOrdinal { get; private set; }
        /// <summary>Which use of this object the round is (under its lock).</summary>
        public long Generation { get; private set; }
        /// <summary>Its log writes and its records' data writes are done (failed ones voided): what a later round's flush must cover.</summary>
        private LazyCompletion _settled;
        /// <summary>Completed by the completer once the round was applied and acknowledged (or failed).</summary>
        private LazyCompletion _done;

        /// <summary>Readies the object for a new round of <paramref name="batch"/> (the committer's; nothing completes the previous one any more).</summary>
        public Round Reset(List<Pending> batch, List<MetaRecord> records)
        {
            lock (this)
            {
                Generation++;
                _settled = default;
                _done = default;
            }
            Batch = batch;
            Records = records;
            Buffer = [];
            Length = 0;
            Format = Seed = 0;
            At = End = 0;
            FirstSeq = LastSeq = 0;
            Durable = default;
            DurableTask = null;
            Started = Written = FlushIssued = 0;
            Flushes = batch.Exists(p => !p.Applied);
            HasDeferred = batch.Exists(p => p.Deferred != null);
            LastOrdinal = batch[^1].Ordinal;
            return this;
        }

        /// <summary>Settled (or failed, as a faulted task), for the round of <paramref name="generation"/>: a round reused since is.</summary>
        public Task WhenSettled(long generation)
        {
            lock (this)
                return Generation != generation ? Task.CompletedTask : _settled.TaskLocked();
        }

        /// <summary>Done, for the round of <paramref name="generation"/>: a round reused since is.</summary>
        public Task WhenDone(long generation)
        {
            lock (this)
                return Generation != generation ? Task.CompletedTask : _done.TaskLocked();
        }

        public void SetSettled(Exception? error = null)
        {
            TaskCompletionSource? waiter;
            lock (this)
                waiter = _settled.SetLocked(error);
            LazyCompletion.Complete(waiter, error);
        }

        public void SetDone()
        {
            TaskCompletionSource? waiter;
            lock (this)
                waiter = _done.SetLocked(null);
            LazyCompletion.Complete(waiter, null);
        }
    }

    /// <summary>
    /// A round's completion that makes a Task only for a caller that asks before it completes: the next
    /// round's flush usually finds the previous round settled, and a round's end is awaited only by
    /// checkpoints and tests, so most rounds make neither (two TaskCompletionSources and their tasks a round
    /// before, issue 17). A field of its round, under the round's lock.
    /// </summary>
    private struct LazyCompletion
    {
        private int _state; // 0: pending, 1: succeeded, 2: failed
        private Exception? _error;
        private TaskCompletionSource? _waiter;

        public Task TaskLocked() => _state switch
        {
            1 => Task.CompletedTask,
            2 => Task.FromException(_error!),
            _ => (_waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task,
        };

        /// <summary>Completes it (the first call only), with <paramref name="error"/> when not null; returns the waiter to complete outside the lock.</summary>
        public TaskCompletionSource? SetLocked(Exception? error)
        {
            if (_state != 0)
                return null;
            _state = error == null ? 1 : 2;
            _error = error;
            return _waiter;
        }

        public static void Complete(TaskCompletionSource? waiter, Exception? error)
        {
            if (waiter == null)
                return;
            if (error == null)
                waiter.TrySetResult();
            else
                waiter.TrySetException(error);
        }
    }

    /// <summary>Finished rounds, reused by the committer (at most a few more than can be in flight).</summary>
    private readonly System.Collections.Concurrent.ConcurrentQueue<Round> _spareRounds = new();

    private Round RentRound(List<Pending> batch, List<MetaRecord> records) =>
        (_spareRounds.TryDequeue(out var r) ? r : new Round()).Reset(batch, records);

    /// <summary>Gives back a round that is done and whose flush and settling finished (the completer's, once).</summary>
    private void ReturnRound(Round round)
    {
        if (_spareRounds.Count <= MaxRoundsInFlight + 1)
            _spareRounds.Enqueue(round);
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
    /// <summary>The last round started and its generation (its Done is what waits for every round in flight).</summary>
    private (Round Round, long Generation)? _lastRound;
    /// <summary>Guards <see cref="_lastRound"/> for readers other than the committer (it alone writes it).</summary>
    private readonly object _lastRoundSync = new();

    /// <summary>Completes once the last round started is done (at once if none was, or it was reused since).</summary>
    private Task LastRoundDone()
    {
        var last = _lastRound;
        return last is { } l ? l.Round.WhenDone(l.Generation) : Task.CompletedTask;
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
            round.Durable = WrittenThenFlushAsync(round, written, _lastRound);
        }
        catch (Exception e)
        {
            round.Durable = ValueTask.FromException(e);
            round.SetSettled(e);
        }
        lock (_lastRoundSync)
            _lastRound = (round, round.Generation);
        _rounds.Writer.TryWrite(round);
    }


    /// <param name="written">The round's log writes (pooled: awaited here, once).</param>
    /// <param name="previous">The round started before it and its generation (null: none): its flush waits for that round's settling.</param>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask WrittenThenFlushAsync(Round round, ValueTask written, (Round Round, long Generation)? previous)
    {
        try
        {
            await written.ConfigureAwait(false);
            round.Written = System.Diagnostics.Stopwatch.GetTimestamp();
            if (round.Batch.Exists(p => p.Data != null) || _pool.ExcludedTargets.Count > 0)
                await SettleDataAsync(round).ConfigureAwait(false);
            round.SetSettled();
        }
        catch (Exception e)
        {
            round.SetSettled(e);
            throw;
        }
        if (!round.Flushes)
            return;
        // Ordering invariant: this batch's log write has completed, and the data writes of
        // every chunk-map record in it completed before the record was enqueued or (records
        // from CommitAfterAsync) have completed now; so have those of every earlier round
        // (writeback rounds do not flush: this flush covers them). The flushes issued now make
        // all of them durable (FlushCoalescer takes its ticket at the call).
        if (previous is { } p)
            await p.Round.WhenSettled(p.Generation).ConfigureAwait(false);
        round.FlushIssued = System.Diagnostics.Stopwatch.GetTimestamp();
        await FlushRoundAsync().ConfigureAwait(false);
        // The records are durable now, deferred ones included: their blocks may go over their extents.
        if (round.HasDeferred)
            await WriteDeferredAsync(round).ConfigureAwait(false);
    }

    /// <summary>
    /// Waits for the data writes of the round's records and voids the records whose writes failed
    /// (rewrites the round's log block with pads in their place, same sequences and lengths); the
    /// round's flush, or a later round's for writeback, follows. Until a flush covers the rewrite no
    /// mark covers this round, so a crash may keep either version of the block: a voided record is
    /// then in the tail and replay drops it. A failed in-place write is not voided: it may have torn
    /// data an earlier acknowledged writeback record names, so the round fails and the pool with it.
    /// While targets are excluded, a chunk mapping whose every replica is on one of them is voided too
    /// (its writer placed it before a target that failed a write left the pool; PoolLog.TryDropShard).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask SettleDataAsync(Round round)
    {
        bool voided = false;
        bool excluded = _pool.ExcludedTargets.Count > 0;
        foreach (var p in round.Batch)
        {
            if (p.Data == null)
            {
                // A mapping onto targets excluded since its writer placed it (a target that failed a write
                // meanwhile) would name no copy anyone reads: voided, and its writer told so.
                if (excluded && !p.Applied && OnlyOnExcluded(p.Records!) is { } gone)
                {
                    p.DataError = gone;
                    Void(round, p);
                    voided = true;
                }
                continue;
            }
            try
            {
                await p.Data.Value.ConfigureAwait(false);
                if (excluded && !p.Applied && OnlyOnExcluded(p.Records!) is { } gone)
                    throw gone;
            }
            catch (Exception e) when (p.InPlace)
            {
                throw new StoreException(Strata.Interop.Errno.EIO, $"an in-place write of pool '{_pool.Label}' failed, so data an earlier writeback write left there may be torn: {e.Message}", e);
            }
            catch (Exception e)
            {
                p.DataError = e;
                Void(round, p);
                voided = true;
            }
        }
        if (voided)
            await RewriteLogBlockAsync(round).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the round's log block again (records voided in it). Its own method: a lambda capturing the
    /// round in SettleDataAsync made its closure at every call, voided or not (issue 17).
    /// </summary>
    private Task RewriteLogBlockAsync(Round round) =>
        OnLogShardsAsync(s => DeviceIo.WriteAsync(s.Device, s.WalStart + round.At, round.Buffer.AsMemory(0, round.Length)).AsTask());


    /// <summary>Puts a pad in the place of the commit's records in the round's log block (same sequences and length).</summary>
    private static void Void(Round round, Pending p)
    {
        if (round.Format == WalFormatV2.Format)
            WalFormatV2.Void(round.Buffer.AsSpan(0, round.Length), p.Pos, p.Length, round.Seed);
        else
            WalFormat.Encode(round.Buffer.AsSpan(p.Pos), round.Seed, p.Seq, WalFormat.PadType, 0, default, p.Length);
    }

    /// <summary>
    /// An error for a commit with a chunk mapping whose every replica is on an excluded target; null
    /// otherwise. Every round runs it while any target is excluded, so the replicas' targets are read in
    /// place: only a mapping that is voided is decoded.
    /// </summary>
    private WriteVoidedException? OnlyOnExcluded(MetaRecord[] records)
    {
        foreach (var r in records)
        {
            if (r.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkMapBlocks))
                continue;
            int n = MetaRecords.ChunkMapReplicaCount(r.Payload);
            bool gone = n > 0;
            for (int i = 0; i < n && gone; i++)
                gone = _pool.IsExcluded(MetaRecords.ChunkMapReplicaTarget(r.Payload, i));
            if (!gone)
                continue;
            var (_, chunk, replicas) = MetaRecords.ReadChunkMap(r.Payload);
            return new WriteVoidedException(
                $"a write to pool '{_pool.Label}' (chunk {chunk}) failed: every replica it wrote is on target(s) {string.Join(",", replicas.Select(x => x.Target).Distinct())}, excluded while it ran");
        }
        return null;
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
            bool held = false;
            try
            {
                if (broken != null)
                {
                    // Its flush may still be running; nothing waits for it any more.
                    round.DurableTask = round.Durable.AsTask();
                    _ = round.DurableTask.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                    throw broken;
                }
                await round.Durable.ConfigureAwait(false);
                _stats.WriteTicks += round.Written - round.Started;
                long now = System.Diagnostics.Stopwatch.GetTimestamp();
                long issued = round.FlushIssued != 0 ? round.FlushIssued : now;
                _stats.SettleTicks += issued - round.Written;
                _stats.FlushTicks += now - issued;
                _stats.Rounds++;
                if (round.Flushes)
                    _stats.Flushes++;
                _stats.Records += round.Records.Count;
                _stats.LogBytes += round.Length;
                // Before any acknowledgement: a record enqueued after this round's acks
                // must see a mark at or above this round (PoolOpener relies on it).
                ApplyAll(round);
                // While a dropped target's exclusion is not durable, no mark moves past a round: its
                // records may name replicas the dropped device never made durable (its flush failed, or
                // was no longer asked of it), and a crash before the drop's checkpoint must find them in
                // the tail, where replay checks every replica, not behind a DurableThrough mark the next
                // batch writes. Their old extents stay allocated meanwhile (deferred frees wait on the
                // same mark). The drop's checkpoint marks everything durable (WriteCheckpointAsync).
                if (round.Flushes && !DropPending)
                    MarkDurable(round.LastSeq, round.LastOrdinal);
                held = Acknowledge(round.Batch);
            }
            catch (Exception e)
            {
                broken ??= e;
                Fail(round.Batch, e);
            }
            // Read once: what is let go or reused below must agree on whether settling may still run.
            // Awaited (succeeded or threw): done; else the task made of it says.
            bool finished = round.DurableTask?.IsCompleted ?? true;
            // Held commits are let go by the drop that holds them (CompleteDrops).
            if (!held)
                ReleasePooled(round, finished);
            if (finished)
            {
                ReturnLogBlock(round);
                ReturnRoundLists(round.Batch, round.Records);
            }
            round.SetDone();
            _roundSlots.Release();
            // Nothing completes or reads it for this round any more (later holders name its generation).
            if (finished)
                ReturnRound(round);
        }
    }

    private void Fail(List<Pending> waiting, Exception e)
    {
        if (e is not PoolReadOnlyException)
            _pool.Fail(e, "the metadata log");
        var error = e as StoreException ?? new PoolReadOnlyException($"pool '{_pool.Label}' is read-only: {_pool.ReadOnlyReason}", e);
        foreach (var p in waiting)
        {
            p.Switched?.TrySetException(error);
            p.Fail(error);
        }
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
                        state.Apply(r, seq);
                        if (r.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkMapBlocks or MetaRecordType.ChunkUnmap or MetaRecordType.ChunkDeferred))
                            MetadataEstimate += r.Payload.Length;
                    }
                    seq++;
                }
            }
            state.LastSeq = round.LastSeq;
            _appliedTail = round.End;
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
    /// <remarks>A ValueTask of a ValueTask: neither allocates when the batch fits the log (no checkpoint first); the inner one is awaited once.</remarks>
    private async ValueTask<ValueTask> WriteRecordsAsync(Round round)
    {
        round.Format = _format;
        round.Seed = _seed;
        if (_format == WalFormatV2.Format)
            return await WriteBatchV2Async(round).ConfigureAwait(false);
        var records = round.Records;
        long total = MarkLength;
        foreach (var r in records)
            total += WalFormat.EncodedLength(r.Payload.Length);
        long padded = DeviceIo.AlignUp(total, _blockSize);
        if (padded - total is > 0 and < WalFormat.HeaderSize)
            padded += _blockSize;
        long wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
        wrap = await MakeRoomAsync(padded, wrap).ConfigureAwait(false);
        byte[]? wrapPad = null;
        if (wrap > 0)
        {
            wrapPad = new byte[wrap];
            WalFormat.Encode(wrapPad, _seed, _nextSeq++, WalFormat.PadType, 0, default, (int)wrap);
        }
        var buf = RentLogBlock(padded);
        // MetaRecords.DurableThrough's record, encoded in place (no record or payload array per round).
        Span<byte> mark = stackalloc byte[sizeof(ulong)];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(mark, Volatile.Read(ref _durableThrough));
        WalFormat.Encode(buf, _seed, _nextSeq++, (ushort)MetaRecordType.DurableThrough, 0, mark, MarkLength);
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
        return WriteBatch(round, buf, padded, wrap, wrapPad);
    }

    /// <summary>
    /// When the batch (and the wrap filler before it) would overrun the checkpoint's head, checkpoints
    /// first; returns the wrap filler's length from the tail then.
    /// </summary>
    private async ValueTask<long> MakeRoomAsync(long padded, long wrap)
    {
        if (Used + wrap + padded < _walLength)
            return wrap;
        // A checkpoint being written in the background moves the head when it is done.
        if (BackgroundCheckpointRunning)
        {
            await BackgroundCheckpointDoneAsync().ConfigureAwait(false);
            if (Used + wrap + padded < _walLength)
                return wrap;
        }
        // Rounds still in flight hold records the checkpoint must include: let them finish.
        await LastRoundDone().ConfigureAwait(false);
        _pool.ThrowIfNotLoggable();
        await WriteCheckpointAsync().ConfigureAwait(false);
        wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
        if (wrap + padded >= _walLength)
            throw new InvalidRequestException($"a metadata batch of {padded} bytes does not fit the {_walLength}-byte log");
        return wrap;
    }

    /// <summary>
    /// WAL v2: the round's records as one checksummed batch (docs/format.md, "WAL v2"): a 32-byte header
    /// carrying the batch sequence and the durable-through mark, compact records, zeros to the block's end.
    /// A batch that would not fit before the log's end is preceded by an empty batch spanning the rest
    /// (only its first block is written). Sequences, positions and the tail move as for v1.
    /// </summary>
    private async ValueTask<ValueTask> WriteBatchV2Async(Round round)
    {
        long body = 0;
        foreach (var r in round.Records)
            body += WalFormatV2.RecordLength(r.Payload.Length);
        long padded = DeviceIo.AlignUp(WalFormatV2.HeaderSize + body, _blockSize);
        long wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
        wrap = await MakeRoomAsync(padded, wrap).ConfigureAwait(false);
        ulong mark = Volatile.Read(ref _durableThrough);
        byte[]? wrapBlock = null;
        if (wrap > 0)
        {
            wrapBlock = new byte[Math.Min(_blockSize, wrap)];
            WalFormatV2.Seal(wrapBlock, _seed, _nextSeq++, mark, (int)wrap, 0);
        }
        var buf = RentLogBlock(padded);
        ulong batchSeq = _nextSeq++;
        round.FirstSeq = _nextSeq;
        int pos = WalFormatV2.HeaderSize;
        foreach (var p in round.Batch)
        {
            p.Pos = pos;
            p.Seq = _nextSeq;
            foreach (var r in p.Records!)
            {
                pos += WalFormatV2.EncodeRecord(buf.AsSpan(pos), (ushort)r.Type, r.Flags, r.Payload);
                _nextSeq++;
            }
            p.Length = pos - p.Pos;
        }
        WalFormatV2.Seal(buf, _seed, batchSeq, mark, (int)padded, pos - WalFormatV2.HeaderSize);
        return WriteBatch(round, buf, padded, wrap, wrapBlock);
    }

    /// <summary>
    /// Places a sealed batch (either framing) at the tail, or at the log's start after the wrap
    /// filler, and writes both to every shard's log.
    /// </summary>
    private ValueTask WriteBatch(Round round, byte[] buf, long padded, long wrap, byte[]? wrapFiller)
    {
        round.LastSeq = _nextSeq - 1;
        long at = wrap > 0 ? 0 : _tail;
        long wrapAt = _tail;
        round.Buffer = buf;
        round.Length = (int)padded;
        round.At = at;
        var block = buf.AsMemory(0, (int)padded);
        // The tail moves now: the next round's batch goes after this one even while this one's flush runs.
        _tail = (at + padded) % _walLength;
        round.End = _tail;
        return OnLogShardsAsync(new LogWrite(this, wrapFiller, wrapAt, block, at));
    }

    /// <summary>
    /// Sources for a round's log write on one shard, reused: written from the committer's thread and
    /// awaited on the device's, so a pooled async method's box (cached per thread) would not come back.
    /// </summary>
    private readonly System.Collections.Concurrent.ConcurrentQueue<SignalledWrite> _logWrites = new();
    private Action<SignalledWrite>? _returnLogWrite;

    private SignalledWrite RentLogWrite() =>
        _logWrites.TryDequeue(out var w) ? w : new SignalledWrite(taken: _returnLogWrite ??= _logWrites.Enqueue);

    /// <summary>A round's log write on one shard: the wrap filler (if any), then the batch.</summary>
    private readonly struct LogWrite(PoolLog log, byte[]? wrapFiller, long wrapAt, ReadOnlyMemory<byte> block, long at) : IShardOp
    {
        public ValueTask Run(Shard s) => wrapFiller == null
            ? log.RentLogWrite().Run(s.Device, s.WalStart + at, block)
            : WrapThenWriteAsync(s, wrapFiller, wrapAt, block, at);

        private static async ValueTask WrapThenWriteAsync(Shard s, byte[] wrapFiller, long wrapAt, ReadOnlyMemory<byte> block, long at)
        {
            await DeviceIo.WriteAsync(s.Device, s.WalStart + wrapAt, wrapFiller).ConfigureAwait(false);
            await DeviceIo.WriteAsync(s.Device, s.WalStart + at, block).ConfigureAwait(false);
        }
    }

    /// <summary>A round's flush on one shard (the shard's FlushCoalescer, pooled).</summary>
    private readonly struct LogFlush : IShardOp
    {
        public ValueTask Run(Shard s) => s.FlushOnceAsync();
    }

    private Task FlushAllAsync() => OnLogShardsAsync(s => s.FlushAsync());

    /// <summary>A round's flush of every log shard: as <see cref="FlushAllAsync"/>, pooled (awaited once).</summary>
    private ValueTask FlushRoundAsync() => OnLogShardsAsync(new LogFlush());

    /// <summary>A round's commit and record lists, reused (taken by the committer, given back by the completer once the round is finished).</summary>
    private readonly System.Collections.Concurrent.ConcurrentQueue<(List<Pending> Batch, List<MetaRecord> Records)> _roundLists = new();

    private (List<Pending>, List<MetaRecord>) RentRoundLists() =>
        _roundLists.TryDequeue(out var lists) ? lists : (new List<Pending>(), new List<MetaRecord>());

    /// <summary>Keeps at most a pair per round in flight, and none that grew past a few thousand entries.</summary>
    private void ReturnRoundLists(List<Pending> batch, List<MetaRecord> records)
    {
        if (_roundLists.Count > MaxRoundsInFlight + 1 || batch.Capacity > 4096 || records.Capacity > 4096)
            return;
        batch.Clear();
        records.Clear();
        _roundLists.Enqueue((batch, records));
    }

    /// <summary>A log block of <paramref name="length"/> bytes, zeroed (v2 batches end in zeros), from the shared pool: a round's block is not an allocation of its own.</summary>
    private static byte[] RentLogBlock(long length)
    {
        var block = System.Buffers.ArrayPool<byte>.Shared.Rent(checked((int)length));
        block.AsSpan(0, (int)length).Clear();
        return block;
    }

    /// <summary>Returns a finished round's log block to the pool: only once its log writes (and any rewrite voiding a record) are done.</summary>
    private static void ReturnLogBlock(Round round)
    {
        if (round.Buffer.Length == 0)
            return;
        var block = round.Buffer;
        round.Buffer = [];
        System.Buffers.ArrayPool<byte>.Shared.Return(block);
    }
}
