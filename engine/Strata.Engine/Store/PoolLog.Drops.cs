using Strata.Engine.Pools;
using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// A target whose device fails a write leaves the pool instead of failing it (docs/operations.md,
/// "A target whose writes fail"): when the remaining shards can carry the log and every chunk keeps a
/// copy without it, the shard is dropped from the log and excluded at once (reads skip its replicas,
/// placement avoids it), and every acknowledgement is held until a checkpoint of the remaining shards
/// records the exclusion. Held, because the rounds acknowledged from then on may name replicas the
/// failed device did not store: the exclusion must be durable before any of them is, so that replay
/// never counts (or tail-checks) those replicas.
/// </summary>
internal sealed partial class PoolLog
{
    /// <summary>Guards the fields below; taken before the state's lock, never inside it.</summary>
    private readonly object _drops = new();
    private bool _stopping;
    /// <summary>Drops whose exclusion checkpoint has not completed yet: the target, and whether it was rejoining.</summary>
    private readonly List<(int Target, bool Rejoin)> _dropsPending = [];
    /// <summary>Commits of rounds completed while a drop was pending, acknowledged once it is durable (null: none pending).</summary>
    private List<Pending>? _held;

    /// <summary>
    /// Target <paramref name="target"/>'s device failed a log write, a flush, or a replica write of new
    /// data: drops its shard from the pool when that loses nothing, and returns whether it did (or the
    /// target was excluded already). False leaves the failure to the caller (the pool goes read-only, or
    /// the write fails): the last log shard, a shard joining the log for an extension, a chunk whose
    /// only copy is there, a pool at rf 1, a pool that is closing or has failed.
    /// <para>
    /// A target rejoining the log for its reintegration (back in the log, still excluded until the
    /// reintegration lifts the exclusion, <see cref="TryLiftExclusion"/>) leaves the log again at any
    /// rf: nothing is placed on it or read from it yet, so nothing depends on it. Its drop still
    /// checkpoints before acknowledging, since the batch lifting its exclusion may already be applied:
    /// that checkpoint records the target excluded again (RecordDropsInState).
    /// </para>
    /// </summary>
    internal bool TryDropShard(int target, Exception cause)
    {
        bool rejoining;
        lock (_drops)
        {
            var shards = _pool.LogShards;
            bool inLog = Array.Exists(shards, s => s.Index == target);
            rejoining = inLog && _pool.IsExcluded(target);
            if (_pool.IsExcluded(target) && !inLog)
                return true;
            if (!inLog || !_pool.EngineOptions.DropTargetOnWriteError || _stopping || _pool.ReadOnlyReason != null || !Array.Exists(shards, s => s.Index != target))
                return false;
            if (!rejoining)
            {
                // rf 1: the pool's owner chose no second copy; a failing target fails its writes (and a failed
                // log write or flush the pool) rather than leave, even where it holds no chunk yet.
                // An extension's new shard: its headers may not be written yet.
                if (_pool.Rf < 2 || _joining.Contains(target))
                    return false;
                // Mappings not applied yet are checked again before the exclusion is recorded (RecordDropsInState).
                if (_pool.ChunksOnlyWith(target) > 0)
                    return false;
            }
            _held ??= [];
            _dropsPending.Add((target, rejoining));
            // Before the exclusion changes placement: a job that sees the count unchanged planned nothing by it.
            _lastDrop = $"target {target} failed a write ({cause.Message})";
            Interlocked.Increment(ref _dropCount);
            if (rejoining)
                _pool.LeaveLog(target);
            else
                _pool.ExcludeShard(target);
            var done = Enqueue(null, exclude: target, dropped: true, rejoin: rejoining);
            // Its failure is the pool's, reported by the checkpoint; nothing waits for it here.
            _ = done.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }
        var shard = _pool.Shards[target];
        _pool.Ras.Emit(new RasEvent(RasIds.TargetDropped, RasSeverity.Error, RasType.StateChange,
            rejoining
                ? $"pool '{_pool.Label}' stopped using target {target}, which was rejoining it for its reintegration, after its device failed a write ({cause.Message}); it stays excluded"
                : $"pool '{_pool.Label}' stopped using target {target} after its device failed a write ({cause.Message}); its replicas are served from the other targets",
            Pool: _pool.Label, Target: target, Device: shard.Device.Name));
        _pool.OnShardDropping(target, cause);
        return true;
    }

