using Strata.Engine.Device;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// Targets that come after the engine was formatted (docs/operations.md, "Adding a target"). The
/// new target is written first (index n, count n + 1), then the caller records it (the daemon's
/// list of added targets), then every older target's superblock is rewritten with the new count.
/// A crash before the record leaves a device nobody opens (adding it again reuses it); a crash
/// after it leaves older superblocks with the old count, which the next open finishes.
/// </summary>
public sealed partial class StorageEngine
{
    /// <summary>
    /// Formats <paramref name="device"/> as target n of this engine and adds it. <paramref name="recordAsync"/>
    /// runs once the new target is durable and before the older targets count it: it must make the
    /// device part of what the next start opens. Refuses a device that is already a target of this
    /// engine or of another one, or too small to hold a shard of every pool.
    /// </summary>
    public async Task<Target> AddTargetAsync(IBlockDevice device, Func<Task>? recordAsync = null)
    {
        if (Options.ReadOnly)
            throw new PoolReadOnlyException("the engine is open read-only");
        Barrier.ThrowIfFrozen(null);
        ThrowIfTargetUnread("a target cannot be added");
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            var current = Targets;
            if (current.FirstOrDefault(t => ReferenceEquals(t.Device, device)) is { } same)
                throw new BusyException($"device '{device.Name}' already is target {same.Index} of this engine");
            if (current.Count >= ushort.MaxValue)
                throw new InvalidRequestException($"the engine already has {current.Count} targets");
            long needed = TargetSuperblock.ReservedBytes * 2;
            long largestShard;
            lock (_pools)
                largestShard = _pools.SelectMany(p => p.Extents).Select(e => e.Length).DefaultIfEmpty(0).Max();
            needed = Math.Max(needed, TargetSuperblock.ReservedBytes + largestShard);
            if (device.Geometry.Capacity < needed)
                throw new InvalidRequestException($"device '{device.Name}' has {device.Geometry.Capacity} bytes; a target of this engine needs at least {needed} (its superblock and the largest pool shard, {largestShard} bytes)");
            if (HeaderCopies.CopySize % device.Geometry.LogicalBlockSize != 0)
                throw new InvalidRequestException($"device '{device.Name}' has {device.Geometry.LogicalBlockSize}-byte blocks; targets need blocks dividing 4096");
            var existing = await HeaderCopies.ReadAsync<TargetSuperblock>(device, 0, TargetSuperblock.Decode, s => s.Generation).ConfigureAwait(false);
            var engineId = current[0].Superblock.EngineId;
            if (existing.Best is { } old)
            {
                // An add of this very device that a crash interrupted before it was recorded: reuse it.
                bool unfinishedAdd = old.EngineId == engineId && old.TargetIndex >= current.Count && old.Extents.Count == 0;
                if (!unfinishedAdd && old.EngineId == engineId)
                    throw new BusyException($"device '{device.Name}' already is target {old.TargetIndex} of this engine (with {old.Extents.Count} pool shard(s)); it is in use");
                if (!unfinishedAdd)
                    throw new BusyException($"device '{device.Name}' is target {old.TargetIndex} of another engine ({old.EngineId}) with {old.Extents.Count} pool shard(s); refusing to format it");
            }
            int index = current.Count;
            var sb = new TargetSuperblock
            {
                Generation = 1,
                EngineId = engineId,
                TargetId = Guid.NewGuid(),
                TargetIndex = index,
                TargetCount = index + 1,
                Capacity = device.Geometry.Capacity,
            };
            await HeaderCopies.WriteAsync(device, 0, 1, sb.Encode()).ConfigureAwait(false);
            sb.Generation = 2;
            await HeaderCopies.WriteAsync(device, 0, 2, sb.Encode()).ConfigureAwait(false);
            if (recordAsync != null)
                await recordAsync().ConfigureAwait(false);
            var target = new Target(device, sb);
            foreach (var t in current)
                await t.UpdateTargetCountAsync(index + 1).ConfigureAwait(false);
            Volatile.Write(ref _targets, [.. current, target]);
            Ras.Emit(new RasEvent(RasIds.TargetAdded, RasSeverity.Notice, RasType.StateChange,
                $"target {index} ('{device.Name}', {device.Geometry.Capacity} bytes) added to the engine; 'strata pool extend POOL' grows a pool onto it",
                Target: index, Device: device.Name));
            return target;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>At open: older targets still counting fewer targets (an add-target interrupted after it was recorded) get the full count.</summary>
    private async Task FinishTargetCountAsync()
    {
        foreach (var t in Targets)
            if (t.Superblock.TargetCount != Targets.Count && t.UnreadReason == null)
                await t.UpdateTargetCountAsync(Targets.Count).ConfigureAwait(false);
    }

    /// <summary>Refuses what would write every target's superblock while one could not be read at start.</summary>
    private void ThrowIfTargetUnread(string what)
    {
        if (Targets.FirstOrDefault(t => t.UnreadReason != null) is { } t)
            throw new InvalidRequestException($"{what} while target {t.Index} ('{t.Device.Name}') cannot be read ({t.UnreadReason}); " +
                $"'strata storage reintegrate-target {t.Index}' once it answers again");
    }

    /// <summary>
    /// Reserves, on target <paramref name="index"/>, an extent for a shard of <paramref name="pool"/>
    /// of <paramref name="length"/> bytes. Nothing is written: the extent becomes the pool's when
    /// <see cref="CommitShardAsync"/> records it in the target's superblock. Holds the engine's lock
    /// until then (or <see cref="CancelShard"/>), so no other pool takes the same bytes.
    /// </summary>
    internal async Task<(Target Target, ShardExtent Extent)> ReserveShardAsync(Guid pool, string label, int index, long length)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            var t = Targets[index];
            if (t.UnreadReason != null)
                throw new InvalidRequestException($"target {index} ('{t.Device.Name}') cannot be read ({t.UnreadReason}); pool '{label}' cannot grow onto it");
            if (t.Superblock.Extents.Count >= TargetSuperblock.MaxExtents)
                throw new NoSpaceException($"no space left for pool '{label}' on target {index}: it already holds {TargetSuperblock.MaxExtents} shards");
            long at = t.Superblock.FindFreeExtent(length, t.Device.Geometry.Capacity);
            if (at < 0)
                throw new NoSpaceException($"no space left for pool '{label}' on target {index} ('{t.Device.Name}'): it has no free {length}-byte extent for the pool's shard");
            return (t, new ShardExtent(pool, at, length));
        }
        catch
        {
            _lock.Release();
            throw;
        }
    }

    /// <summary>Records a reserved shard in its target's superblock (durable on return) and releases the engine's lock.</summary>
    internal async Task CommitShardAsync(Target target, ShardExtent extent)
    {
        try
        {
            await target.UpdateExtentsAsync([.. target.Superblock.Extents, extent]).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Gives up a reservation (nothing was recorded).</summary>
    internal void CancelShard() => _lock.Release();

    /// <summary>
    /// `storage exclude-target N`: every open pool with a shard on target <paramref name="index"/> stops
    /// using it and rebuilds the replicas it held onto the other targets. Refused, before any pool
    /// changes, when a chunk of some pool would be left with no copy (unless <paramref name="force"/>:
    /// a target that failed). Returns what each pool was left with.
    /// </summary>
    public async Task<IReadOnlyList<PoolExclusion>> ExcludeTargetAsync(int index, bool force = false)
    {
        if (Options.ReadOnly)
            throw new PoolReadOnlyException("the engine is open read-only");
        if (index < 0 || index >= Targets.Count)
            throw new NotFoundException($"target {index} does not exist; the engine has targets 0..{Targets.Count - 1}");
        var pools = OpenPools().Where(p => p.Shards.Length > index).ToList();
        if (pools.Count > 0 && pools.All(p => p.IsExcluded(index)))
            throw new InvalidRequestException($"target {index} is already excluded; 'strata pool query POOL' shows the rebuild");
        if (!force)
        {
            foreach (var p in pools.Where(p => !p.IsExcluded(index)))
            {
                var d = p.Degradation(index);
                if (d.LostChunks > 0)
                    throw new InvalidRequestException($"excluding target {index} would leave {d.LostChunks} chunk(s) ({d.LostBytes} bytes) of pool '{p.Label}' with no copy " +
                        $"(images: {string.Join(", ", d.LostImages)}); the last replica of a chunk is not excluded");
                if (p.Shards.Length - p.ExcludedTargets.Count <= 1)
                    throw new InvalidRequestException($"target {index} is the last target of pool '{p.Label}' that is not excluded");
            }
        }
        var done = new List<PoolExclusion>();
        foreach (var p in pools)
            if (await p.ExcludeTargetAsync(index, force).ConfigureAwait(false) is { } r)
                done.Add(r);
        return done;
    }

    /// <summary>
    /// `storage reintegrate-target N`: checks that target <paramref name="index"/> still is this
    /// engine's target N (its superblock), then every open pool it is excluded from verifies the
    /// replicas still mapped there, keeps the valid ones, and moves chunks back onto it as a job
    /// (Pool.ReintegrateTargetAsync). Refused, with nothing changed, for an unknown target, a target
    /// not excluded, a blank or foreign device, a device that still fails, or a pool running another job.
    /// </summary>
    public async Task<IReadOnlyList<PoolReintegration>> ReintegrateTargetAsync(int index)
    {
        if (Options.ReadOnly)
            throw new PoolReadOnlyException("the engine is open read-only");
        if (index < 0 || index >= Targets.Count)
            throw new NotFoundException($"target {index} does not exist; the engine has targets 0..{Targets.Count - 1}");
        var pools = OpenPools().Where(p => p.Shards.Length > index && p.IsExcluded(index)).ToList();
        if (pools.Count == 0)
            throw new InvalidRequestException($"target {index} is not excluded from any open pool; nothing to reintegrate");
        var t = Targets[index];
        HeaderCopies.ReadResult<TargetSuperblock> sb;
        try
        {
            sb = await HeaderCopies.ReadAsync<TargetSuperblock>(t.Device, 0, TargetSuperblock.Decode, s => s.Generation).ConfigureAwait(false);
        }
        catch (Interop.DeviceException e)
        {
            throw new InvalidRequestException($"target {index} ('{t.Device.Name}') cannot be read: {e.Message}; it stays excluded");
        }
        if (sb.Best == null)
            throw new InvalidRequestException($"target {index} ('{t.Device.Name}') has no valid superblock (copy A: {sb.Problems[0]}; copy B: {sb.Problems[1]}): " +
                "it was replaced by a blank device or overwritten; its data cannot be brought back and it stays excluded");
        // A target unread at start has no known id: its own index in this engine is what can be checked.
        bool unread = t.UnreadReason != null;
        if (sb.Best.EngineId != t.Superblock.EngineId || (unread ? sb.Best.TargetIndex != index : sb.Best.TargetId != t.Id))
            throw new InvalidRequestException($"target {index} ('{t.Device.Name}') now holds target {sb.Best.TargetIndex} {sb.Best.TargetId} of engine {sb.Best.EngineId}, " +
                $"not this engine's target {index}{(unread ? "" : $" {t.Id}")}: it was replaced; its data cannot be brought back and it stays excluded");
        if (unread)
            t.AdoptSuperblock(sb.Best);
        // Errors from before count no more: a device failing again is excluded again after as many.
        _deviceErrors.TryRemove(index, out _);
        _autoExcluding.TryRemove(index, out _);
        // Each pool brings the target back in its own log (the lift and the job are one batch there),
        // so pools are independent: one that refuses does not stop the others, and the reply names
        // both. Running the command again picks up only the pools that still exclude the target.
        var done = new List<PoolReintegration>();
        var refused = new List<(Pool Pool, StoreException Error)>();
        foreach (var p in pools)
        {
            try
            {
                done.Add(await p.ReintegrateTargetAsync(index).ConfigureAwait(false));
            }
            catch (StoreException e) when (e is PoolBusyException or BusyException or PoolReadOnlyException or InvalidRequestException)
            {
                refused.Add((p, e));
            }
        }
        if (refused.Count == 0)
            return done;
        if (done.Count == 0 && refused.Count == 1)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(refused[0].Error);
        string back = done.Count == 0 ? "no pool took it back"
            : $"it rejoined pool{(done.Count > 1 ? "s" : "")} {string.Join(", ", done.Select(d => $"'{d.Pool}'"))}";
        string why = string.Join("; ", refused.Select(r => $"pool '{r.Pool.Label}' refused: {r.Error.Message}"));
        throw new BusyException($"target {index}: {back}; {why}; run 'strata storage reintegrate-target {index}' again once that is resolved (pools it rejoined are skipped)");
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<int, int> _deviceErrors = new();

    /// <summary>
    /// A data read or write on a target failed (the device, not the bytes). Past
    /// <see cref="StorageEngineOptions.ExcludeAfterErrors"/> the target is excluded, once, in the
    /// background: its pools serve from the other replicas and rebuild.
    /// </summary>
    internal void OnDeviceError(int? target, string? device)
    {
        int limit = Options.ExcludeAfterErrors;
        if (limit <= 0 || Options.ReadOnly)
            return;
        int t = target ?? Targets.FirstOrDefault(x => x.Device.Name == device)?.Index ?? -1;
        if (t < 0)
            return;
        if (_deviceErrors.AddOrUpdate(t, 1, (_, n) => n + 1) != limit)
            return;
        AutoExclude(t, $"after {limit} device errors");
    }

    /// <summary>
    /// A pool dropped target <paramref name="target"/> after its device failed a write (PoolLog.TryDropShard)
    /// and made that exclusion durable: the target is excluded from every pool, once, in the background,
    /// and the pools rebuild. A target that keeps failing writes must not keep taking new replicas elsewhere.
    /// </summary>
    internal void OnTargetWriteFailed(Pool dropped, int target)
    {
        if (Options.ReadOnly || target < 0 || target >= Targets.Count)
            return;
        AutoExclude(target, "after a failed write", dropped);
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<int, bool> _autoExcluding = new();

    /// <summary>
    /// Excludes target <paramref name="t"/> from every open pool, once until it is reintegrated, in the
    /// background: forced (it failed) after device errors; after a failed write only from the pool that
    /// dropped it (<paramref name="dropped"/>, where nothing had its only copy there) and from the pools
    /// where that loses nothing (the others keep it until their own writes fail there).
    /// </summary>
    private void AutoExclude(int t, string why, Pool? dropped = null)
    {
        if (!_autoExcluding.TryAdd(t, true))
            return;
        _ = Task.Run(async () =>
        {
            try
            {
                var done = new List<PoolExclusion>();
                foreach (var p in OpenPools().Where(p => p.Shards.Length > t))
                {
                    try
                    {
                        if (await p.ExcludeTargetAsync(t, force: dropped == null || p == dropped).ConfigureAwait(false) is { } r)
                            done.Add(r);
                    }
                    catch (InvalidRequestException) when (dropped != null && p != dropped)
                    {
                        // A chunk of that pool has its only copy on the target: it stays (its reads may still work).
                    }
                }
                Ras.Emit(new RasEvent(RasIds.TargetAutoExcluded, RasSeverity.Error, RasType.StateChange,
                    $"target {t} ('{Targets[t].Device.Name}') excluded {why}; {done.Count(d => d.RebuildStarted)} pool(s) rebuild onto the other targets",
                    Target: t, Device: Targets[t].Device.Name));
            }
            catch (Exception e) when (e is StoreException or ObjectDisposedException)
            {
                _autoExcluding.TryRemove(t, out _);
                Ras.Emit(new RasEvent(RasIds.TargetAutoExcluded, RasSeverity.Error, RasType.InfoOnly,
                    $"target {t} failed ({why}) but was not excluded: {e.Message}", Target: t, Device: Targets[t].Device.Name));
            }
        });
    }
}
