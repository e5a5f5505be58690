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
/// </summary>
public sealed partial class Pool
{
    internal const string ReintegrateJob = "reintegrate";

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
            try
            {
                var shard = Shards[target];
                await CheckShardHeaderAsync(shard).ConfigureAwait(false);
                var (replicas, bad) = await VerifyReplicasAsync(shard).ConfigureAwait(false);
                long lostBefore = Degradation().LostChunks;
                // The rebuild copies the same chunks elsewhere; the reintegration's job finishes what it was doing.
                if (RunningJob == RebuildJob)
                    await StopRunningJobAsync().ConfigureAwait(false);
                long badBytes = 0;
                foreach (var b in bad)
                    badBytes += await DropReplicaAsync(b).ConfigureAwait(false);
                shard.Target.ResetFlusher();
                await Log.RejoinShardAsync(shard).ConfigureAwait(false);
                var rest = ExcludedTargets.Where(t => t != target).Select(t => t.ToString(CultureInfo.InvariantCulture));
                // The exclusion lifted and the job in one batch: a crash never leaves one without the other.
                await Log.CommitAsync([MetaRecords.PoolSetProp(ExcludedProp, string.Join(",", rest)),
                    MetaRecords.PoolSetProp(JobProp, ReintegrateJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]).ConfigureAwait(false);
                UnexcludeShard(target);
                var now = Degradation();
                long recovered = Math.Max(0, lostBefore - now.LostChunks);
                Ras.Emit(new RasEvent(RasIds.TargetReintegrated, RasSeverity.Notice, RasType.StateChange,
                    $"pool '{Label}': target {target} reintegrated; of {replicas} replica(s) on it {replicas - bad.Count} verified and are served again, " +
                    $"{bad.Count} ({badBytes} bytes) did not and are copied anew" + (recovered > 0 ? $"; {recovered} lost chunk(s) are readable again" : ""),
                    Pool: Label, Target: target, Device: shard.Device.Name));
                StartJob(ReintegrateJob, op, 0);
                return new PoolReintegration(Label, target, replicas, replicas - bad.Count, bad.Count, badBytes, recovered, Degradation(), true);
            }
            catch
            {
                op.Dispose();
                throw;
            }
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>Called once the batch lifting the exclusion is durable: reads and placement use the target again.</summary>
    private void UnexcludeShard(int target)
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
    private async Task<(long Replicas, List<BadReplica> Bad)> VerifyReplicasAsync(Shard shard)
    {
        int target = shard.Index;
        var found = new List<(ImageMeta Meta, long Chunk, ChunkMap Map, Replica Replica)>();
        lock (Meta.Sync)
            foreach (var img in Meta.Images.Values)
                foreach (var (chunk, map) in img.Chunks)
                    foreach (var r in map.Replicas)
                        if (r.Target == target)
                            found.Add((img, chunk, map, r));
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
