using System.Globalization;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Engine.Pools;

/// <summary>What excluding a target did to one pool (`storage exclude-target`).</summary>
public sealed record PoolExclusion(string Pool, int Target, PoolDegradation Degradation, bool RebuildStarted, string? RebuildRefused);

/// <summary>
/// A pool's redundancy with its excluded targets: Health is ok, degraded (chunks with fewer copies
/// than rf, or lost), or rebuilding (a rebuild job runs); the chunks and bytes left with one copy;
/// the chunks and bytes whose every copy was on excluded targets (lost), and the images they belong to.
/// </summary>
public sealed record PoolDegradation(IReadOnlyList<int> Excluded, string Health, long ChunksAtOneCopy, long BytesAtOneCopy,
    long LostChunks, long LostBytes, IReadOnlyList<string> LostImages);

/// <summary>
/// Excluded targets (docs/operations.md, "Losing a target"): an excluded target's shard leaves the
/// log (no round, checkpoint or flush touches it), reads skip its replicas, and placement puts new
/// replicas on the remaining targets (<see cref="ExcludingPlacement"/>), which is also where the
/// rebuild job copies the replicas the target held. Durable as the pool property
/// <c>excluded_targets</c>, written through the log to the remaining shards.
/// </summary>
public sealed partial class Pool
{
    internal const string ExcludedProp = "excluded_targets";
    internal const string RebuildJob = "rebuild";

    private int[] _excluded = [];
    private Shard[] _logShards = [];

    /// <summary>The shards the log writes: every shard but the excluded ones.</summary>
    internal Shard[] LogShards => Volatile.Read(ref _logShards);

    /// <summary>The excluded targets, ascending.</summary>
    public IReadOnlyList<int> ExcludedTargets => Volatile.Read(ref _excluded);

    /// <summary>Targets new replicas may go to: placement's targets less the excluded ones (what rf is capped at).</summary>
    internal int LiveTargets
    {
        get
        {
            // A loop, not Count(predicate): every write asks, and the lambda captures this (a delegate per call).
            int count = TargetCount, live = count;
            foreach (int t in Volatile.Read(ref _excluded))
                if (t < count)
                    live--;
            return live;
        }
    }

    /// <summary>A data read or write failed on a device (counts toward excluding its target).</summary>
    internal void OnDeviceError(int? target, string? device) => _engine.OnDeviceError(target, device);

    internal bool IsExcluded(int target) => Array.IndexOf(Volatile.Read(ref _excluded), target) >= 0;

    /// <summary>Serializes changes of the excluded set and the log's shards (the committer, a failed write dropping a shard, a reintegration).</summary>
    private readonly object _shardSet = new();

    /// <summary>
    /// Called by the log's committer between rounds (PoolLog.ExcludeShardAsync), or by PoolLog.TryDropShard
    /// when the target's device failed a write (the log then holds acknowledgements until the exclusion is durable).
    /// </summary>
    internal void ExcludeShard(int target)
    {
        lock (_shardSet)
        {
            var excluded = Volatile.Read(ref _excluded);
            if (excluded.Contains(target))
                return;
            Volatile.Write(ref _excluded, [.. excluded.Append(target).Order()]);
            Volatile.Write(ref _logShards, [.. LogShards.Where(s => s.Index != target)]);
        }
    }

    /// <summary>
    /// A rejoining target's shard (excluded, back in the log for its reintegration) leaves the log again
    /// after its device failed a write (PoolLog.TryDropShard); it never stopped being excluded.
    /// </summary>
    internal void LeaveLog(int target)
    {
        lock (_shardSet)
        {
            System.Diagnostics.Debug.Assert(IsExcluded(target), "only an excluded shard leaves the log without an exclusion");
            Volatile.Write(ref _logShards, [.. LogShards.Where(s => s.Index != target)]);
        }
    }

