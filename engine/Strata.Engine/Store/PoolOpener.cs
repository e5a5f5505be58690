using System.Diagnostics;
using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// Opens a pool: validates every shard header read-only (layout version,
/// feature words, regions), replays each shard's newest checkpoint plus log,
/// keeps the longest history, and only then (when writable) writes: a fresh
/// checkpoint on every shard the log writes (not an excluded target's), which also
/// brings lagging shards and bad header copies up to date. A shard whose device
/// fails is left out when that history excludes its target (PoolOpener.Unreadable.cs).
/// </summary>
internal static partial class PoolOpener
{
    public static async Task<Pool> OpenAsync(StorageEngine engine, StorageEngine.PoolEntry entry)
    {
        long started = Stopwatch.GetTimestamp();
        var targets = engine.Targets;
        var shards = new Shard[entry.Extents.Length];
        string? readOnly = engine.Options.ReadOnly ? "the engine is open read-only" : null;
        string label = entry.Label;
        var damaged = new List<string>();
        var unreadable = new Unreadable(engine);
        for (int i = 0; i < shards.Length; i++)
        {
            var t = targets[i];
            if (t.UnreadReason != null)
            {
                unreadable.Add(label, t, $"its superblock cannot be read: {t.UnreadReason}", null);
                continue;
            }
            HeaderCopies.ReadResult<ShardHeader> r;
            try
            {
                r = await HeaderCopies.ReadAsync<ShardHeader>(t.Device, entry.Extents[i].Offset, (ReadOnlySpan<byte> s, out string? problem) =>
                {
                    var h = ShardHeader.Decode(s, out problem);
                    if (h != null && h.PoolId != entry.Id)
                    {
                        problem = $"belongs to pool {h.PoolId}";
                        return null;
                    }
                    return h;
                }, h => h.Generation).ConfigureAwait(false);
            }
            catch (DeviceException e)
            {
                // Decided after replay: an excluded target's shard is not needed (Unreadable.RefuseUnlessExcluded).
                unreadable.Add(label, t, $"its shard header cannot be read: {e.Message}", e);
                continue;
            }
            if (r.Best == null)
            {
                // Every target is read first, so the event names each damaged shard, not just the first.
                string problem = $"pool '{label}' shard on target {i} ('{t.Device.Name}'): both header copies are invalid (copy A: {r.Problems[0]}; copy B: {r.Problems[1]})";
                damaged.Add(problem);
                if (!entry.ReportedDamage.Contains(i))
                {
                    entry.ReportedDamage.Add(i);
                    engine.Ras.Emit(new RasEvent(RasIds.PoolHeaderDamaged, RasSeverity.Error, RasType.StateChange,
                        $"{problem}; the pool is not opened (nothing was written)", Pool: label, Target: i, Device: t.Device.Name));
                }
                continue;
            }
            var h = r.Best;
            label = h.Label;
            for (int c = 0; c < 2; c++)
                if (r.Problems[c] != null)
                    engine.Ras.Emit(new RasEvent(RasIds.HeaderCopyBad, RasSeverity.Warning, RasType.InfoOnly,
                        $"pool '{label}' shard header copy {HeaderCopies.CopyName(c)} on target {i} is invalid ({r.Problems[c]}); using copy {HeaderCopies.CopyName(r.BestCopy)}",
                        Pool: label, Target: i, Device: t.Device.Name));
            // Always checked, also for a read-only engine: an unknown incompat feature may change how even reads work.
            string? roCompat = CheckLayout(engine, h, label, i);
            readOnly ??= roCompat;
            string? regions = h.CheckRegions(t.Device.Geometry.LogicalBlockSize);
            // A smaller count: the pool was being extended onto later targets when the header was written
            // (the extension counts a target once its superblock holds the shard); the open's checkpoint rewrites it.
            if (regions == null && (h.ShardLength != entry.Extents[i].Length || h.TargetIndex != i || h.TargetCount > shards.Length || h.TargetCount < 1))
                regions = $"header says target {h.TargetIndex} of {h.TargetCount} with {h.ShardLength} bytes, the superblock says target {i} of {shards.Length} with {entry.Extents[i].Length}";
            if (regions != null)
                throw new CorruptMetadataException($"pool '{label}' shard on target {i} ('{t.Device.Name}') is damaged: {regions}; refusing to open (nothing was written)");
            shards[i] = new Shard(t, entry.Extents[i].Offset, h);
        }
        if (damaged.Count > 0)
            throw new CorruptMetadataException($"{string.Join("; ", damaged)}; refusing to open (nothing was written)");
        if (unreadable.Count == shards.Length)
            throw new CorruptMetadataException($"pool '{label}': no shard header can be read ({unreadable.Describe()}); refusing to open (nothing was written)");
        var template = shards.First(s => s != null).Header;
        for (int i = 0; i < shards.Length; i++)
            shards[i] ??= UnreadShard(targets[i], entry.Extents[i].Offset, template);
        if (shards.Any(s => s.Header.WalLength != shards[0].Header.WalLength))
            throw new CorruptMetadataException($"pool '{label}' shards disagree on the log size; refusing to open (nothing was written)");

        long headersDone = Stopwatch.GetTimestamp();
        Replay? best = null;
        var problems = new List<string>();
        var verifier = new TailVerifier(shards, unreadable, label);
        var clock = new ReplayClock();
        foreach (var s in shards)
        {
            // Without its header there is nothing to replay. A shard whose data alone failed the tail's
            // check still replays: its history may be the longest, and that history decides.
            if (s.HeaderUnread)
                continue;
            try
            {
                var result = await ReplayShardAsync(s, entry.Id, verifier, clock).ConfigureAwait(false);
                if (best == null || result.NextSeq > best.NextSeq)
                    best = result;
            }
            catch (CorruptMetadataException e)
            {
                problems.Add($"target {s.Index}: {e.Message}");
                engine.Ras.Emit(new RasEvent(RasIds.CheckpointBad, RasSeverity.Error, RasType.InfoOnly,
                    $"pool '{label}' metadata on target {s.Index} is unusable: {e.Message}", Pool: label, Target: s.Index, Device: s.Device.Name));
            }
            catch (ShardUnreadableException e)
            {
                problems.Add($"target {s.Index}: {e.Message}");
                unreadable.Add(label, s.Target, e.Message, e.InnerException!);
            }
        }
        if (best == null)
            throw new CorruptMetadataException($"pool '{label}': no shard has usable metadata ({string.Join("; ", problems)}); refusing to open");

        long replayDone = Stopwatch.GetTimestamp();
        var (state, tail, nextSeq, replayed, dropped, rewrites) = best;
        CheckReplayedLayout(engine, state, label);
        unreadable.RefuseUnlessExcluded(state, label);
        int rewritten = 0;
        if (rewrites.All.Count > 0)
        {
            // Nobody reads an excluded target's replicas, and an unreadable one is left out of the pool.
            var excluded = Pool.ParseExcluded(state.Props.GetValueOrDefault(Pool.ExcludedProp), shards.Length);
            bool Skip(int t) => Array.IndexOf(excluded, t) >= 0 || unreadable.Contains(t);
            if (readOnly == null)
            {
                try
                {
                    rewritten = await RewriteDeferredAsync(shards, rewrites, Skip).ConfigureAwait(false);
                }
                catch (DeviceException e)
                {
                    readOnly = $"the in-place writes of deferred writes replayed from its log failed: {e.Message}";
                    engine.Ras.Emit(new RasEvent(RasIds.PoolReadOnly, RasSeverity.Error, RasType.StateChange,
                        $"pool '{label}' opened read-only: {readOnly}; their blocks are served from the log", Pool: label));
                }
            }
            if (readOnly != null)
                OverlayDeferred(shards, rewrites, Skip);
        }
        var pool = new Pool(engine, entry, shards, state, readOnly);
        // A crash between a label change and its checkpoint leaves the old label in the headers.
        pool.OnLabelChanged(state.Props["label"]);
        pool.ReplayedRecords = replayed;
        pool.DroppedTailRecords = dropped.Count;
        if (dropped.Count > 0)
            ReportDropped(engine, state, dropped);
        pool.RebuildAllocators();
        ulong epoch = shards.Max(s => s.Header.WalEpoch);
        pool.Log = new PoolLog(pool, tail, nextSeq, readOnly == null ? epoch + 1 : epoch, WalFormatAfterOpen(engine, shards, state));
        long stateDone = Stopwatch.GetTimestamp();
        if (readOnly == null)
        {
            await pool.Log.WriteCheckpointAsync().ConfigureAwait(false);
            pool.Log.Start();
        }
        long done = Stopwatch.GetTimestamp();
        pool.OpenTimings = new PoolOpenTimings(Ms(started, headersDone), Ms(0, clock.CheckpointTicks), Ms(0, clock.LogTicks), clock.LogBytes, replayed,
            Ms(replayDone, stateDone), Ms(stateDone, done), Ms(started, done), rewritten);
        return pool;
    }

