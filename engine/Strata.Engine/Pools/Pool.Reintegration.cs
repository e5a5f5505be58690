using System.Globalization;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Engine.Pools;

/// <summary>
/// What `storage reintegrate-target` found on the target for one pool and did: of the
/// <paramref name="Replicas"/> chunk replicas the pool's maps still place there, <paramref name="Valid"/>
/// verified (kept and served again) and <paramref name="Invalid"/> did not (<paramref name="InvalidBytes"/>
/// bytes; dropped where the chunk has another copy, the job copies a new one);
/// <paramref name="Recovered"/> chunks that had no copy left are readable again. The job moves the
/// rest (chunks the rebuild moved away, chunks short of rf) back where placement puts them.
/// </summary>
public sealed record PoolReintegration(string Pool, int Target, long Replicas, long Valid, long Invalid, long InvalidBytes,
    long Recovered, PoolDegradation Degradation, bool JobStarted);

/// <summary>
/// The running or last reintegration of the pool since it opened, as `pool query` shows it: target
/// <paramref name="Target"/> (null for a job resumed at the open), State checking (the replicas on the
/// target are read and verified: <paramref name="ReplicasChecked"/> of <paramref name="ReplicasTotal"/>,
/// <paramref name="BytesChecked"/> of <paramref name="BytesTotal"/>), rejoining (the shard rejoins the
/// log, the exclusion is lifted), moving (the job runs; `Job` shows its progress), completed, failed
/// (<paramref name="Reason"/>: a refusal of the check, or a target that failed a write) or stopped
/// (the pool closed; the job resumes at the next open).
/// </summary>
public sealed record PoolReintegrationStatus(int? Target, string State, long ReplicasChecked, long ReplicasTotal, long BytesChecked, long BytesTotal, string? Reason);

/// <summary>
/// Bringing an excluded target back (docs/operations.md, "Bringing a target back"). The target is
/// checked first, changing nothing: its pool shard header must be this pool's, and every replica the
/// maps still place on it is read (after a flush of the device, so what verifies is durable) and
/// verified against its CRC. A replica on an excluded target is never written while it is out (writes
/// are copy-on-write onto the other targets, and the map then no longer names it), so a replica the
/// map still names whose CRC matches holds that chunk's current data. Then, in order, each durable
/// before the next: bad replicas are dropped from their maps (where the chunk has another copy); the
/// shard rejoins the log (a checkpoint on it); the exclusion is lifted together with the job
/// <c>reintegrate</c> in one batch; only then do reads and placement use the target again. A crash
/// before that batch leaves the target excluded (ask again); after it the job resumes at the open.
/// A target whose device fails a write while it rejoins leaves the log again and stays excluded
/// (PoolLog.TryDropShard, CommitLiftAsync, TryLiftExclusion): the reintegration is refused; once the
/// job runs, it is dropped like any target and the job fails (OnShardDropping).
/// </summary>
public sealed partial class Pool
{
    internal const string ReintegrateJob = "reintegrate";

    private volatile ReintegrationRun? _reintegration;

    /// <summary>The running or last reintegration since the pool opened, or null.</summary>
    public PoolReintegrationStatus? ReintegrationStatus => _reintegration?.Snapshot();

    /// <summary>What a reintegration is doing; its counters move while the check reads the target.</summary>
    private sealed class ReintegrationRun(int? target, string state)
    {
        private readonly object _sync = new();
        private string _state = state;
        private string? _reason, _failing;
        private int _failingTarget = -1;
        public int? Target { get; } = target;
        public long ReplicasChecked, ReplicasTotal, BytesChecked, BytesTotal;

        /// <summary>Checking, rejoining or moving: a target failing a write now ends it.</summary>
        public bool Active
        {
            get
            {
                lock (_sync)
                    return IsActive;
            }
        }

        private bool IsActive => _state is "checking" or "rejoining" or "moving";

