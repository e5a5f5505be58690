using System.Diagnostics;
using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Engine.Migration;

/// <summary>How a <see cref="MigrationLoop"/> runs.</summary>
internal sealed record MigrationOptions
{
    /// <summary>Chunk reads from one target at once, and chunk writes to it (a slot per target and phase).</summary>
    public int InFlightPerTarget { get; init; } = 4;

    /// <summary>
    /// Chunks the loop copies into one target at once, per write slot of it (its copy places there):
    /// those waiting for a read slot, reading, waiting for the write slot, writing. A chunk gives its
    /// places back once its data is on the destination, before its switch (docs/migration.md).
    /// </summary>
    public int WindowPerSlot { get; init; } = 8;

    /// <summary>
    /// Results the loop keeps in order per copy place: beyond the chunks being copied, those switched
    /// and those needing nothing, so the copies go on past a slow chunk (the cursor names the first
    /// chunk not known done).
    /// </summary>
    public int ResultsPerPlace { get; init; } = 4;

    /// <summary>Chunks between two durable cursors (each is one log commit).</summary>
    public int CursorEvery { get; init; } = 256;

    /// <summary>Read every destination back and verify it before switching (one more read per copy).</summary>
    public bool ReadBack { get; init; }
}

/// <summary>What a run of the loop did.</summary>
/// <param name="Visited">Chunks visited (mapped when visited).</param>
/// <param name="Moved">Chunks switched to a new location.</param>
/// <param name="BytesWritten">Destination bytes written by switched chunks.</param>
/// <param name="Left">Chunks left where they were because a device error or unreadable data stopped their copy.</param>
/// <param name="FirstLeft">Why the first of them was left.</param>
internal sealed record MigrationResult(long Visited, long Moved, long BytesWritten, long Left, string? FirstLeft);

/// <summary>
/// The one loop that moves or rewrites chunks while clients do I/O (docs/migration.md): layout
/// actions plug in an <see cref="IChunkTransform"/>. It visits every mapped chunk in (image id,
/// chunk index) order from a cursor and, per chunk, under that chunk's exclusive hold (a client
/// read or write of that chunk waits for it alone; every other chunk is served): plans, reserves
/// the destination extents (held as fresh extents, PoolLog.HoldFresh, so a client out of space
/// waits for them instead of failing), reads the chunk into a DMA buffer from the source device's
/// pool and verifies it, lets the transform produce the destination bytes in that buffer, verifies
/// them, writes every destination from the same buffer (chunk data is never a managed array) and
/// switches the map with ChunkMover's conditional switch, a writeback commit (SwitchWriteback); the
/// source extents are freed once the switch is durable, and every cursor save is committed after a
/// flush. A crash anywhere leaves each chunk at its source or, once its switch record is durable (or
/// in the tail with its data verified), at its destination (docs/format.md, "Moving a chunk").
/// <para>
/// Bounded: at most <see cref="MigrationOptions.InFlightPerTarget"/> chunks touch a target at once.
/// Paced by the pool property `migrate_rate` (<see cref="MigrationThrottle"/>). The cursor is saved
/// through the job every <see cref="MigrationOptions.CursorEvery"/> chunks and names the first chunk
/// not known done, so a crash or a stop resumes there. A destination target out of space pauses
/// the loop (RAS <c>migration_paused</c>) until space comes back (<c>migration_resumed</c>). A device
/// error on a source (no replica readable) or a destination leaves that chunk where it is (RAS
/// <c>migration_chunk_left</c>) and the loop goes on; the result counts such chunks.
/// </para>
/// </summary>
internal sealed class MigrationLoop
{
    private readonly Pool _pool;
    private readonly IChunkTransform _transform;
    private readonly MigrationOptions _options;
    private readonly SlotGate[] _readSlots, _writeSlots;
    private readonly MigrationThrottle _throttle;
    private readonly SpacePause _pause;
    private readonly UpgradeContext _ctx;
    private readonly MigrationStageTimes? _times = MigrationStageTimes.Current;
    private long _left;
    private string? _firstLeft;

