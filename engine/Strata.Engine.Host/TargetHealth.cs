using System.Text.RegularExpressions;
using Strata.Engine.Control;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>
/// The storage core's RAS sink in the daemon: it sits in front of the durable log, names the
/// target of events that carry only a device (a failed data write, a pool made read-only by a
/// device error) and the header copy of header_copy_bad events, and keeps per-target facts
/// since start, from which <see cref="Health"/> derives what `strata storage query` shows.
/// </summary>
internal sealed partial class TargetHealthSink(RasLog log) : IRasSink
{
    private readonly object _sync = new();
    private readonly Dictionary<int, Facts> _facts = new();
    private volatile IReadOnlyList<Target>? _targets;

    /// <summary>Once the engine has opened, device names map to target indexes.</summary>
    public void Attach(IReadOnlyList<Target> targets)
    {
        _targets = targets;
        lock (_sync)
            foreach (var t in targets)
                For(t.Index).GenerationAtOpen ??= t.SuperblockGeneration;
    }

    public void Emit(RasEvent e)
    {
        int? target = e.Target ?? TargetOf(e.Device);
        Dictionary<string, string>? data = null;
        if (e.Id == RasIds.HeaderCopyBad && CopyName().Match(e.Message) is { Success: true } m)
            data = new Dictionary<string, string> { ["copy"] = m.Groups[1].Value };
        if (target != null)
            Record(e, target.Value, data?["copy"]);
        log.Emit(target == e.Target ? e : e with { Target = target }, container: null, data);
    }

    private int? TargetOf(string? device)
    {
        if (device == null || _targets is not { } targets)
            return null;
        foreach (var t in targets)
            if (t.Device.Name == device)
                return t.Index;
        return null;
    }

    private Facts For(int target)
    {
        if (!_facts.TryGetValue(target, out var f))
            _facts[target] = f = new Facts();
        return f;
    }

    private void Record(RasEvent e, int target, string? copy)
    {
        lock (_sync)
        {
            var f = For(target);
            switch (e.Id)
            {
                case RasIds.HeaderCopyBad:
                    // The superblock's events name no pool; a shard header's name its pool.
                    f.BadCopies.Add(new BadCopy(e.Pool, copy ?? "?", Problem(e.Message)));
                    break;
                case RasIds.DataReadFailed:
                    f.ReadErrors++;
                    f.LastError = e.Message;
                    break;
                case RasIds.DataWriteFailed:
                    f.WriteErrors++;
                    f.LastError = e.Message;
                    break;
                case RasIds.DataChecksumMismatch:
                    f.ChecksumErrors++;
                    f.LastError = e.Message;
                    break;
                case RasIds.ReplicaRepaired:
                    f.Repaired++;
                    break;
                case RasIds.PoolHeaderDamaged:
                    f.DamagedHeaders.Add((e.Pool, e.Message));
                    break;
                case RasIds.CheckpointBad:
                    f.BadMetadata.Add(e.Message);
                    break;
                case RasIds.TargetUnreadable:
                case ControlRasIds.PoolOpenFailed:
                    f.FailedPools.Add(e.Message);
                    break;
                case RasIds.PoolReadOnly:
                    // With a device the pool failed on this target's I/O; without one it met features unknown to this engine here.
                    if (e.Device != null)
                        f.FailedPools.Add(e.Message);
                    else
                        f.ReadOnlyPools.Add(e.Message);
                    break;
            }
        }
    }

    /// <summary>ok, or degraded / failed with the reasons, from what this target's device and headers have shown since start.</summary>
    public (string Health, string? Reason, TargetErrorsDto Errors) Health(Target t, IReadOnlyList<PoolInfo> pools)
    {
        var failed = new List<string>();
        var degraded = new List<string>();
        TargetErrorsDto errors;
        lock (_sync)
        {
            var f = For(t.Index);
            errors = new TargetErrorsDto(f.ReadErrors, f.WriteErrors, f.ChecksumErrors, f.Repaired);
            if (t.FlushFailure is { } flush)
                failed.Add($"a flush failed: {flush.Message}");
            failed.AddRange(f.FailedPools);
            if (f.WriteErrors > 0)
                failed.Add($"{f.WriteErrors} write error(s) (last: {f.LastError})");
            foreach (var c in f.BadCopies)
            {
                // Both copies are rewritten together: the superblock on the next generation, a shard
                // header when its pool is opened writable (the open checkpoints every shard).
                bool healed = c.Pool == null
                    ? t.SuperblockGeneration != f.GenerationAtOpen
                    : pools.Any(p => p.Label == c.Pool && p.State == "ready") || pools.All(p => p.Label != c.Pool);
                if (!healed)
                    degraded.Add($"header copy {c.Copy} bad ({(c.Pool == null ? "target superblock" : $"pool '{c.Pool}' shard header")}: {c.Problem})");
            }
            // The pool stays refused until both copies are rewritten (it opens) or it is destroyed.
            foreach (var (pool, message) in f.DamagedHeaders)
                if (!pools.Any(p => p.Label == pool && p.State == "ready") && pools.Any(p => p.Label == pool))
                    degraded.Add(message);
            if (f.ReadErrors > 0)
                degraded.Add($"{f.ReadErrors} read error(s)");
            if (f.ChecksumErrors > 0)
                degraded.Add($"{f.ChecksumErrors} checksum mismatch(es), {f.Repaired} repaired");
            if (f.ReadErrors + f.ChecksumErrors > 0 && f.LastError != null && f.WriteErrors == 0)
                degraded[^1] += $" (last: {f.LastError})";
            degraded.AddRange(f.BadMetadata);
            degraded.AddRange(f.ReadOnlyPools);
        }
        if (failed.Count > 0)
            return ("failed", string.Join("; ", failed.Concat(degraded)), errors);
        if (degraded.Count > 0)
            return ("degraded", string.Join("; ", degraded), errors);
        return ("ok", null, errors);
    }

    private static string Problem(string message)
    {
        var m = ProblemText().Match(message);
        return m.Success ? m.Groups[1].Value : message;
    }

    // The store names copies A and B in its messages: "... copy B on 'DEV' is invalid (bad CRC32C); using copy A".
    [GeneratedRegex(@"copy ([AB]) ")]
    private static partial Regex CopyName();

    [GeneratedRegex(@"is invalid \((.*)\); using copy")]
    private static partial Regex ProblemText();

    private sealed record BadCopy(string? Pool, string Copy, string Problem);

    private sealed class Facts
    {
        public ulong? GenerationAtOpen;
        public readonly List<BadCopy> BadCopies = new();
        public readonly List<string> BadMetadata = new();
        public readonly List<(string? Pool, string Message)> DamagedHeaders = new();
        public readonly List<string> FailedPools = new();
        public readonly List<string> ReadOnlyPools = new();
        public long ReadErrors, WriteErrors, ChecksumErrors, Repaired;
        public string? LastError;
    }
}