        /// <summary>Why it fails (the first target that failed a write while it was active), or null.</summary>
        public (int Target, string Reason)? FailingBecause
        {
            get
            {
                lock (_sync)
                    return _failing != null ? (_failingTarget, _failing) : null;
            }
        }

        public void Failing(int target, string reason)
        {
            lock (_sync)
            {
                if (_failing != null || !IsActive)
                    return;
                _failing = reason;
                _failingTarget = target;
            }
        }

        public void Set(string state, string? reason = null)
        {
            lock (_sync)
            {
                _state = state;
                _reason = reason;
            }
        }

        public PoolReintegrationStatus Snapshot()
        {
            lock (_sync)
                return new PoolReintegrationStatus(Target, _state, Interlocked.Read(ref ReplicasChecked), Interlocked.Read(ref ReplicasTotal),
                    Interlocked.Read(ref BytesChecked), Interlocked.Read(ref BytesTotal), _reason);
        }
    }

    internal async Task<PoolReintegration> ReintegrateTargetAsync(int target)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            if (target >= Shards.Length || !IsExcluded(target))
                throw new InvalidRequestException($"target {target} is not excluded from pool '{Label}'; nothing to reintegrate");
            if (RunningJob is { } running && running != RebuildJob)
                ThrowIfJobRunning();
            // Refused (naming the upgrade) before anything changes.
            var op = BeginOperation("reintegration");
            var run = new ReintegrationRun(target, "checking");
            _reintegration = run;
            try
            {
                var shard = Shards[target];
                await CheckShardHeaderAsync(shard).ConfigureAwait(false);
                var (replicas, bad) = await VerifyReplicasAsync(shard, run).ConfigureAwait(false);
                long lostBefore = Degradation().LostChunks;
                // The rebuild copies the same chunks elsewhere; the reintegration's job finishes what it was doing.
                if (RunningJob == RebuildJob)
                    await StopRunningJobAsync().ConfigureAwait(false);
                long badBytes = 0;
                foreach (var b in bad)
                    badBytes += await DropReplicaAsync(b).ConfigureAwait(false);
                run.Set("rejoining");
                shard.Target.ResetFlusher();
                await Log.RejoinShardAsync(shard).ConfigureAwait(false);
                var rest = ExcludedTargets.Where(t => t != target).Select(t => t.ToString(CultureInfo.InvariantCulture));
                // The exclusion lifted and the job in one batch: a crash never leaves one without the other.
                // Not written if the target left the log again (its device failed a write while rejoining);
                // written before it left, the drop's checkpoint records the target excluded again.
                bool lifted;
                try
                {
                    await Log.CommitLiftAsync(target, [MetaRecords.PoolSetProp(ExcludedProp, string.Join(",", rest)),
                        MetaRecords.PoolSetProp(JobProp, ReintegrateJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]).ConfigureAwait(false);
                    lifted = Log.TryLiftExclusion(target);
                }
                catch (RejoinFailedException)
                {
                    lifted = false;
                }
                if (!lifted)
                    throw RejoinFailed(run, shard);
                run.Set("moving");
                var now = Degradation();
                long recovered = Math.Max(0, lostBefore - now.LostChunks);
                Ras.Emit(new RasEvent(RasIds.TargetReintegrated, RasSeverity.Notice, RasType.StateChange,
                    $"pool '{Label}': target {target} reintegrated; of {replicas} replica(s) on it {replicas - bad.Count} verified and are served again, " +
                    $"{bad.Count} ({badBytes} bytes) did not and are copied anew" + (recovered > 0 ? $"; {recovered} lost chunk(s) are readable again" : ""),
                    Pool: Label, Target: target, Device: shard.Device.Name));
                StartJob(ReintegrateJob, op, 0);
                return new PoolReintegration(Label, target, replicas, replicas - bad.Count, bad.Count, badBytes, recovered, Degradation(), true);
            }
            catch (Exception e)
            {
                op.Dispose();
                run.Set("failed", e.Message);
                throw;
            }
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>
    /// The target left the log again while it rejoined (PoolLog.TryDropShard): it stays excluded, and
    /// the drop's checkpoint records it so before anything else is acknowledged.
    /// </summary>
    private InvalidRequestException RejoinFailed(ReintegrationRun run, Shard shard)
    {
        string why = run.FailingBecause is { } f && f.Target == shard.Index ? f.Reason : $"target {shard.Index}'s device failed a write";
        string message = $"target {shard.Index} ('{shard.Device.Name}') could not rejoin pool '{Label}': {why}; it stays excluded; " +
            $"'strata storage reintegrate-target {shard.Index}' tries again once the device is sound";
        Ras.Emit(new RasEvent(RasIds.PoolReintegrateFailed, RasSeverity.Error, RasType.StateChange,
            $"pool '{Label}' reintegration of target {shard.Index} failed: {why}; it stays excluded", Pool: Label, Target: shard.Index, Device: shard.Device.Name));
        return new InvalidRequestException(message);
    }

    /// <summary>Called once the batch lifting the exclusion is durable (PoolLog.TryLiftExclusion): reads and placement use the target again.</summary>
    internal void UnexcludeShard(int target)
    {
        lock (_shardSet)
            Volatile.Write(ref _excluded, [.. Volatile.Read(ref _excluded).Where(t => t != target)]);
    }

    /// <summary>The target's shard header must still be this pool's (a blank or reused device is refused).</summary>
    private async Task CheckShardHeaderAsync(Shard shard)
    {
        if (shard.Base < 0)
        {
            // The target's superblock could not be read at start; the engine has read it since.
            if (shard.Target.Superblock.Extents.FirstOrDefault(e => e.Pool == Id) is not { Length: > 0 } extent)
                throw new InvalidRequestException($"target {shard.Index} ('{shard.Device.Name}') holds no shard of pool '{Label}': it was replaced or overwritten; " +
                    "its data cannot be brought back (the target stays excluded)");
            shard.Base = extent.Offset;
            _entry.Extents[shard.Index] = extent;
        }
        HeaderCopies.ReadResult<ShardHeader> r;
        try
        {
            r = await HeaderCopies.ReadAsync<ShardHeader>(shard.Device, shard.Base, (ReadOnlySpan<byte> s, out string? problem) =>
            {
                var h = ShardHeader.Decode(s, out problem);
                if (h != null && h.PoolId != Id)
                {
                    problem = $"belongs to pool {h.PoolId}";
                    return null;
                }
                return h;
            }, h => h.Generation).ConfigureAwait(false);
        }
        catch (DeviceException e)
        {
            throw Unreadable(shard, e);
        }
        if (r.Best == null)
            throw new InvalidRequestException($"target {shard.Index} ('{shard.Device.Name}') no longer holds pool '{Label}': its shard header is invalid (copy A: {r.Problems[0]}; copy B: {r.Problems[1]}); " +
                "the device was replaced or overwritten, its data cannot be brought back (the target stays excluded)");
        if (shard.HeaderUnread)
        {
            // The open could not read this header and used another shard's: the rejoin's checkpoint
            // and header writes need the real generation and slot. Its regions must be the pool's.
            var h = shard.Header;
            var b = r.Best;
            if (b.TargetIndex != shard.Index || b.ShardLength != h.ShardLength || b.WalOffset != h.WalOffset || b.WalLength != h.WalLength
                || b.Checkpoint0Offset != h.Checkpoint0Offset || b.Checkpoint1Offset != h.Checkpoint1Offset || b.CheckpointLength != h.CheckpointLength
                || b.DataOffset != h.DataOffset || b.DataLength != h.DataLength || b.CheckRegions(shard.Device.Geometry.LogicalBlockSize) != null)
                throw new InvalidRequestException($"target {shard.Index} ('{shard.Device.Name}') holds a shard header of pool '{Label}' whose regions do not match the pool's " +
                    $"(target {b.TargetIndex}, {b.ShardLength} bytes); the target stays excluded");
            shard.Header = b;
            shard.HeaderUnread = false;
        }
    }

    private InvalidRequestException Unreadable(Shard shard, Exception e) =>
        new($"target {shard.Index} ('{shard.Device.Name}') cannot be used: {e.Message}; it stays excluded from pool '{Label}'");

    private readonly record struct BadReplica(uint Image, long Chunk, Replica Replica);

    /// <summary>
    /// Flushes the target, then reads and verifies every replica the maps place on it; returns how
    /// many there are and the ones that do not verify. Reads only: a device error refuses.
    /// </summary>
    private async Task<(long Replicas, List<BadReplica> Bad)> VerifyReplicasAsync(Shard shard, ReintegrationRun run)
    {
        int target = shard.Index;
        var found = new List<(ImageMeta Meta, long Chunk, ChunkMap Map, Replica Replica)>();
        lock (Meta.Sync)
            foreach (var img in Meta.Images.Values)
                foreach (var (chunk, map) in img.Chunks)
                    foreach (var r in map.Replicas)
                        if (r.Target == target)
                            found.Add((img, chunk, map, r));
        Interlocked.Exchange(ref run.ReplicasTotal, found.Count);
        Interlocked.Exchange(ref run.BytesTotal, found.Sum(f => (long)f.Map.ExtentLength(f.Meta.ChunkSize)));
        var bad = new List<BadReplica>();
        try
        {
            // What the device kept in a volatile cache while it was out is durable before it counts as valid.
            await shard.Device.FlushAsync().ConfigureAwait(false);
            byte[] buffer = [];
            foreach (var (meta, chunk, map, r) in found)
            {
                int length = map.ExtentLength(meta.ChunkSize);
                if (buffer.Length < length)
                    buffer = new byte[length];
                await shard.ReadDataAsync(r.Offset, buffer.AsMemory(0, length)).ConfigureAwait(false);
                var verdict = map.Blocks
                    ? ChunkChecksum.VerifyExtent(r, meta.Id, chunk, meta.ChunkSize, buffer.AsSpan(0, length))
                    : ChunkChecksum.Verify(r, meta.ChunkSize, 0, buffer.AsSpan(0, length));
                if (!verdict.Ok)
                    bad.Add(new BadReplica(meta.Id, chunk, r));
                Interlocked.Increment(ref run.ReplicasChecked);
                Interlocked.Add(ref run.BytesChecked, length);
            }
        }
        catch (DeviceException e)
        {
            throw Unreadable(shard, e);
        }
        return (found.Count, bad);
    }

    /// <summary>
    /// Takes a replica that did not verify out of its chunk's map (one durable commit, its extent
    /// freed after it) when the chunk has another copy; returns the bytes dropped. A chunk with no
    /// other copy keeps it: its reads fail the CRC (EIO), as they did while the target was out.
    /// </summary>
    private async Task<long> DropReplicaAsync(BadReplica bad)
    {
        ChunkHold hold;
        try
        {
            hold = await Mover.LockAsync(bad.Image, bad.Chunk).ConfigureAwait(false);
        }
        catch (NotFoundException)
        {
            return 0; // the image was removed
        }
        using (hold)
        {
            var location = hold.Location;
            if (location == null || location.Moving != null || Array.IndexOf(location.Replicas, bad.Replica) < 0 || location.Replicas.Length < 2)
                return 0;
            var keep = Array.FindAll(location.Replicas, r => r != bad.Replica);
            int extent = location.ExtentLength(hold.ChunkSize);
            var result = await hold.SwitchAsync(location, keep, MetaRecords.ChunkMap(bad.Image, bad.Chunk, keep, location.Blocks), extent).ConfigureAwait(false);
            return result == ChunkSwitch.Switched ? extent : 0;
        }
    }
}