    public MigrationLoop(UpgradeContext ctx, IChunkTransform transform, MigrationOptions? options = null)
    {
        _ctx = ctx;
        _pool = MigrationAction.PoolOf(ctx.Pool);
        _transform = transform;
        _options = options ?? new MigrationOptions();
        _readSlots = Enumerable.Range(0, _pool.TargetCount).Select(_ => new SlotGate(_options.InFlightPerTarget)).ToArray();
        _writeSlots = Enumerable.Range(0, _pool.TargetCount).Select(_ => new SlotGate(_options.InFlightPerTarget)).ToArray();
        _throttle = new MigrationThrottle(_pool);
        _pause = new SpacePause(_pool, ctx);
    }

    private enum Kind { Gone, InPlace, Moved, Left, Retry }

    private readonly record struct Outcome(Kind Kind, long Bytes);

    private static readonly Task<Outcome> InPlaceDone = Task.FromResult(new Outcome(Kind.InPlace, 0));

    /// <summary>
    /// Runs from <paramref name="cursor"/> (0: the start; else one this loop saved) to the last chunk.
    /// A chunk that needs nothing when looked at without its hold is not held at all (a chunk that
    /// changes meanwhile is rewritten by a client, which writes it in the new place or form). With
    /// <paramref name="sweep"/> the run saves no cursor and counts no items, only bytes: a second
    /// pass from the start that catches a chunk a client write begun before the job placed the old
    /// way after the first pass had looked (MigrationAction).
    /// </summary>
    public async Task<MigrationResult> RunAsync(ulong cursor, CancellationToken ct, bool sweep = false)
    {
        var (image, chunk) = MigrationCursor.Decode(cursor);
        long began = _times != null ? Stopwatch.GetTimestamp() : 0;
        var window = new Queue<(Task<Outcome> Task, uint Image, long Chunk, ChunkTicket? Ticket)>();
        // Copy places per destination target: its write slots busy, and chunks enough read or waiting
        // for them. Per target, so chunks waiting for a slow target do not take every place and keep
        // the others idle.
        int places = Math.Max(1, _options.WindowPerSlot * _options.InFlightPerTarget);
        var copying = Enumerable.Range(0, _pool.TargetCount).Select(_ => new SemaphoreSlim(places, places)).ToArray();
        // Results kept in order for the cursor: chunks being copied, chunks waiting for their switch's
        // commit round (a chunk's lock and destination extents each, nothing else), chunks needing nothing.
        int maxWindow = places * _pool.TargetCount * Math.Max(1, _options.ResultsPerPlace);
        long visited = 0, moved = 0, written = 0, sinceCursor = 0;
        Task saving = Task.CompletedTask;
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            for (var meta = NextImage(image); meta != null; meta = NextImage(meta.Id + 1))
            {
                long from = meta.Id == image ? chunk : 0;
                foreach (long k in MappedChunks(meta, from))
                {
                    ct.ThrowIfCancellationRequested();
                    var peek = _pool.ChunkIo.Lookup(meta, k);
                    if (peek == null)
                        continue;
                    while (window.Count > 0 && window.Peek().Task.IsCompleted)
                        await AccountAsync(await Drain(window).ConfigureAwait(false)).ConfigureAwait(false);
                    // Paced before the hold, so a throttled loop never keeps a client waiting; before a
                    // wait the chunks in flight finish, so the cursor saved is the loop's position.
                    var (planned, into) = PlannedBytes(meta, k, peek);
                    if (planned < 0)
                    {
                        await WhileFullAsync().ConfigureAwait(false);
                        window.Enqueue((InPlaceDone, meta.Id, k, null));
                        continue;
                    }
                    long paced = _times != null ? Stopwatch.GetTimestamp() : 0;
                    if (_throttle.MustWait(planned))
                    {
                        while (window.Count > 0)
                            await AccountAsync(await Drain(window).ConfigureAwait(false), flush: true).ConfigureAwait(false);
                        await saving.ConfigureAwait(false);
                    }
                    await _throttle.TakeAsync(planned, ct).ConfigureAwait(false);
                    _times?.Add(MigrationStageTimes.Stage.Throttle, Stopwatch.GetTimestamp() - paced);
                    await WhileFullAsync().ConfigureAwait(false);
                    foreach (int t in into)
                    {
                        long waited = _times != null ? Stopwatch.GetTimestamp() : 0;
                        await copying[t].WaitAsync(ct).ConfigureAwait(false);
                        _times?.Add(MigrationStageTimes.Stage.Place, Stopwatch.GetTimestamp() - waited, t);
                    }
                    var ticket = new ChunkTicket(copying, into, _times);
                    window.Enqueue((MoveAsync(meta.Id, k, ticket, abort.Token), meta.Id, k, ticket));
                }
            }
            while (window.Count > 0)
                await AccountAsync(await Drain(window).ConfigureAwait(false)).ConfigureAwait(false);
            await saving.ConfigureAwait(false);
            if (!sweep)
                _times?.Ran(Stopwatch.GetTimestamp() - began);
        }
        catch
        {
            // Nothing of this run may go on after it: chunks waiting (for space) give up, the others
            // finish or fail.
            await abort.CancelAsync().ConfigureAwait(false);
            while (window.Count > 0)
                await ((Task)window.Dequeue().Task).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            await saving.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            throw;
        }
        finally
        {
            foreach (var c in copying)
                c.Dispose();
        }
        return new MigrationResult(visited, moved, written, Interlocked.Read(ref _left), _firstLeft);

