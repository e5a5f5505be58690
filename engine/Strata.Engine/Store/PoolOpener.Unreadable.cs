using Strata.Engine.Pools;
using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// Shards whose device fails while the open reads them (docs/operations.md, "Losing a target"). A
/// device error is not a verdict on the pool: the shard is set aside like one with unusable
/// metadata and the others decide. After replay the longest history says whether the pool may
/// open without it: only if its <c>excluded_targets</c> names the target (nothing reads or writes
/// an excluded shard); otherwise the open is refused before anything is written. The open never
/// excludes a target by itself.
/// </summary>
internal static partial class PoolOpener
{
    /// <summary>A shard's own header, checkpoint or log could not be read (the device failed).</summary>
    private sealed class ShardUnreadableException(string message, Exception inner) : Exception(message, inner);

    /// <summary>The targets found unreadable during one open, each with its first problem.</summary>
    private sealed class Unreadable(StorageEngine engine)
    {
        private readonly SortedDictionary<int, (Target Target, string Problem, Exception? Error)> _targets = new();

        public int Count => _targets.Count;

        public bool Contains(int target) => _targets.ContainsKey(target);

        /// <summary>Records target <paramref name="t"/> as unreadable; reported once, as any shard with unusable metadata is (checkpoint_bad).</summary>
        public void Add(string label, Target t, string problem, Exception? error)
        {
            if (!_targets.TryAdd(t.Index, (t, problem, error)))
                return;
            engine.Ras.Emit(new RasEvent(RasIds.CheckpointBad, RasSeverity.Error, RasType.InfoOnly,
                $"pool '{label}' metadata on target {t.Index} is unusable: {problem}", Pool: label, Target: t.Index, Device: t.Device.Name));
        }

        public string Describe() => string.Join("; ", _targets.Select(kv => $"target {kv.Key}: {kv.Value.Problem}"));

        /// <summary>Refuses the open (nothing written yet) when an unreadable target is not excluded in the replayed state.</summary>
        public void RefuseUnlessExcluded(PoolState state, string label)
        {
            var excluded = Pool.ParseExcluded(state.Props.GetValueOrDefault(Pool.ExcludedProp), int.MaxValue);
            foreach (var (index, (t, problem, error)) in _targets)
                if (Array.IndexOf(excluded, index) < 0)
                    throw new CorruptMetadataException($"pool '{label}' target {index} ('{t.Device.Name}') cannot be read ({problem}) and is not excluded from the pool; refusing to open (nothing was written)", error);
        }
    }

    /// <summary>
    /// The shard of a target whose header cannot be read, built without reading the device: every shard
    /// of a pool has the same regions (PoolLayoutPlan; an extension copies the first shard's header), so
    /// another shard's header with this target's identity describes it. The pool opens only if the
    /// target is excluded, and then nothing touches the shard: the log, checkpoints and flushes go to
    /// the other shards, placement and reads skip it. A reintegration reads its real header first
    /// (<see cref="Shard.HeaderUnread"/>). Making every user of Pool.Shards cope with a missing
    /// shard instead would spread the case over the data path.
    /// </summary>
    private static Shard UnreadShard(Target t, long offset, ShardHeader template) =>
        new(t, offset, template with { TargetId = t.Id, TargetIndex = t.Index, Generation = 0, CheckpointSeq = 0, WalHead = 0, WalEpoch = 0 }) { HeaderUnread = true };
}