    /// <summary>
    /// A reintegration lifts target <paramref name="target"/>'s exclusion in memory once the batch
    /// lifting it is durable, unless the target left the log meanwhile (its device failed a write):
    /// false then, and the target stays excluded (a checkpoint records it so). Under the drops' lock,
    /// so a failing write either sees the target excluded (and leaves it excluded) or sees it lifted.
    /// </summary>
    internal bool TryLiftExclusion(int target)
    {
        lock (_drops)
        {
            if (!Array.Exists(_pool.LogShards, s => s.Index == target))
                return false;
            _pool.UnexcludeShard(target);
            return true;
        }
    }

    private long _dropCount;
    private volatile string _lastDrop = "";

    /// <summary>Shards dropped since the pool opened; read by jobs, which must not end across one (Pool.RunJobAsync).</summary>
    internal long DropCount => Interlocked.Read(ref _dropCount);

    /// <summary>Whether a drop's exclusion is not durable yet (its checkpoint has not completed).</summary>
    internal bool DropPending
    {
        get
        {
            lock (_drops)
                return _dropsPending.Count > 0;
        }
    }

    /// <summary>What the last drop was: "target N failed a write (why)".</summary>
    internal string LastDrop => _lastDrop;

    /// <summary>Whether target <paramref name="target"/>'s shard is in the log now.</summary>
    internal bool InLog(int target)
    {
        lock (_drops)
            return Array.Exists(_pool.LogShards, s => s.Index == target);
    }

    /// <summary>
    /// Runs <paramref name="op"/> on every log shard at once. A shard whose device fails it is dropped
    /// (<see cref="TryDropShard"/>) when the others succeeded; otherwise the first failure is thrown.
    /// </summary>
    private Task OnLogShardsAsync(Func<Shard, Task> op) => OnLogShardsAsync(new TaskOp(op)).AsTask();

    /// <summary>What <see cref="OnLogShardsAsync{T}"/> runs on one shard: a ValueTask it awaits exactly once.</summary>
    private interface IShardOp
    {
        ValueTask Run(Shard shard);
    }

    private readonly struct TaskOp(Func<Shard, Task> op) : IShardOp
    {
        public ValueTask Run(Shard shard) => new(op(shard));
    }

    /// <summary>
    /// As <see cref="OnLogShardsAsync(Func{Shard, Task})"/> for a struct operation: a round's log write
    /// and flush (<see cref="LogWrite"/>, <see cref="LogFlush"/>) allocate no closure, delegate, task array
    /// or WhenAll (pooled, awaited once; issue 17). Every shard's operation is started before any is
    /// awaited, and every one is awaited, failed or not, before this completes.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private async ValueTask OnLogShardsAsync<T>(T op) where T : struct, IShardOp
    {
        var shards = _pool.LogShards;
        if (shards.Length == 1)
        {
            await op.Run(shards[0]).ConfigureAwait(false);
            return;
        }
        var started = System.Buffers.ArrayPool<ValueTask>.Shared.Rent(shards.Length);
        Exception?[]? errors = null;
        try
        {
            for (int i = 0; i < shards.Length; i++)
            {
                try
                {
                    started[i] = op.Run(shards[i]);
                }
                catch (Exception e)
                {
                    started[i] = ValueTask.FromException(e);
                }
            }
            for (int i = 0; i < shards.Length; i++)
            {
                try
                {
                    await started[i].ConfigureAwait(false);
                }
                catch (Exception e)
                {
                    (errors ??= new Exception?[shards.Length])[i] = e;
                }
            }
        }
        finally
        {
            started.AsSpan(0, shards.Length).Clear();
            System.Buffers.ArrayPool<ValueTask>.Shared.Return(started);
        }
        if (errors == null)
            return;
        // Decided shard by shard.
        Exception? unhandled = null, first = null;
        int ok = 0;
        for (int i = 0; i < shards.Length; i++)
        {
            if (errors[i] is not { } e)
            {
                ok++;
                continue;
            }
            first ??= e;
            if (e is not DeviceException || !TryDropShard(shards[i].Index, e))
                unhandled ??= e;
        }
        if (unhandled != null || ok == 0)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(unhandled ?? first!);
    }

    /// <summary>The completer's acknowledgement of a round's commits: held while a drop is pending.</summary>
    /// <summary>Acknowledges a round's commits, or holds them while a drop is pending (returns true then: CompleteDrops lets them go).</summary>
    private bool Acknowledge(List<Pending> batch)
    {
        lock (_drops)
        {
            if (_held != null)
            {
                _held.AddRange(batch);
                return true;
            }
        }
        foreach (var p in batch)
            Acknowledge(p);
        return false;
    }

    private static void Acknowledge(Pending p)
    {
        if (p.DataError != null)
            p.Fail(p.DataError);
        else
            p.Succeed();
    }