    /// <summary>
    /// Target <paramref name="target"/> is leaving the pool after its device failed a write
    /// (PoolLog.TryDropShard, exclusion not durable yet): a reintegration in progress fails, naming it,
    /// and its job stops now rather than copy onto a target that is going (docs/operations.md,
    /// "A target that fails during its reintegration").
    /// </summary>
    internal void OnShardDropping(int target, Exception cause)
    {
        if (_reintegration is not { } r || !r.Active)
            return;
        r.Failing(target, $"target {target} failed a write ({cause.Message})");
        if (RunningJob == ReintegrateJob && _jobRun is { } run)
            _ = run.Stop.CancelAsync();
    }

    /// <summary>
    /// Targets dropped after a failed write (PoolLog.TryDropShard) whose exclusion is durable but whose
    /// rebuild job has not been started yet: <see cref="ExcludeTargetAsync"/> finishes them.
    /// </summary>
    private readonly HashSet<int> _droppedAwaitingRebuild = [];

    /// <summary>
    /// The exclusion of target <paramref name="target"/>, dropped after a failed write, is durable (a
    /// checkpoint of the remaining shards holds it): the engine excludes the target from its other pools
    /// and starts the rebuilds, in the background.
    /// </summary>
    internal void OnShardDropped(int target)
    {
        lock (_droppedAwaitingRebuild)
            _droppedAwaitingRebuild.Add(target);
        _engine.OnTargetWriteFailed(this, target);
    }

    /// <summary>
    /// Awaits replica writes of new extents (<paramref name="writes"/>[i] goes to target
    /// <paramref name="targets"/>[i]). When some failed on their device, the write is still good if
    /// <paramref name="kept"/> says every chunk keeps a copy on a target that did not fail, and every failed
    /// target leaves the pool (PoolLog.TryDropShard: its exclusion is durable before anything is acknowledged
    /// again, so its stale replicas are never read), and each failed write is reported (data_write_failed);
    /// otherwise a device error is thrown for the caller to report.
    /// </summary>
    internal async Task ReplicaWritesAsync(Task all, Task[] writes, int[] targets, Func<HashSet<int>, bool> kept, string image, long at)
    {
        try
        {
            await all.ConfigureAwait(false);
            return;
        }
        catch (DeviceException)
        {
            // Which writes failed is decided below, write by write.
        }
        var failed = new Dictionary<int, DeviceException>();
        DeviceException? first = null;
        for (int i = 0; i < writes.Length; i++)
        {
            if (!writes[i].IsFaulted)
                continue;
            if (writes[i].Exception!.InnerException is not DeviceException d)
            {
                await writes[i].ConfigureAwait(false);
                continue;
            }
            first ??= d;
            failed.TryAdd(targets[i], d);
        }
        if (first == null)
            return;
        // Not survived: the caller reports the failure, as for a write with one replica.
        if (!kept([.. failed.Keys]))
            throw first;
        foreach (var (t, d) in failed)
            if (!Log.TryDropShard(t, d))
                throw d;
        foreach (var (t, d) in failed)
            Ras.Emit(new RasEvent(RasIds.DataWriteFailed, RasSeverity.Error, RasType.InfoOnly,
                $"pool '{Label}' image '{image}' write at offset {at} failed on target {t}: {d.Message}; the other replicas were written and the target leaves the pool",
                Pool: Label, Image: image, Target: t, Device: d.Device, Offset: at));
    }