        async ValueTask WhileFullAsync()
        {
            // Paced (clients are active, or a rate is set): one result per place, so a burst of the
            // throttle's credit holds no more chunk locks waiting for commit rounds than the places,
            // which clients writing into those chunks would wait for (perf migrate --rebuild: the
            // writers' p99 1.5x before with a window of 64, 3.8x with 256).
            int limit = _throttle.Paced ? places * _pool.TargetCount : maxWindow;
            if (window.Count < limit)
                return;
            long t0 = _times != null ? Stopwatch.GetTimestamp() : 0;
            while (window.Count >= limit)
                await AccountAsync(await Drain(window).ConfigureAwait(false)).ConfigureAwait(false);
            _times?.Add(MigrationStageTimes.Stage.WindowFull, Stopwatch.GetTimestamp() - t0);
        }

        async Task<(Outcome Outcome, uint Image, long Chunk)> Drain(Queue<(Task<Outcome> Task, uint Image, long Chunk, ChunkTicket? Ticket)> q)
        {
            var head = q.Dequeue();
            var outcome = await head.Task.ConfigureAwait(false);
            head.Ticket?.Mark(MigrationStageTimes.Stage.Drain);
            return (outcome, head.Image, head.Chunk);
        }

        async ValueTask AccountAsync((Outcome Outcome, uint Image, long Chunk) done, bool flush = false)
        {
            var o = done.Outcome;
            if (o.Kind == Kind.Gone)
                return;
            visited++;
            if (o.Kind == Kind.Moved)
            {
                moved++;
                written += o.Bytes;
            }
            _ctx.ReportProgress(sweep ? 0 : 1, o.Bytes);
            if (sweep)
                return;
            // Every chunk before this one is done too (the window completes in order). The save is
            // queued behind their switches and not waited for (the loop goes on while its commit
            // round flushes); the next one waits for it, so saves land in order.
            if ((++sinceCursor >= _options.CursorEvery || (flush && window.Count == 0)) && MigrationCursor.Encode(done.Image, done.Chunk + 1) is { } c)
            {
                sinceCursor = 0;
                await saving.ConfigureAwait(false);
                saving = _ctx.SaveCursorAsync(c);
            }
        }
    }

    /// <summary>The image with the lowest id at or after <paramref name="from"/> (images created meanwhile are visited too).</summary>
    private ImageMeta? NextImage(uint from)
    {
        lock (_pool.Meta.Sync)
        {
            ImageMeta? best = null;
            foreach (var m in _pool.Meta.Images.Values)
                if (m.Id >= from && (best == null || m.Id < best.Id))
                    best = m;
            return best;
        }
    }

    /// <summary>The image's mapped chunks at or after <paramref name="from"/>, in order, as they are now.</summary>
    private long[] MappedChunks(ImageMeta meta, long from)
    {
        long[] keys;
        lock (_pool.Meta.Sync)
        {
            keys = new long[meta.Chunks.Count];
            meta.Chunks.Keys.CopyTo(keys, 0);
        }
        Array.Sort(keys);
        int start = Array.BinarySearch(keys, from);
        return start == 0 ? keys : keys[(start < 0 ? ~start : start)..];
    }

    /// <summary>
    /// Bytes a chunk's move would write, judged from its location before the hold (for the throttle),
    /// and the distinct targets of its new replicas, ascending: -1 when it needs nothing, 0 when it
    /// only drops replicas (an rf decrease).
    /// </summary>
    private (long Bytes, int[] Into) PlannedBytes(ImageMeta meta, long chunk, ChunkMap location)
    {
        var source = new ChunkSource(meta.Id, chunk, meta.ChunkSize, location);
        var targets = new int[_transform.ReplicasAfter(source)];
        if (!_transform.Plan(source, targets, out var plan))
            return (-1, []);
        int n = 0;
        foreach (int t in targets)
            if (plan.RewriteAll || Kept(location, t) < 0)
                n++;
        var into = new SortedSet<int>();
        foreach (int t in targets)
            if ((plan.RewriteAll || Kept(location, t) < 0) && t < _pool.TargetCount)
                into.Add(t);
        return ((long)plan.ExtentBytes * n, [.. into]);
    }

    /// <summary>The index of the source replica on target <paramref name="t"/>, or -1.</summary>
    private static int Kept(ChunkMap location, int t)
    {
        for (int i = 0; i < location.Replicas.Length; i++)
            if (location.Replicas[i].Target == t)
                return i;
        return -1;
    }

    /// <summary>Moves one chunk, retrying after a pause for space or a switch the chunk's change dropped.</summary>
    private async Task<Outcome> MoveAsync(uint image, long chunk, ChunkTicket ticket, CancellationToken ct)
    {
        await Task.Yield();
        ticket.Mark(MigrationStageTimes.Stage.Queue);
        try
        {
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                var (outcome, full, need) = await TryMoveAsync(image, chunk, ticket).ConfigureAwait(false);
                // A retry copies again in no place of its own (rare: a switch a client's change or a
                // target's drop undid), so the places bound the copies only nearly.
                if (outcome.Kind == Kind.Retry)
                    continue;
                if (full < 0)
                {
                    if (outcome.Kind == Kind.Moved)
                        _pause.Progressed();
                    return outcome;
                }
                await _pause.WaitAsync(full, need, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            ticket.Copied();
        }
    }

    /// <summary>One attempt: the outcome, or the target (&gt;= 0) that had no room for <c>Need</c> bytes.</summary>
    private async Task<(Outcome Outcome, int Full, long Need)> TryMoveAsync(uint image, long chunk, ChunkTicket ticket)
    {
        ChunkHold hold;
        try
        {
            hold = await _pool.Mover.LockAsync(image, chunk).ConfigureAwait(false);
        }
        catch (NotFoundException)
        {
            return (new Outcome(Kind.Gone, 0), -1, 0); // the image was removed
        }
        ticket.Mark(MigrationStageTimes.Stage.Lock);
        using (hold)
        {
            var location = hold.Location;
            if (location == null)
                return (new Outcome(Kind.Gone, 0), -1, 0); // trimmed, or cut off by a resize
            var source = new ChunkSource(image, chunk, hold.ChunkSize, location);
            var targets = new int[_transform.ReplicasAfter(source)];
            if (!_transform.Plan(source, targets, out var plan))
                return (new Outcome(Kind.InPlace, 0), -1, 0);
            // A slot per target and I/O phase: the read holds the target of the replica it reads
            // (taken before the destination is reserved, so reservations wait with the reads), the
            // write the destinations', so a target serves InFlightPerTarget reads and as many writes
            // at once, as a copy tool reading one place and writing another would. The read is of
            // the first replica not excluded (ChunkIo.ReadVerifiedAsync; one read after a bad copy
            // takes no slot): a rebuild's chunks each have a replica on the excluded target, whose
            // slots would otherwise let only InFlightPerTarget chunks of the whole pool be read at once.
            int from = ReadTarget(location);
            var reading = new SlotLease(_readSlots, from < 0 ? [] : [from]);
            await reading.TakeAsync().ConfigureAwait(false);
            ticket.Mark(MigrationStageTimes.Stage.ReadSlot, from);
            try
            {
                return await CopyAndSwitchAsync(hold, source, targets, plan, reading, ticket).ConfigureAwait(false);
            }
            finally
            {
                reading.Release();
            }
        }
    }

    private async Task<(Outcome Outcome, int Full, long Need)> CopyAndSwitchAsync(ChunkHold hold, ChunkSource source, int[] targets, ChunkPlan plan, SlotLease reading, ChunkTicket ticket)
    {
        var location = source.Location;
        int n = targets.Length;
        var destination = new Replica[n];
        var isNew = new bool[n];
        for (int r = 0; r < n; r++)
        {
            int kept = plan.RewriteAll ? -1 : Kept(location, targets[r]);
            if (kept >= 0)
            {
                destination[r] = location.Replicas[kept];
                continue;
            }
            // Never a new copy on an excluded target (the log would void its switch, and the chunk come back here).
            if (_pool.IsExcluded(targets[r]))
                return Leave(source, destination, isNew, plan, $"its new place is on target {targets[r]}, which is excluded");
            long off = await _pool.ChunkIo.AllocateAsync(targets[r], plan.ExtentBytes).ConfigureAwait(false);
            if (off < 0)
            {
                FreeNew(destination, isNew, plan.ExtentBytes);
                return (default, targets[r], plan.ExtentBytes);
            }
            destination[r] = new Replica((ushort)targets[r], off, 0);
            isNew[r] = true;
        }
        // From here until the switch frees the source (or the copy gives its extents back) the
        // loop holds fresh extents: a client out of space waits for it rather than fail.
        ticket.Mark(MigrationStageTimes.Stage.Allocate);
        _pool.Log.HoldFresh();
        try
        {
            return await CopyHeldAsync(hold, source, destination, isNew, plan, reading, ticket).ConfigureAwait(false);
        }
        finally
        {
            _pool.Log.ReleaseFresh();
        }
    }

    private async Task<(Outcome Outcome, int Full, long Need)> CopyHeldAsync(ChunkHold hold, ChunkSource source, Replica[] destination, bool[] isNew, ChunkPlan plan, SlotLease reading, ChunkTicket ticket)
    {
        var location = source.Location;
        if (Array.IndexOf(isNew, true) < 0)
        {
            // Only fewer replicas (an rf decrease): nothing to copy; the switch frees the dropped ones.
            ticket.Copied();
            var dropped = hold.SwitchWriteback(location, destination, _transform.SwitchRecord(source, destination), plan.ExtentBytes);
            return dropped == ChunkSwitch.Switched ? (new Outcome(Kind.Moved, 0), -1, 0) : (new Outcome(Kind.Retry, 0), -1, 0);
        }
        var device = _pool.Shards[location.Replicas[0].Target].Device;
        using (var buffer = device.Buffers.Rent(plan.ExtentBytes))
        {
            if (await CopyAsync(source, destination, isNew, plan, buffer, hold, reading, ticket) is { } left)
                return left;
        }
        // The data is on the destination. The switch is a writeback commit: applied now, durable with
        // the next flush round (the cursor saves are committed after one), the source freed then. A
        // durable commit per switch was a flush round per few chunks: 459 rounds, each flushing behind
        // the stream of 1 MiB writes (19 ms), for a 2 GiB move (perf migrate --stages).
        ticket.Copied();
        var result = hold.SwitchWriteback(location, destination, _transform.SwitchRecord(source, destination), plan.ExtentBytes);
        ticket.Mark(MigrationStageTimes.Stage.Switch);
        // Under the exclusive hold nothing else changes the chunk; a Changed switch freed the
        // destination and the next attempt copies the chunk as it is then.
        long bytes = 0;
        for (int r = 0; r < destination.Length; r++)
            if (isNew[r])
                bytes += plan.ExtentBytes;
        return result == ChunkSwitch.Switched ? (new Outcome(Kind.Moved, bytes), -1, 0) : (new Outcome(Kind.Retry, 0), -1, 0);
    }

    /// <summary>Reads, transforms, verifies and writes the chunk's new replicas (their CRC set in destination); an outcome only when the chunk is left.</summary>
    private async Task<(Outcome, int, long)?> CopyAsync(ChunkSource source, Replica[] destination, bool[] isNew, ChunkPlan plan, DmaBuffer buffer, ChunkHold hold, SlotLease reading, ChunkTicket ticket)
    {
        var location = source.Location;
        var memory = buffer.Memory;
        try
        {
            await hold.ReadVerifiedAsync(location, memory.Slice(plan.SourceOffset, source.ChunkSize)).ConfigureAwait(false);
        }
        catch (DataIntegrityException e)
        {
            // Reported by the read (data_unrecoverable); the chunk stays as it is.
            return Leave(source, destination, isNew, plan, e.Message);
        }
        finally
        {
            reading.Release();
        }
        ticket.Mark(MigrationStageTimes.Stage.Read, ReadTarget(location));
        uint crc = _transform.Produce(source, buffer.Span);
        for (int r = 0; r < destination.Length; r++)
            if (isNew[r])
                destination[r] = destination[r] with { Crc = crc };
        var first = Array.IndexOf(isNew, true);
        if (!_transform.Verify(source, destination[first], buffer.Span))
            return Leave(source, destination, isNew, plan, $"the copy does not match its checksum 0x{crc:x8} before it was written");
        ticket.Mark(MigrationStageTimes.Stage.Produce);
        var writeSlots = new SlotLease(_writeSlots, DistinctTargets(destination, isNew));
        await writeSlots.TakeAsync().ConfigureAwait(false);
        ticket.Mark(MigrationStageTimes.Stage.WriteSlot, destination[first].Target);
        try
        {
            var writes = WriteNew(destination, isNew, memory);
            try
            {
                await Task.WhenAll(writes.Select(w => w.Task)).ConfigureAwait(false);
                ticket.Mark(MigrationStageTimes.Stage.Write, destination[first].Target);
            }
            catch (DeviceException e)
            {
                // A destination target whose device failed the copy's write leaves the pool as after a
                // client's write (PoolLog.TryDropShard); nothing names the copy yet, so the chunk is
                // planned again, without that target. Otherwise the chunk stays where it is.
                FreeNew(destination, isNew, plan.ExtentBytes);
                bool dropped = true;
                foreach (var (t, w) in writes)
                    if (w.IsFaulted && w.Exception!.InnerException is DeviceException d)
                        dropped &= _pool.Log.TryDropShard(t, d);
                return dropped ? (new Outcome(Kind.Retry, 0), -1, 0) : Leave(source, plan, $"a device error on the destination: {e.Message}");
            }
            if (_options.ReadBack)
            {
                for (int r = 0; r < destination.Length; r++)
                {
                    if (!isNew[r])
                        continue;
                    await _pool.Mover.ReadAsync(destination[r], memory).ConfigureAwait(false);
                    if (!_transform.Verify(source, destination[r], buffer.Span))
                        return Leave(source, destination, isNew, plan, $"the copy on target {destination[r].Target} read back does not match its checksum 0x{crc:x8}");
                }
            }
        }
        catch (DeviceException e)
        {
            return Leave(source, destination, isNew, plan, $"a device error on the destination: {e.Message}");
        }
        finally
        {
            writeSlots.Release();
        }
        return null;
    }

    /// <summary>The target of the replica a verified read tries first (the first not excluded), or -1.</summary>
    private int ReadTarget(ChunkMap location)
    {
        foreach (var r in location.Replicas)
            if (!_pool.IsExcluded(r.Target))
                return r.Target;
        return -1;
    }

    /// <summary>The distinct targets of the replicas (those marked in <paramref name="only"/>, when given), ascending.</summary>
    private static int[] DistinctTargets(Replica[] replicas, bool[]? only)
    {
        var all = new SortedSet<int>();
        for (int r = 0; r < replicas.Length; r++)
            if (only == null || only[r])
                all.Add(replicas[r].Target);
        return [.. all];
    }

    /// <summary>Starts the writes of the new replicas, each with its target.</summary>
    private List<(int Target, Task Task)> WriteNew(Replica[] destination, bool[] isNew, ReadOnlyMemory<byte> extent)
    {
        var writes = new List<(int, Task)>(destination.Length);
        for (int r = 0; r < destination.Length; r++)
            if (isNew[r])
                writes.Add((destination[r].Target, _pool.Mover.WriteAsync(destination[r], extent).AsTask()));
        return writes;
    }

    private (Outcome, int, long) Leave(ChunkSource source, Replica[] destination, bool[] isNew, ChunkPlan plan, string why)
    {
        FreeNew(destination, isNew, plan.ExtentBytes);
        return Leave(source, plan, why);
    }

    /// <summary>Reports a chunk left where it is (its new extents already given back).</summary>
    private (Outcome, int, long) Leave(ChunkSource source, ChunkPlan plan, string why)
    {
        string message = $"pool '{_pool.Label}' image #{source.Image} chunk {source.Chunk}: {_ctx.Feature.Name} left the chunk where it is: {why}";
        if (Interlocked.Increment(ref _left) == 1)
            _firstLeft = message;
        _pool.Ras.Emit(new RasEvent(RasIds.MigrationChunkLeft, RasSeverity.Error, RasType.InfoOnly, message,
            Pool: _pool.Label, Offset: source.Chunk * source.ChunkSize));
        return (new Outcome(Kind.Left, 0), -1, 0);
    }

    private void FreeNew(Replica[] destination, bool[] isNew, int extent)
    {
        for (int r = 0; r < destination.Length; r++)
            if (isNew[r])
                _pool.Mover.Release(destination[r], extent);
    }
}

