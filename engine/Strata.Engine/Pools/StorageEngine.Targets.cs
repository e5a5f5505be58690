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
            if (t.Superblock.TargetCount != Targets.Count)
                await t.UpdateTargetCountAsync(Targets.Count).ConfigureAwait(false);
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
}