    /// <summary>Shards joining the log (an extension or a reintegration) until their first checkpoint is written: never dropped (their headers may not be written yet).</summary>
    private readonly HashSet<int> _joining = [];

    private void Joining(IEnumerable<int> targets, bool on)
    {
        lock (_drops)
            foreach (int t in targets)
                if (on)
                    _joining.Add(t);
                else
                    _joining.Remove(t);
    }

    /// <summary>
    /// Before every checkpoint but a routine one (every round is applied, so every mapping the held
    /// commits made is in the state): records each target dropped and not yet durably excluded in the
    /// state's excluded targets, with a sequence of its own, so the checkpoint holds the exclusion. A
    /// checkpoint without it would make mappings trusted whose replicas the dropped device never made
    /// durable (its flush failed, or no longer asked of it), while the state still counts them
    /// (docs/format.md, "A target that fails a write"). A dropped target that now holds the only copy
    /// of some chunk (a mapping that was still in flight when it was dropped) cannot leave, so the pool
    /// fails instead and the held commits with it, as a failed write would have failed it without the drop.
    /// </summary>
    private void RecordDropsInState()
    {
        (int Target, bool Rejoin)[] drops;
        lock (_drops)
            drops = [.. _dropsPending];
        if (drops.Length == 0)
            return;
        // A rejoining target was excluded all along: nothing was placed on it meanwhile.
        foreach (var (target, rejoin) in drops)
            if (!rejoin && _pool.ChunksOnlyWith(target) is > 0 and long only)
                throw new StoreException(Errno.EIO,
                    $"target {target} of pool '{_pool.Label}' failed a write and holds the only copy of {only} chunk(s) written meanwhile");
        var state = _pool.Meta;
        lock (state.Sync)
        {
            // The applied value, not the in-memory set: a reintegration's lift may be applied while its
            // commit is held, and its target is still excluded in memory until the commit returns.
            var applied = Pool.ParseExcluded(state.Props.GetValueOrDefault(Pool.ExcludedProp), _pool.Shards.Length);
            var excluded = applied.Concat(drops.Select(d => d.Target)).Distinct().Order().ToArray();
            if (excluded.SequenceEqual(applied.Order()))
                return;
            var record = MetaRecords.PoolSetProp(Pool.ExcludedProp, string.Join(",", excluded.Select(t => t.ToString(System.Globalization.CultureInfo.InvariantCulture))));
            ulong seq = _nextSeq++;
            state.Apply(new WalRecord(seq, (ushort)record.Type, record.Flags, record.Payload));
            state.LastSeq = seq;
        }
    }

    /// <summary>
    /// Whether a checkpoint whose state excludes <paramref name="excluded"/> may be made current: no
    /// target has been dropped that it does not exclude. Asked after the checkpoint's flush, which
    /// covered only the shards still in the log: a target dropped before it (since the capture, or
    /// before a routine checkpoint's capture) may hold replicas the state names that no flush made durable.
    /// A drop stays pending until its own checkpoint, which never runs beside this one.
    /// </summary>
    private bool RecordsEveryDrop(int[] excluded)
    {
        lock (_drops)
            return _dropsPending.TrueForAll(d => Array.IndexOf(excluded, d.Target) >= 0);
    }

    /// <summary>
    /// After the checkpoint of <paramref name="waiting"/> (<paramref name="error"/>: it failed): once no drop
    /// is pending any more, the held commits are acknowledged (the checkpoint holds them and the exclusions),
    /// or failed with the checkpoint's error; the pool then excludes each dropped target from the engine.
    /// </summary>
    private void CompleteDrops(List<Pending> waiting, Exception? error)
    {
        if (!waiting.Exists(p => p.Dropped))
            return;
        List<Pending>? release = null;
        lock (_drops)
        {
            foreach (var p in waiting)
                if (p.Dropped)
                    _dropsPending.Remove((p.Exclude, p.Rejoin));
            if (_dropsPending.Count == 0 || error != null)
            {
                release = _held;
                _held = _dropsPending.Count == 0 ? null : [];
            }
        }
        if (release != null)
        {
            foreach (var p in release)
            {
                if (error == null)
                    Acknowledge(p);
                else
                    p.Fail(error as StoreException ?? new PoolReadOnlyException($"pool '{_pool.Label}' is read-only: {_pool.ReadOnlyReason}", error));
                // The log's hold on a pooled commit ends here (its round was done when it was held).
                p.Release();
            }
        }
        if (error == null)
            foreach (var p in waiting)
                if (p.Dropped)
                    _pool.OnShardDropped(p.Exclude);
    }
}