/// <summary>
/// A chunk's move as the loop tracks it: the copy places it holds (one per target it writes) from the
/// loop's enqueue until its data is on the destination (given back once), and its stage times when
/// they are collected.
/// </summary>
internal sealed class ChunkTicket(SemaphoreSlim[] places, int[] taken, MigrationStageTimes? times)
{
    private long _last = times != null ? Stopwatch.GetTimestamp() : 0;
    private int _copied;

    /// <summary>The copy is done (or will not happen): the loop may start another.</summary>
    public void Copied()
    {
        if (Interlocked.Exchange(ref _copied, 1) == 0)
            foreach (int t in taken)
                places[t].Release();
    }

    /// <summary>Ends a stage begun at the previous mark (when stage times are collected).</summary>
    public void Mark(MigrationStageTimes.Stage stage, int target = -1)
    {
        if (times == null)
            return;
        long now = Stopwatch.GetTimestamp();
        times.Add(stage, now - _last, target);
        _last = now;
    }
}

/// <summary>
/// A chunk's slots on the targets one I/O phase of its copy uses (ascending, so holders never wait
/// in a cycle), given back once.
/// </summary>
internal sealed class SlotLease(SlotGate[] all, int[] targets)
{
    private int _held;

    public async Task TakeAsync()
    {
        foreach (int t in targets)
            await all[t].TakeAsync().ConfigureAwait(false);
        _held = 1;
    }

