using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// What `pool extend` will do (or, with --dry-run, would do): the pool grows from
/// <paramref name="FromTargets"/> to <paramref name="ToTargets"/> targets, and of its
/// <paramref name="Replicas"/> chunk replicas <paramref name="MovingReplicas"/> move
/// (<paramref name="MovingBytes"/> bytes), as placement v<paramref name="Placement"/> puts them.
/// </summary>
public sealed record ExtendPlan(string Pool, int FromTargets, int ToTargets, int Placement, long Chunks, long Replicas,
    long MovingChunks, long MovingReplicas, long MovingBytes, bool Started)
{
    /// <summary>The fraction of replicas that move (0 when the pool holds no data).</summary>
    public double MovingFraction => Replicas == 0 ? 0 : (double)MovingReplicas / Replicas;
}

public sealed partial class Pool
{
    /// <summary>
    /// Grows the pool onto the engine's targets it is not on yet (added with `storage add-target`):
    /// each new target gets a shard (joined to the log, then recorded in its superblock), then a job
    /// on the migration loop moves the chunks that the pool's placement now puts on other targets
    /// (about 1/n of them with placement v2, most with v1). Returns once the job started; with
    /// <paramref name="dryRun"/> only says how much would move. An extension that stopped (failed,
    /// or the pool closed before it finished) is run again.
    /// </summary>
    public async Task<ExtendPlan> ExtendAsync(bool dryRun)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfJobRunning();
            int from = Shards.Length, to = _engine.Targets.Count;
            bool retry = from == to && DurableJob() == ExtendJob && _jobTask is not { IsCompleted: false };
            if (from >= to && !retry)
                throw new InvalidRequestException($"pool '{Label}' already is on all {to} target(s) of the engine; add one first with 'strata storage add-target URI'");
            var plan = PlanExtend(to);
            if (dryRun)
                return plan;
            ThrowIfNotWritable();
            var op = BeginOperation("extension");
            try
            {
                int logBlock = Shards.Max(s => s.Device.Geometry.LogicalBlockSize);
                for (int i = from; i < to; i++)
                    if (_engine.Targets[i].Device.Geometry.LogicalBlockSize > logBlock)
                        throw new InvalidRequestException($"target {i} has {_engine.Targets[i].Device.Geometry.LogicalBlockSize}-byte blocks; pool '{Label}' writes its log in {logBlock}-byte blocks");
                // The job first: a crash after it and before the new shards resumes a job with nothing to move.
                if (!retry)
                    await Log.CommitAsync([MetaRecords.PoolSetProp(JobProp, ExtendJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]).ConfigureAwait(false);
                for (int i = from; i < to; i++)
                    await JoinTargetAsync(i).ConfigureAwait(false);
                if (from < to)
                {
                    PlaceOnAllShards();
                    // Every header now counts the new targets.
                    await Log.CheckpointAsync().ConfigureAwait(false);
                }
            }
            catch
            {
                op.Dispose();
                throw;
            }
            Ras.Emit(new RasEvent(RasIds.PoolExtendStarted, RasSeverity.Notice, RasType.StateChange,
                $"pool '{Label}' extend from {from} to {to} targets started: {plan.MovingReplicas} of {plan.Replicas} chunk replicas ({plan.MovingBytes} bytes) move",
                Pool: Label));
            ulong cursor = 0;
            if (retry)
                lock (Meta.Sync)
                    cursor = ulong.TryParse(Meta.Props.GetValueOrDefault(JobCursorProp), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var c) ? c : 0;
            StartJob(ExtendJob, op, cursor);
            return plan with { Started = true };
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>
    /// Adds a shard on target <paramref name="index"/>: reserved on the target, joined to the log
    /// (which writes it a checkpoint and header), then recorded in the target's superblock. Placement
    /// does not use it until <see cref="PlaceOnAllShards"/>: before the record a crash forgets the
    /// shard, so no chunk may be on it yet.
    /// </summary>
    private async Task JoinTargetAsync(int index)
    {
        var first = Shards[0].Header;
        var (target, extent) = await _engine.ReserveShardAsync(Id, Label, index, first.ShardLength).ConfigureAwait(false);
        bool recorded = false;
        try
        {
            // Slot 1 "active" so the join's checkpoint goes to slot 0; generation 0 so the header's copies get 1 and 2.
            var header = first with { TargetId = target.Id, TargetIndex = index, Generation = 0, ActiveCheckpoint = 1 };
            await Log.JoinShardAsync(new Shard(target, extent.Offset, header)).ConfigureAwait(false);
            recorded = true;
            await _engine.CommitShardAsync(target, extent).ConfigureAwait(false);
        }
        finally
        {
            if (!recorded)
                _engine.CancelShard();
        }
        _entry.Extents = [.. _entry.Extents, extent];
    }

    /// <summary>Counts the chunk replicas that are not where the pool's placement puts them on <paramref name="targets"/> targets.</summary>
    private ExtendPlan PlanExtend(int targets)
    {
        var placement = Placement;
        long chunks = 0, replicas = 0, movingChunks = 0, movingReplicas = 0, movingBytes = 0;
        List<ImageMeta> images;
        lock (Meta.Sync)
            images = [.. Meta.Images.Values];
        foreach (var meta in images)
        {
            KeyValuePair<long, ChunkMap>[] maps;
            lock (Meta.Sync)
                maps = [.. meta.Chunks];
            foreach (var (index, map) in maps)
            {
                chunks++;
                var want = new int[map.Replicas.Length];
                placement.Targets(meta.Id, index, targets, want);
                int moving = 0;
                foreach (var r in map.Replicas)
                    if (Array.IndexOf(want, r.Target) < 0)
                        moving++;
                replicas += map.Replicas.Length;
                movingReplicas += moving;
                movingBytes += (long)moving * map.ExtentLength(meta.ChunkSize);
                if (moving > 0)
                    movingChunks++;
            }
        }
        return new ExtendPlan(Label, Shards.Length, targets, placement.Version, chunks, replicas, movingChunks, movingReplicas, movingBytes, false);
    }
}