    internal static int[] ParseExcluded(string? value, int shards)
    {
        if (string.IsNullOrEmpty(value))
            return [];
        var list = new List<int>();
        foreach (var part in value.Split(','))
            if (int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int t) && t < shards)
                list.Add(t);
        return [.. list.Distinct().Order()];
    }

    /// <summary>Whether some chunk has a replica on an excluded target and a copy elsewhere that the rebuild could copy.</summary>
    private bool HasRebuildWork()
    {
        lock (Meta.Sync)
            return Meta.Images.Values.Any(img => img.Chunks.Scan.Any(m =>
                m.Replicas.Any(r => IsExcluded(r.Target)) && m.Replicas.Any(r => !IsExcluded(r.Target)) && m.Replicas.Length <= LiveTargets));
    }

    /// <summary>Chunks that would have no copy left without target <paramref name="target"/> and the excluded targets, yet have one with it.</summary>
    internal long ChunksOnlyWith(int target)
    {
        var excluded = Volatile.Read(ref _excluded);
        long n = 0;
        lock (Meta.Sync)
        {
            foreach (var img in Meta.Images.Values)
                foreach (var map in img.Chunks.Scan)
                {
                    bool on = false, elsewhere = false;
                    foreach (var r in map.Replicas)
                    {
                        if (r.Target == target)
                            on = true;
                        else if (Array.IndexOf(excluded, r.Target) < 0)
                            elsewhere = true;
                    }
                    if (on && !elsewhere)
                        n++;
                }
        }
        return n;
    }

    /// <summary>Counts what the excluded targets (plus <paramref name="also"/>) leave of every chunk.</summary>
    internal PoolDegradation Degradation(int also = -1)
    {
        var excluded = Volatile.Read(ref _excluded);
        string? job = RunningJob;
        if (excluded.Length == 0 && also < 0 && job != ReintegrateJob)
            return new PoolDegradation([], "ok", 0, 0, 0, 0, []);
        bool Gone(int t) => t == also || Array.IndexOf(excluded, t) >= 0;
        long oneCopy = 0, oneCopyBytes = 0, lost = 0, lostBytes = 0, short_ = 0;
        var lostImages = new SortedSet<string>(StringComparer.Ordinal);
        int rf = Math.Min(Rf, TargetCount);
        lock (Meta.Sync)
        {
            foreach (var img in Meta.Images.Values)
                foreach (var map in img.Chunks.Scan)
                {
                    int live = 0;
                    foreach (var r in map.Replicas)
                        if (!Gone(r.Target))
                            live++;
                    if (live == 0)
                    {
                        lost++;
                        lostBytes += img.ChunkSize;
                        lostImages.Add(img.Label);
                    }
                    else if (live < rf)
                    {
                        short_++;
                        if (live == 1)
                        {
                            oneCopy++;
                            oneCopyBytes += img.ChunkSize;
                        }
                    }
                }
        }
        string health = job == RebuildJob ? "rebuilding" : job == ReintegrateJob ? "reintegrating" : lost > 0 || short_ > 0 ? "degraded" : "ok";
        return new PoolDegradation(also >= 0 ? [.. excluded.Append(also).Order()] : excluded, health, oneCopy, oneCopyBytes, lost, lostBytes, [.. lostImages]);
    }

    /// <summary>
    /// Excludes target <paramref name="target"/> from this pool: refused (with the figure) when a
    /// chunk would be left without a copy, unless <paramref name="force"/> (a target that failed: its
    /// copies are gone either way). A running extension stops (the rebuild moves its chunks too); then
    /// a rebuild job copies every replica the target held onto the remaining targets.
    /// </summary>
    internal async Task<PoolExclusion?> ExcludeTargetAsync(int target, bool force)
    {
        bool dropped;
        lock (_droppedAwaitingRebuild)
            dropped = _droppedAwaitingRebuild.Contains(target);
        if (target >= Shards.Length || (IsExcluded(target) && !dropped))
            return null;
        var would = Degradation(target);
        if (would.LostChunks > 0 && !force)
            throw new InvalidRequestException($"excluding target {target} would leave {would.LostChunks} chunk(s) ({would.LostBytes} bytes) of pool '{Label}' with no copy " +
                $"(images: {string.Join(", ", would.LostImages)}); the last replica of a chunk is not excluded");
        if (Shards.Length - ExcludedTargets.Count(t => t != target) <= 1)
            throw new InvalidRequestException($"target {target} is the last target of pool '{Label}' that is not excluded");
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotLoggable();
            await StopRunningJobAsync().ConfigureAwait(false);
            string? refused = null;
            IDisposable? op = null;
            try
            {
                op = BeginOperation("rebuild");
            }
            catch (PoolBusyException e)
            {
                refused = e.Message;
            }
            await Log.ExcludeShardAsync(target).ConfigureAwait(false);
            lock (_droppedAwaitingRebuild)
                _droppedAwaitingRebuild.Remove(target);
            // The exclusion and its rebuild job in one batch: a crash never leaves one without the other.
            var excludedProp = MetaRecords.PoolSetProp(ExcludedProp, string.Join(",", ExcludedTargets.Select(t => t.ToString(CultureInfo.InvariantCulture))));
            await Log.CommitAsync(op != null
                ? [excludedProp, MetaRecords.PoolSetProp(JobProp, RebuildJob), MetaRecords.PoolSetProp(JobCursorProp, "0")]
                : [excludedProp]).ConfigureAwait(false);
            var now = Degradation();
            Ras.Emit(new RasEvent(RasIds.TargetExcluded, RasSeverity.Warning, RasType.StateChange,
                $"pool '{Label}': target {target} excluded; {now.ChunksAtOneCopy} chunk(s) ({now.BytesAtOneCopy} bytes) left at one copy" +
                (now.LostChunks > 0 ? $", {now.LostChunks} chunk(s) ({now.LostBytes} bytes) lost in image(s) {string.Join(", ", now.LostImages)}" : ""),
                Pool: Label, Target: target, Device: Shards[target].Device.Name));
            if (now.LostChunks > 0)
                Ras.Emit(new RasEvent(RasIds.PoolDataLost, RasSeverity.Error, RasType.StateChange,
                    $"pool '{Label}' lost {now.LostChunks} chunk(s) ({now.LostBytes} bytes) with target {target}: images {string.Join(", ", now.LostImages)}; reads of them fail (EIO)",
                    Pool: Label, Target: target));
            if (op != null)
                StartJob(RebuildJob, op, 0);
            return new PoolExclusion(Label, target, Degradation(), op != null, refused);
        }
        finally
        {
            MetaLock.Release();
        }
    }
}