    public void Release()
    {
        if (Interlocked.Exchange(ref _held, 0) == 1)
            foreach (int t in targets)
                all[t].Release();
    }
}

/// <summary>
/// The loop's cursor in one u64 (the job's cursor field): image id in the top 26 bits, the next
/// chunk index in the low 38 (2^38 chunks: a 1 PiB image of 4 KiB chunks). 0 is the start.
/// </summary>
internal static class MigrationCursor
{
    private const int ChunkBits = 38;
    private const ulong ChunkMask = (1UL << ChunkBits) - 1;

    /// <summary>The cursor, or null when the position does not fit (the previous one then stands).</summary>
    public static ulong? Encode(uint image, long nextChunk) =>
        image < 1u << (64 - ChunkBits) && nextChunk >= 0 && (ulong)nextChunk <= ChunkMask ? ((ulong)image << ChunkBits) | (ulong)nextChunk : null;

    public static (uint Image, long Chunk) Decode(ulong cursor) => ((uint)(cursor >> ChunkBits), (long)(cursor & ChunkMask));
}

/// <summary>
/// Pauses a migration whose destination target is full until space comes back there: one RAS
/// <c>migration_paused</c> per episode and <c>migration_resumed</c> once a chunk moved again;
/// while paused the job's current action says so. Waits on the target's frees, not a timer.
/// </summary>
internal sealed class SpacePause(Pool pool, UpgradeContext ctx)
{
    private int _paused;

