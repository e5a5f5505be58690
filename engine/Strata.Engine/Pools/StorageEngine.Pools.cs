using Strata.Engine.Store;

namespace Strata.Engine.Pools;

public sealed partial class StorageEngine
{
    private async Task LoadPoolsAsync()
    {
        var ids = Targets.SelectMany(t => t.Superblock.Extents.Select(e => e.Pool)).Distinct().ToList();
        foreach (var id in ids)
        {
            // A pool is on targets 0..n-1: created on every target there was, then extended one target
            // at a time. Holders that are not such a prefix, or fewer than its header counts, are a
            // creation or destruction that a crash interrupted.
            // A target whose superblock could not be read may hold any pool: it counts as a holder
            // within the run, and at its end only if the pool's header counts it (below).
            int holders = 0;
            while (holders < Targets.Count && (Targets[holders].UnreadReason != null || Targets[holders].Superblock.Extents.Any(x => x.Pool == id)))
                holders++;
            bool complete = holders > 0 && Targets.Skip(holders).All(t => t.Superblock.Extents.All(x => x.Pool != id));
            var extents = new ShardExtent[holders];
            for (int i = 0; i < holders && complete; i++)
            {
                var t = Targets[i];
                if (t.UnreadReason != null)
                {
                    // Where the shard lies is unknown (-1): nothing reads it (PoolOpener), a reintegration learns it.
                    extents[i] = new ShardExtent(id, -1, 0);
                    continue;
                }
                var e = t.Superblock.Extents.First(x => x.Pool == id);
                if (e.Offset < TargetSuperblock.ReservedBytes || e.Offset + e.Length > t.Device.Geometry.Capacity)
                    throw new CorruptMetadataException($"device '{t.Device.Name}' is truncated or damaged: pool {id}'s shard at {e.Offset}+{e.Length} lies outside its {t.Device.Geometry.Capacity} bytes");
                extents[i] = e;
            }
            if (!complete)
            {
                await RollBackIncompleteAsync(id).ConfigureAwait(false);
                continue;
            }
            var entry = new PoolEntry { Id = id, Extents = extents, Label = id.ToString() };
            // Label and layout come from the first target with a valid header copy; the full
            // validation (every shard, every feature word) happens when the pool is opened.
            for (int i = 0; i < holders && entry.Header == null; i++)
            {
                if (Targets[i].UnreadReason != null)
                    continue;
                HeaderCopies.ReadResult<ShardHeader> r;
                try
                {
                    r = await HeaderCopies.ReadAsync<ShardHeader>(Targets[i].Device, extents[i].Offset, ShardHeader.Decode, h => h.Generation).ConfigureAwait(false);
                }
                catch (Interop.DeviceException)
                {
                    continue; // a failed device (maybe an excluded target): the pool's open decides (PoolOpener)
                }
                if (r.Best != null && r.Best.PoolId == id)
                {
                    entry.Header = r.Best;
                    entry.Label = r.Best.Label;
                }
            }
            if (entry.Header != null && holders > 0 && Targets[holders - 1].UnreadReason != null && entry.Header.TargetCount < holders)
                entry.Extents = extents = extents[..^1]; // the pool was never extended onto the unread target
            if (entry.Header != null && entry.Header.TargetCount > holders)
            {
                await RollBackIncompleteAsync(id).ConfigureAwait(false);
                continue;
            }
            if (entry.Header == null)
                entry.Problem = "damaged: no valid shard header on any target";
            // `pool list` tells an older release's operator why before anything tries the open (which refuses it with the RAS event).
            else if (entry.Header.LayoutVersion > Catalog.MaxSupported)
                entry.Problem = "incompatible layout";
            _pools.Add(entry);
        }
    }

    /// <summary>A pool on some targets only: a crash interrupted its creation or destruction; finish removing it.</summary>
    private async Task RollBackIncompleteAsync(Guid id)
    {
        // With a target unread, what it holds of the pool is unknown: nothing is removed, the pool is not listed.
        if (Options.ReadOnly || Targets.Any(t => t.UnreadReason != null))
            return;
        foreach (var t in Targets.Where(t => t.Superblock.Extents.Any(e => e.Pool == id)))
            await t.UpdateExtentsAsync(t.Superblock.Extents.Where(e => e.Pool != id).ToList()).ConfigureAwait(false);
        Ras.Emit(new RasEvent(RasIds.PoolCreateRolledBack, RasSeverity.Notice, RasType.StateChange,
            $"pool {id} was on some targets only (creation or destruction interrupted); removed it"));
    }