    private static double Ms(long from, long to) => (to - from) * 1000.0 / Stopwatch.Frequency;

    /// <summary>Time the shards' replays spent on checkpoints and on logs, and the log bytes they read (<see cref="PoolOpenTimings"/>).</summary>
    private sealed class ReplayClock
    {
        public long CheckpointTicks, LogTicks, LogBytes;
    }

    /// <summary>
    /// How the log is framed from the open on (the open-time checkpoint writes it into every header, so
    /// it may differ from what was replayed): v2 once the pool's layout includes wal_v2, or once any shard
    /// header says v2 (the wal_v2 action switched it; a crash in its checkpoint leaves some headers at
    /// v1, and its job's cursor is not durable yet, so the action runs again either way).
    /// </summary>
    private static uint WalFormatAfterOpen(StorageEngine engine, Shard[] shards, PoolState state)
    {
        uint layout = state.Layout?.Version ?? shards.Max(s => s.Header.LayoutVersion);
        return Math.Max(shards.Max(s => s.Header.WalFormat), (engine.Catalog.HasWalV2(layout) ? WalFormatV2.Format : 1));
    }

    /// <summary>Refuses layouts and incompat features this engine does not know; returns a read-only reason for unknown ro_compat ones.</summary>
    private static string? CheckLayout(StorageEngine engine, ShardHeader h, string label, int target)
    {
        var cat = engine.Catalog;
        ulong unknownIncompat = h.Incompat & ~cat.KnownIncompat;
        bool badVersion = h.LayoutVersion < LayoutCatalog.MinSupported || h.LayoutVersion > cat.MaxSupported;
        if (badVersion || unknownIncompat != 0)
        {
            var parts = new List<string>();
            if (h.LayoutVersion > cat.MaxSupported)
                parts.Add($"has layout version {h.LayoutVersion}, this engine supports layout versions {LayoutCatalog.MinSupported}..{cat.MaxSupported} (incompatible layout version: {h.LayoutVersion} larger than {cat.MaxSupported})");
            else if (badVersion)
                parts.Add($"has layout version {h.LayoutVersion}, this engine supports layout versions {LayoutCatalog.MinSupported}..{cat.MaxSupported}");
            else
                parts.Add($"has layout version {h.LayoutVersion} (this engine supports {LayoutCatalog.MinSupported}..{cat.MaxSupported})");
            if (unknownIncompat != 0)
                parts.Add($"unknown incompat features {cat.DescribeBits(unknownIncompat, FeatureClass.Incompat)}");
            Refuse(engine, label, target, $"pool '{label}' shard on target {target} {string.Join(" and ", parts)}; refusing to open (nothing was written)");
        }
        ulong unknownRo = h.RoCompat & ~cat.KnownRoCompat;
        if (unknownRo != 0)
        {
            string reason = $"shard on target {target} has read-only-compatible features {cat.DescribeBits(unknownRo, FeatureClass.RoCompat)} unknown to this engine";
            engine.Ras.Emit(new RasEvent(RasIds.PoolReadOnly, RasSeverity.Warning, RasType.StateChange, $"pool '{label}' opened read-only: {reason}", Pool: label, Target: target));
            return reason;
        }
        return null;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Refuse(StorageEngine engine, string label, int? target, string message)
    {
        engine.Ras.Emit(new RasEvent(RasIds.PoolLayoutIncompatible, RasSeverity.Error, RasType.InfoOnly, message, Pool: label, Target: target));
        throw new IncompatibleLayoutException(message);
    }

    /// <summary>
    /// After replay, before anything is written: the log is the truth about the layout (headers
    /// follow it at the next checkpoint). An upgrade this engine cannot finish, or a layout it
    /// does not know, refuses the open like an unknown header would.
    /// </summary>
    private static void CheckReplayedLayout(StorageEngine engine, PoolState state, string label)
    {
        uint max = engine.Catalog.MaxSupported;
        if (state.Layout is { } l && l.Version > max)
            Refuse(engine, label, null, $"pool '{label}' has layout version {l.Version}, this engine supports layout versions {LayoutCatalog.MinSupported}..{max} (incompatible layout version: {l.Version} larger than {max}); refusing to open (nothing was written)");
        if (state.UpgradeJob is { State: UpgradeJobState.InProgress } j && j.To > max)
            Refuse(engine, label, null, $"pool '{label}' has an upgrade to layout version {j.To} in progress, this engine supports layout versions {LayoutCatalog.MinSupported}..{max} (incompatible layout version: {j.To} larger than {max}); refusing to open (nothing was written)");
    }

    /// <summary>A shard's replayed state; Dropped: chunk-map records of the log tail whose data did not verify.</summary>
    private sealed record Replay(PoolState State, long Tail, ulong NextSeq, int Replayed, List<DroppedRecord> Dropped, DeferredRewrites Rewrites);

    private readonly record struct DroppedRecord(ulong Seq, uint Image, long Chunk);

    private static async Task<Replay> ReplayShardAsync(Shard s, Guid poolId, TailVerifier verifier, ReplayClock clock)
    {
        long started = Stopwatch.GetTimestamp();
        var h = s.Header;
        long slotAt = s.Base + h.CheckpointOffset(h.ActiveCheckpoint);
        var first = new byte[Math.Min(h.CheckpointLength, 64 * 1024)];
        await ReadMetadataAsync(s, slotAt, first, "its checkpoint").ConfigureAwait(false);
        long payloadLength = SlotPayloadLength(first, h, poolId);
        var whole = new byte[DeviceIo.AlignUp(Checkpoint.HeaderSize + payloadLength, s.Device.Geometry.LogicalBlockSize)];
        await ReadMetadataAsync(s, slotAt, whole, "its checkpoint").ConfigureAwait(false);
        var state = DecodeSlot(whole, payloadLength, h);
        long checkpointRead = Stopwatch.GetTimestamp();
        clock.CheckpointTicks += checkpointRead - started;
        List<WalRecord> records;
        long tail, logBytes;
        ulong nextSeq, durable;
        try
        {
            (records, tail, nextSeq, durable, logBytes) = await ReadLiveLogAsync(s, poolId).ConfigureAwait(false);
        }
        catch (DeviceException e)
        {
            throw new ShardUnreadableException($"its log cannot be read: {e.Message}", e);
        }
        clock.LogBytes += logBytes;
        var dropped = new List<DroppedRecord>();
        var rewrites = new DeferredRewrites();
        foreach (var r in records)
        {
            if (r.Seq > durable && r.Type is (ushort)MetaRecordType.ChunkMap or (ushort)MetaRecordType.ChunkMapBlocks)
            {
                // The tail: the log write may have reached the media while the chunk's data
                // write did not. Such a write was never acknowledged; its chunk keeps the
                // previous mapping, whose extents are still intact (freed only after an ack).
                var (image, chunk, replicas) = MetaRecords.ReadChunkMap(r.Payload);
                bool blocks = r.Type == (ushort)MetaRecordType.ChunkMapBlocks;
                if (state.Images.TryGetValue(image, out var img)
                    && !await verifier.VerifyAsync(replicas, image, chunk, img.ChunkSize, blocks, Pool.ParseExcluded(state.Props.GetValueOrDefault(Pool.ExcludedProp), int.MaxValue)).ConfigureAwait(false))
                {
                    dropped.Add(new DroppedRecord(r.Seq, image, chunk));
                    continue;
                }
            }
            // A deferred write logs only the blocks it touches: it stands only on the mapping it was made on. Its
            // writer made sure that mapping was durable (PoolLog.IsDurableBase), so a record whose base is not the
            // chunk's mapping here was never acknowledged (its round's flush would have made that base durable).
            if (r.Type == (ushort)MetaRecordType.ChunkDeferred && !DeferredBaseHolds(state, r.Payload))
            {
                var (image, chunk, _) = MetaRecords.ReadChunkMap(r.Payload);
                dropped.Add(new DroppedRecord(r.Seq, image, chunk));
                continue;
            }
            state.Apply(r);
            // A deferred write's record: durable or not, its in-place writes may not be (docs/format.md, "Deferred writes").
            if (r.Type == (ushort)MetaRecordType.ChunkDeferred)
                rewrites.Add(state, r);
            rewrites.AfterApply(state, r);
        }
        state.LastSeq = nextSeq - 1;
        CheckReplayed(state);
        // A torn batch can end replay inside a block; the next batch starts on a block boundary.
        tail = DeviceIo.AlignUp(tail, s.Device.Geometry.LogicalBlockSize) % h.WalLength;
        clock.LogTicks += Stopwatch.GetTimestamp() - checkpointRead;
        return new Replay(state, tail, nextSeq, records.Count, dropped, rewrites);
    }

    /// <summary>Reads a shard's own metadata; a device error makes the shard unreadable (not a verdict on the pool).</summary>
    private static async Task ReadMetadataAsync(Shard s, long at, byte[] buffer, string what)
    {
        try
        {
            await DeviceIo.ReadAsync(s.Device, at, buffer).ConfigureAwait(false);
        }
        catch (DeviceException e)
        {
            throw new ShardUnreadableException($"{what} cannot be read: {e.Message}", e);
        }
    }

    /// <summary>
    /// The payload length that the header of the active checkpoint slot announces (<paramref name="first"/>:
    /// the slot's first bytes), checked against the slot; otherwise the slot is corrupt.
    /// </summary>
    internal static long SlotPayloadLength(ReadOnlySpan<byte> first, ShardHeader h, Guid poolId)
    {
        long payloadLength = Checkpoint.PayloadLength(first, poolId, h.CheckpointSeq, out var problem);
        // Subtractions, not sums: a length near long.MaxValue must not wrap into range.
        if (problem == null && (payloadLength < 0 || payloadLength > h.CheckpointLength - Checkpoint.HeaderSize || payloadLength > MaxPayloadLength))
            problem = $"payload length {payloadLength} does not fit the slot";
        if (problem != null)
            throw new CorruptMetadataException($"checkpoint slot {h.ActiveCheckpoint}: {problem}");
        return payloadLength;
    }

    /// <summary>The largest payload a slot can be read into (one array, block-aligned): the encoder makes none larger.</summary>
    internal const long MaxPayloadLength = 0x7FFF_FFC7 - Checkpoint.HeaderSize - HeaderCopies.CopySize;

    /// <summary>The pool state in a whole checkpoint slot (header and payload) whose payload length <see cref="SlotPayloadLength"/> checked.</summary>
    internal static PoolState DecodeSlot(ReadOnlySpan<byte> whole, long payloadLength, ShardHeader h)
    {
        var payload = whole.Slice(Checkpoint.HeaderSize, (int)payloadLength);
        if (!Checkpoint.PayloadOk(whole, payload))
            throw new CorruptMetadataException($"checkpoint slot {h.ActiveCheckpoint}: payload CRC32C mismatch");
        return PoolStateCodec.Deserialize(payload, h.CheckpointSeq);
    }

    /// <summary>
    /// The records of a shard's whole log image after its checkpoint, the position after the last, the
    /// next sequence, and the last sequence known durable: everything the checkpoint holds was durable
    /// before it was written, and a DurableThrough mark says the same of every record up to its
    /// sequence (docs/format.md, "Durability").
    /// </summary>
    internal static (List<WalRecord> Records, long Tail, ulong NextSeq, ulong Durable) ReadLog(ReadOnlySpan<byte> wal, ShardHeader h, Guid poolId)
    {
        // The header says how the log after its head is framed (v2 batches carry their marks in their headers).
        if (h.WalFormat == WalFormatV2.Format)
            return WalFormatV2.Replay(wal, h.WalHead, WalFormatV2.Seed(poolId, h.WalEpoch), h.CheckpointSeq + 1, h.CheckpointSeq);
        var (records, tail, nextSeq) = WalFormat.Replay(wal, h.WalHead, WalFormat.Seed(poolId, h.WalEpoch), h.CheckpointSeq + 1);
        ulong durable = h.CheckpointSeq;
        foreach (var r in records)
            if (r.Type == (ushort)MetaRecordType.DurableThrough)
                durable = Math.Max(durable, new MetaReader(r.Payload).U64());
        return (records, tail, nextSeq, durable);
    }

    /// <summary>
    /// What the engine takes for granted of a shard's replayed metadata (it reads these without checks
    /// later): the pool's label, a replication factor that is a positive number, and container layout
    /// versions that are numbers.
    /// </summary>
    internal static void CheckReplayed(PoolState state)
    {
        if (!state.Props.ContainsKey("label"))
            throw new CorruptMetadataException("the replayed metadata has no pool label");
        if (!state.Props.TryGetValue("rf", out var rf) || !int.TryParse(rf, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int n) || n < 1)
            throw new CorruptMetadataException($"the replayed metadata has replication factor '{rf}', which is not a positive number");
        foreach (var c in state.Containers.Values)
            if (c.Props.TryGetValue(ContainerMeta.CreatedLayoutProp, out var v)
                && !uint.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out _))
                throw new CorruptMetadataException($"container {c.Id} has layout version '{v}', which is not a number");
    }