    public async Task WaitAsync(int target, long bytes, CancellationToken ct)
    {
        var allocator = pool.Shards[target].Allocator;
        if (Interlocked.Exchange(ref _paused, 1) == 0)
        {
            string what = $"target {target} has no free {bytes}-byte extent ({allocator.FreeBytes} bytes free)";
            ctx.ReportState($"paused: {what}");
            pool.Ras.Emit(new RasEvent(RasIds.MigrationPaused, RasSeverity.Warning, RasType.StateChange,
                $"pool '{pool.Label}' {ctx.Feature.Name} paused: {what}; it resumes by itself when space is freed there",
                Pool: pool.Label, Target: target, Device: pool.Shards[target].Device.Name));
        }
        while (true)
        {
            long frees = allocator.Frees;
            if (allocator.FreeBytes >= bytes)
                return;
            await allocator.FreedSinceAsync(frees).WaitAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>A chunk moved: a pause, if any, is over.</summary>
    public void Progressed()
    {
        if (Volatile.Read(ref _paused) == 0 || Interlocked.Exchange(ref _paused, 0) == 0)
            return;
        ctx.ReportState(null);
        pool.Ras.Emit(new RasEvent(RasIds.MigrationResumed, RasSeverity.Notice, RasType.StateChange,
            $"pool '{pool.Label}' {ctx.Feature.Name} resumed: space came back", Pool: pool.Label));
    }
}
