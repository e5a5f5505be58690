using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>Checkpoints: the state captured under its lock, encoded outside it, written to every shard's inactive slot, then the headers.</summary>
internal sealed partial class PoolLog
{
    /// <summary>Waits until every started round is applied, then checkpoints (the state must hold exactly the durable records).</summary>
    private async Task CheckpointAfterRoundsAsync(List<Pending> waiting)
    {
        await LastRoundDone().ConfigureAwait(false);
        if (_pool.BeforeDropCheckpoint is { } hook && waiting.Exists(p => p.Dropped))
            await hook().ConfigureAwait(false);
        int[] joined = [];
        try
        {
            _pool.ThrowIfNotLoggable();
            // Every round is done: the checkpoint below holds every record written in the old format,
            // and the headers it writes name the new one for the log after their head.
            if (waiting.LastOrDefault(p => p.SwitchTo != 0) is { } s && s.SwitchTo != _format)
            {
                Volatile.Write(ref _format, s.SwitchTo);
                _seed = SeedFor(s.SwitchTo);
            }
            foreach (var p in waiting)
                p.Switched?.TrySetResult();
            // A shard joining the log: no round is in flight, so every later round writes it too, and
            // the checkpoint below gives it a copy of the state to replay from.
            joined = [.. waiting.Where(p => p.Join != null).Select(p => p.Join!.Index)];
            Joining(joined, true);
            foreach (var p in waiting)
                if (p.Join != null)
                    _pool.JoinShard(p.Join);
            // A shard leaving the log (an excluded target): no round is in flight, and none writes it from now on.
            foreach (var p in waiting)
                if (p.Exclude >= 0)
                    _pool.ExcludeShard(p.Exclude);
            // Records the exclusions of the drops among them (and of any other pending).
            await WriteCheckpointAsync().ConfigureAwait(false);
            CompleteDrops(waiting, null);
            foreach (var p in waiting)
                p.Succeed();
        }
        catch (Exception e)
        {
            Fail(waiting, e);
            CompleteDrops(waiting, e);
        }
        finally
        {
            Joining(joined, false);
        }
    }


    /// <summary>What a checkpoint captured under the state's lock, with the log position it was taken at.</summary>
    private readonly record struct CheckpointCapture(
        PoolStateCodec.PoolStateCapture State, string Label, ulong Applied, long AppliedOrdinal, Store.ShardHeaderLayout Layout,
        long Tail, uint Format, int ShardCount, ulong WalV2, long EstimateAtCapture, int[] Excluded);

    /// <summary>
    /// Serializes the state into every shard's inactive slot, flushes, then points
    /// each shard header at it (new generation) and flushes. Only then does the log
    /// head move, so a crash at any step replays from a checkpoint that exists. The state records
    /// every pending drop's exclusion first; a target dropped while it is written (it left the log
    /// before the flush) makes it start over with that exclusion recorded too.
    /// </summary>
    public async Task WriteCheckpointAsync()
    {
        await BackgroundCheckpointDoneAsync().ConfigureAwait(false);
        while (true)
        {
            RecordDropsInState();
            var capture = await CaptureCheckpointAsync().ConfigureAwait(false);
            if (await WriteCapturedAsync(capture).ConfigureAwait(false))
                return;
        }
    }