    private static void ReportDropped(StorageEngine engine, PoolState state, List<DroppedRecord> dropped)
    {
        string label = state.Props["label"];
        var named = dropped.Take(8).Select(d =>
        {
            var img = state.Images.GetValueOrDefault(d.Image);
            return img == null ? $"image {d.Image} chunk {d.Chunk}" : $"image '{img.Label}' offset {d.Chunk * img.ChunkSize}";
        });
        engine.Ras.Emit(new RasEvent(RasIds.LogTailWriteDropped, RasSeverity.Notice, RasType.InfoOnly,
            $"pool '{label}': {dropped.Count} chunk write(s) in the log tail were dropped at replay because their data did not reach the disk before the crash (never acknowledged; those chunks keep their previous contents): {string.Join(", ", named)}{(dropped.Count > 8 ? ", ..." : "")}",
            Pool: label));
    }

    /// <summary>
    /// Reads and checks the replicas of tail chunk-map records (every shard replays the
    /// same records, so each extent is read once). Only reads: read-only opens use it too.
    /// </summary>
    private sealed class TailVerifier(Shard[] shards, Unreadable unreadable, string label)
    {
        private readonly Dictionary<(Replica, bool), bool> _checked = new();

        /// <summary>
        /// Every replica verifies: its chunk against the CRC, or its block table against the CRC and each
        /// block against the table. Replicas on targets <paramref name="excluded"/> in the state being
        /// replayed are not checked (nobody reads them while the target is out; a reintegration verifies
        /// each before serving it again), nor are those on targets that cannot be read (see below).
        /// </summary>
        public async Task<bool> VerifyAsync(Replica[] replicas, uint image, long chunk, int chunkSize, bool blocks, int[] excluded)
        {
            foreach (var r in replicas)
                if (Array.IndexOf(excluded, r.Target) < 0 && !unreadable.Contains(r.Target) && !await VerifyAsync(r, image, chunk, chunkSize, blocks).ConfigureAwait(false))
                    return false;
            return true;
        }