    /// <summary>Creates a pool at the newest layout version this engine supports (or options.LayoutVersion) and opens it.</summary>
    public async Task<Pool> CreatePoolAsync(string label, long size, int rf = 1, PoolCreateOptions? options = null)
    {
        options ??= PoolCreateOptions.Default;
        Barrier.ThrowIfFrozen(null);
        Labels.Validate("pool", label);
        if (rf is not (1 or 2))
            throw new InvalidRequestException($"rf {rf} is not supported; use 1 or 2");
        if (rf > Targets.Count)
            throw new InvalidRequestException($"rf {rf} needs at least {rf} targets; the engine has {Targets.Count}");
        SizeLimits.CheckPoolSize(size);
        if (Options.ReadOnly)
            throw new PoolReadOnlyException("the engine is open read-only");
        ThrowIfTargetUnread("a pool cannot be created");
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (_pools)
                if (_pools.Any(p => p.Label == label))
                    throw new DuplicateLabelException($"a pool labelled '{label}' already exists");
            var id = Guid.NewGuid();
            int blockSize = Targets.Max(t => t.Device.Geometry.LogicalBlockSize);
            var plan = PoolLayoutPlan.Plan(label, id, size, Targets.Count, blockSize, options, Catalog);
            var extents = new ShardExtent[Targets.Count];
            for (int i = 0; i < Targets.Count; i++)
            {
                var t = Targets[i];
                if (t.Superblock.Extents.Count >= TargetSuperblock.MaxExtents)
                    throw new NoSpaceException($"no space left for pool '{label}': target {i} already holds {TargetSuperblock.MaxExtents} shards");
                long at = t.Superblock.FindFreeExtent(plan.ShardLength, t.Device.Geometry.Capacity);
                if (at < 0)
                    throw new NoSpaceException($"no space left for pool '{label}': target {i} ('{t.Device.Name}') has no free {plan.ShardLength}-byte extent");
                extents[i] = new ShardExtent(id, at, plan.ShardLength);
            }
            var state = new PoolState();
            state.Props["label"] = label;
            state.Props["rf"] = rf.ToString(System.Globalization.CultureInfo.InvariantCulture);
            var payload = PoolStateCodec.Serialize(state);
            // Shards first, then superblocks: a crash in between leaves unreferenced bytes
            // or a pool on some targets only, which the next open rolls back.
            for (int i = 0; i < Targets.Count; i++)
            {
                var t = Targets[i];
                var h = plan with { TargetId = t.Id, TargetIndex = i };
                var ckpt = Checkpoint.Encode(id, 0, 0, payload, blockSize);
                await DeviceIo.WriteAsync(t.Device, extents[i].Offset + h.Checkpoint0Offset, ckpt).ConfigureAwait(false);
                await t.Device.FlushAsync().ConfigureAwait(false);
                await HeaderCopies.WriteAsync(t.Device, extents[i].Offset, 1, h.Encode()).ConfigureAwait(false);
                await HeaderCopies.WriteAsync(t.Device, extents[i].Offset, 2, (h with { Generation = 2 }).Encode()).ConfigureAwait(false);
            }
            for (int i = 0; i < Targets.Count; i++)
                await Targets[i].UpdateExtentsAsync([.. Targets[i].Superblock.Extents, extents[i]]).ConfigureAwait(false);
            var entry = new PoolEntry { Id = id, Extents = extents, Label = label, Header = plan with { Generation = 2 } };
            lock (_pools)
                _pools.Add(entry);
            return await OpenEntryAsync(entry).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Opens a pool by label (validating every shard read-only first).</summary>
    public async Task<Pool> OpenPoolAsync(string label)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            var entry = FindEntry(label);
            if (entry.Open != null)
                return entry.Open;
            return await OpenEntryAsync(entry).ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    private async Task<Pool> OpenEntryAsync(PoolEntry entry)
    {
        try
        {
            var pool = await PoolOpener.OpenAsync(this, entry).ConfigureAwait(false);
            entry.Open = pool;
            entry.Problem = null;
            pool.ResumeUpgradeIfNeeded();
            pool.ResumeJobIfNeeded();
            return pool;
        }
        catch (IncompatibleLayoutException)
        {
            entry.Problem = "incompatible layout";
            throw;
        }
        catch (CorruptMetadataException)
        {
            entry.Problem = "damaged";
            throw;
        }
    }

    internal void OnPoolClosed(PoolEntry entry) => entry.Open = null;

    /// <summary>Destroys a pool: its extents are released on every target and trimmed.</summary>
    public async Task DestroyPoolAsync(string label, bool force = false)
    {
        if (Options.ReadOnly)
            throw new PoolReadOnlyException("the engine is open read-only");
        Barrier.ThrowIfFrozen(label);
        ThrowIfPoolMigrating(label);
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            var entry = FindEntry(label);
            if (entry.Open != null)
            {
                if (!force)
                    throw new BusyException($"pool '{label}' is open; close it first or destroy with force");
                await entry.Open.DisposeAsync().ConfigureAwait(false);
            }
            // An unread target keeps the extent in its superblock: once readable, the pool found there
            // alone is an interrupted destruction, which that open finishes (RollBackIncompleteAsync).
            foreach (var t in Targets.Where(t => t.UnreadReason == null))
                await t.UpdateExtentsAsync(t.Superblock.Extents.Where(e => e.Pool != entry.Id).ToList()).ConfigureAwait(false);
            lock (_pools)
                _pools.Remove(entry);
            for (int i = 0; i < Math.Min(Targets.Count, entry.Extents.Length); i++)
            {
                if (Targets[i].UnreadReason != null)
                    continue;
                try
                {
                    await Targets[i].Device.TrimAsync(entry.Extents[i].Offset, entry.Extents[i].Length).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException)
                {
                    // Trim only returns space early; the extent is free either way.
                }
            }
        }
        finally
        {
            _lock.Release();
        }
    }
}