    /// <summary>
    /// A routine checkpoint (the log half full) written while the committer goes on with later rounds
    /// (docs/format.md, "Checkpoints"): started by the committer with every started round applied, it
    /// captures the state and the log's position (tail, last sequence) before the committer takes
    /// another round; the rounds written meanwhile go after that tail, where replay from the new head
    /// expects them, and the head moves to the captured tail only once the headers say so. Any other
    /// checkpoint, and a round that finds the log full, waits for it first.
    /// </summary>
    private async Task StartBackgroundCheckpointAsync()
    {
        // Rounds still in flight need not finish: the capture is the applied state, which rounds complete
        // into in order, with the tail after its last round; the rounds after it are replayed from there.
        // A drop's exclusion is recorded only by a checkpoint that waits for every round (the drop's
        // own follows): one captured now could not hold it, and would be abandoned (WriteCapturedAsync).
        if (DropPending)
            return;
        CheckpointCapture capture;
        try
        {
            _pool.ThrowIfNotLoggable();
            capture = await CaptureCheckpointAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Fail([], e);
            return;
        }
        if (capture.Tail != _tail)
            _stats.CapturesBeforeRoundsDone++;
        var hold = HoldCheckpointForARound ? (_checkpointHold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task : null;
        // On the thread pool: the encoding (milliseconds for a large state) runs before the first write.
        _background = Task.Run(() => WriteInBackgroundAsync(capture, hold));
    }

    /// <summary>
    /// Test seam (the crash suite): a background checkpoint starts writing only once the committer has
    /// started a round beside it, or waits for it, so that rounds and crashes land among its writes even
    /// on devices that complete at once.
    /// </summary>
    internal bool HoldCheckpointForARound { get; set; }
    private TaskCompletionSource? _checkpointHold;

    private async Task WriteInBackgroundAsync(CheckpointCapture capture, Task? hold)
    {
        try
        {
            if (hold != null)
                await hold.ConfigureAwait(false);
            // Abandoned (false) when a target was dropped meanwhile: the drop's checkpoint follows.
            await WriteCapturedAsync(capture).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Fail([], e);
        }
    }

    /// <summary>The checkpoint still being written in the background, if any (the committer's; null or completed otherwise).</summary>
    private Task? _background;

    /// <summary>Whether a background checkpoint is still being written.</summary>
    private bool BackgroundCheckpointRunning => _background is { IsCompleted: false };

    /// <summary>Waits for a background checkpoint's write (its failure was handled where it ran).</summary>
    private async ValueTask BackgroundCheckpointDoneAsync()
    {
        if (_background is { } b)
        {
            _checkpointHold?.TrySetResult();
            await b.ConfigureAwait(false);
            _background = null;
        }
    }

    /// <summary>
    /// The arrays checkpoints capture the chunks into, reused (PoolStateCodec.CaptureBuffers): taken by a
    /// capture, given back once it is encoded and released (<see cref="WriteCapturedAsync"/>), so a capture
    /// still being encoded on another thread is never overwritten by the next. Null while a capture has them.
    /// </summary>
    private PoolStateCodec.CaptureBuffers? _captureBuffers = new();

    /// <summary>The capture arrays the log holds now (null while a capture has them): white-box tests.</summary>
    internal PoolStateCodec.CaptureBuffers? CaptureBuffers => Volatile.Read(ref _captureBuffers);

    /// <summary>Captures the state (no in-place write in flight, none started until it is taken) and the log's position.</summary>
    private async ValueTask<CheckpointCapture> CaptureCheckpointAsync()
    {
        var state = _pool.Meta;
        PoolStateCodec.PoolStateCapture capture;
        string label;
        ulong applied;
        long appliedOrdinal;
        Store.ShardHeaderLayout layout;
        long estimate;
        long appliedTail;
        int[] excluded;
        // Never capture a mapping whose extent an in-place write is rewriting: wait until none is in
        // flight, with new claims held off (docs/format.md, "Overwriting a writeback extent in place").
        while (true)
        {
            Task drained;
            lock (state.Sync)
            {
                if (_inPlaceInFlight == 0)
                {
                    _capturing = false;
                    // An in-place write that failed while this waited failed the pool: its extents may be torn.
                    _pool.ThrowIfNotLoggable();
                    // Every mapping captured is in this checkpoint: none of their extents is rewritten in place from now on.
                    _flushHorizon = Math.Max(_flushHorizon, _enqueued);
                    // The log's buffers unless a capture still has them (none should: one checkpoint at a time).
                    capture = PoolStateCodec.Capture(state, Interlocked.Exchange(ref _captureBuffers, null));
                    estimate = MetadataEstimate;
                    layout = _pool.DurableLayout();
                    label = state.Props["label"];
                    applied = state.LastSeq;
                    appliedTail = _appliedTail;
                    appliedOrdinal = _appliedOrdinal;
                    excluded = Pool.ParseExcluded(state.Props.GetValueOrDefault(Pool.ExcludedProp), _pool.Shards.Length);
                    break;
                }
                _capturing = true;
                drained = (_inPlaceDrained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
            }
            await drained.ConfigureAwait(false);
        }
        uint format = _format;
        // A v2 log is unreadable to engines without wal_v2: its headers carry the bit from the switch on.
        ulong walV2 = format == WalFormatV2.Format ? _pool.Catalog.Find(Layout.LayoutCatalog.WalV2Feature)?.Mask ?? 0 : 0;
        return new CheckpointCapture(capture, label, applied, appliedOrdinal, layout, appliedTail, format, _pool.TargetCount, walV2, estimate, excluded);
    }

    /// <summary>
    /// Encodes and writes a captured state, flushes, writes the headers, and moves the head to the captured
    /// tail. Returns false, with no header written, when a target its state does not exclude was dropped
    /// before the flush: the state may name replicas there (writeback mappings applied before their round,
    /// a round whose flush failed there) that no flush made durable, and the checkpoint would make them
    /// trusted at replay, with the target counted (docs/format.md, "A target that fails a write").
    /// </summary>
    private async Task<bool> WriteCapturedAsync(CheckpointCapture c)
    {
        var capture = c.State;
        string label = c.Label;
        ulong applied = c.Applied;
        long appliedOrdinal = c.AppliedOrdinal;
        var layout = c.Layout;
        // Encoded outside the lock, so writers go on meanwhile: serializing 131,072 chunk maps under
        // it held them off for 50-100 ms; capturing them takes 2-3 ms.
        // Laid out straight into the slot's bytes, in reused arrays (the capture's and the
        // slot's): a checkpoint of a large image's chunk maps is a few MiB, every few thousand writes.
        int payloadLength;
        long chunkBytes;
        byte[]? rented = null;
        ulong seq = applied; // the checkpoint holds exactly the applied records
        uint format = c.Format;
        int shardCount = c.ShardCount;
        ulong walV2 = c.WalV2;
        try
        {
            try
            {
                payloadLength = capture.Measure();
                chunkBytes = capture.ChunkBytes;
                long total = Checkpoint.SlotLength(payloadLength, _blockSize);
                if (total > _pool.Shards[0].Header.CheckpointLength)
                    throw new NoSpaceException($"no space left in pool '{label}': metadata of {total} bytes outgrew the {_pool.Shards[0].Header.CheckpointLength}-byte checkpoint area");
                rented = Checkpoint.Slots.Rent((int)total);
                capture.EncodeInto(rented.AsSpan(Checkpoint.HeaderSize, payloadLength));
                rented.AsSpan(Checkpoint.HeaderSize + payloadLength, (int)total - Checkpoint.HeaderSize - payloadLength).Clear();
                Checkpoint.Seal(rented, _pool.Id, seq, c.Tail, payloadLength);
            }
            finally
            {
                capture.Release();
                Volatile.Write(ref _captureBuffers, capture.Buffers);
            }
            var ckpt = rented.AsMemory(0, (int)Checkpoint.SlotLength(payloadLength, _blockSize));
            await OnLogShardsAsync(s =>
            {
                uint slot = s.Header.ActiveCheckpoint == 0 ? 1u : 0u;
                return DeviceIo.WriteAsync(s.Device, s.Base + s.Header.CheckpointOffset(slot), ckpt).AsTask();
            }).ConfigureAwait(false);
        }
        finally
        {
            // Every shard's write is done here, failed or not (OnLogShardsAsync waits for all of them).
            if (rented != null)
                Checkpoint.Slots.Return(rented);
        }
        await FlushAllAsync().ConfigureAwait(false);
        if (!RecordsEveryDrop(c.Excluded))
            return false;
        await OnLogShardsAsync(async s =>
        {
            var h = s.Header with
            {
                ActiveCheckpoint = s.Header.ActiveCheckpoint == 0 ? 1u : 0u,
                CheckpointSeq = seq,
                WalHead = c.Tail,
                WalEpoch = _epoch,
                Label = label,
                // Headers follow the log: the layout the state is at, plus bit 62 while a job may
                // have written what older software cannot read (so it refuses before replaying).
                LayoutVersion = layout.Version,
                Compat = layout.Compat,
                RoCompat = layout.RoCompat,
                Incompat = layout.Incompat | walV2,
                WalFormat = format,
                TargetCount = shardCount,
            };
            await s.WriteHeaderAsync(h).ConfigureAwait(false);
        }).ConfigureAwait(false);
        Volatile.Write(ref _head, c.Tail);
        // What rounds applied since the capture (a background checkpoint's) stays counted.
        lock (_pool.Meta.Sync)
            MetadataEstimate = payloadLength - chunkBytes + (MetadataEstimate - c.EstimateAtCapture);
        // The checkpoint's flush made every applied record durable, writeback ones included (those
        // applied but not yet in a round are durable too, but counted only when their round flushes).
        MarkDurable(applied, appliedOrdinal);
        return true;
    }
}