        private async Task<bool> VerifyAsync(Replica r, uint image, long chunk, int chunkSize, bool blocks)
        {
            if (_checked.TryGetValue((r, blocks), out bool ok))
                return ok;
            int length = ChunkChecksum.ExtentLength(chunkSize, blocks);
            if (r.Target >= shards.Length || r.Offset < 0 || r.Offset % ExtentAllocator.Unit != 0 || r.Offset > shards[r.Target].Header.DataLength - length)
                return _checked[(r, blocks)] = false;
            var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(length);
            try
            {
                // A read error is not a verdict: the target counts as unreadable and its replicas
                // go unchecked. The open then fails (nothing is written) unless the replayed state
                // excludes the target, rather than dropping a write that may have been acknowledged.
                try
                {
                    await shards[r.Target].ReadDataAsync(r.Offset, buffer.AsMemory(0, length)).ConfigureAwait(false);
                }
                catch (DeviceException e)
                {
                    unreadable.Add(label, shards[r.Target].Target, $"its data cannot be read to verify the log tail: {e.Message}", e);
                    return true;
                }
                var verdict = blocks
                    ? ChunkChecksum.VerifyExtent(r, image, chunk, chunkSize, buffer.AsSpan(0, length))
                    : ChunkChecksum.Verify(r, chunkSize, 0, buffer.AsSpan(0, length));
                return _checked[(r, blocks)] = verdict.Ok;
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }
}