/// <summary>
/// A placement with excluded targets: the inner placement's replicas for rf + excluded slots,
/// without the excluded targets, first rf of them. A chunk none of whose targets is excluded keeps
/// its place; the others get the next targets the inner placement names.
/// </summary>
internal sealed class ExcludingPlacement(IPlacement inner, int[] excluded) : IPlacement
{
    public int Version => inner.Version;

    public int Target(uint image, long chunk, int replica, int targets)
    {
        Span<int> all = stackalloc int[replica + 1];
        Targets(image, chunk, targets, all);
        return all[replica];
    }

    public void Targets(uint image, long chunk, int targets, Span<int> replicas)
    {
        int want = Math.Min(replicas.Length + excluded.Length, targets);
        Span<int> wide = stackalloc int[want];
        inner.Targets(image, chunk, targets, wide);
        int n = 0;
        foreach (int t in wide)
            if (n < replicas.Length && Array.IndexOf(excluded, t) < 0)
                replicas[n++] = t;
        // Fewer live targets than rf: the remaining slots repeat nothing; the caller caps rf at the live count.
        for (int t = 0; n < replicas.Length && t < targets; t++)
            if (Array.IndexOf(excluded, t) < 0 && !replicas[..n].Contains(t))
                replicas[n++] = t;
        for (; n < replicas.Length; n++)
            replicas[n] = wide[n % wide.Length];
    }
}

/// <summary>
/// A placement that leaves out the targets the pool has excluded at the moment of each call (an
/// upgrade's move, during which a target may be excluded): never a new replica on an excluded target.
/// </summary>
internal sealed class CurrentlyExcluding(Pool pool, IPlacement inner) : IPlacement
{
    public int Version => inner.Version;

    private IPlacement Current => pool.ExcludedTargets is int[] { Length: > 0 } e ? new ExcludingPlacement(inner, e) : inner;

    public int Target(uint image, long chunk, int replica, int targets) => Current.Target(image, chunk, replica, targets);

    public void Targets(uint image, long chunk, int targets, Span<int> replicas) => Current.Targets(image, chunk, targets, replicas);
}
