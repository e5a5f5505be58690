using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// Replication-factor changes on a pool that holds data (docs/operations.md, "Changing rf"): the
/// job <c>replicate</c> on the migration loop gives every chunk the new number of copies (where
/// placement puts them). The property <c>rf</c> never claims more copies than the data has: an
/// increase records the wanted rf as <c>rf_next</c> (new writes get that many copies at once) and
/// sets <c>rf</c> in the batch that ends the job; a decrease sets <c>rf</c> with the job's record
/// and the job frees the extra copies. Both are durable with the job, so a crash resumes it.
/// </summary>
public sealed partial class Pool
{
    internal const string ReplicateJob = "replicate";
    internal const string RfNextProp = "rf_next";

    /// <summary>Copies a new write gets: rf, or more while an rf increase runs.</summary>
    internal int WriteRf
    {
        get
        {
            lock (Meta.Sync)
            {
                int rf = int.Parse(Meta.Props["rf"], CultureInfo.InvariantCulture);
                return Meta.Props.GetValueOrDefault(JobProp) == ReplicateJob ? Math.Max(rf, RfNextLocked(rf)) : rf;
            }
        }
    }

    /// <summary>The rf the recorded rf change moves to (rf itself when none is recorded).</summary>
    private int RfNext()
    {
        lock (Meta.Sync)
            return RfNextLocked(int.Parse(Meta.Props["rf"], CultureInfo.InvariantCulture));
    }

    private int RfNextLocked(int rf) =>
        Meta.Props.TryGetValue(RfNextProp, out var v) && int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= 1 ? n : rf;

    /// <summary>
    /// `pool set-prop P rf N` on a pool with data (under the metadata lock): records the change with
    /// its job and starts it. Refused while another job runs or is recorded unfinished (naming it),
    /// during an upgrade (naming it), and for more copies than the pool has targets not excluded.
    /// </summary>
    private async Task ChangeRfAsync(int to)
    {
        ThrowIfNotWritable();
        ThrowIfJobRunning();
        if (DurableJob() is { } recorded && recorded != ReplicateJob)
            throw new PoolBusyException($"pool '{Label}' has an unfinished {recorded} job recorded; it resumes when the pool opens (or 'strata pool extend {Label}' runs it again); change rf after it completes");
        if (to > LiveTargets)
            throw new InvalidRequestException($"rf {to} needs {to} targets that are not excluded; pool '{Label}' has {LiveTargets}");
        var op = BeginOperation("replication");
        int from = Rf;
        try
        {
            var records = new List<MetaRecord>();
            // A decrease is true at once (every chunk has at least the new count); an increase only once the job ends.
            if (to < from)
                records.Add(MetaRecords.PoolSetProp("rf", to.ToString(CultureInfo.InvariantCulture)));
            records.Add(MetaRecords.PoolSetProp(RfNextProp, to.ToString(CultureInfo.InvariantCulture)));
            records.Add(MetaRecords.PoolSetProp(JobProp, ReplicateJob));
            records.Add(MetaRecords.PoolSetProp(JobCursorProp, "0"));
            await Log.CommitAsync([.. records]).ConfigureAwait(false);
        }
        catch
        {
            op.Dispose();
            throw;
        }
        Ras.Emit(new RasEvent(RasIds.PoolRfChangeStarted, RasSeverity.Notice, RasType.StateChange,
            $"pool '{Label}' rf change from {from} to {to} started: " + (to > from ? $"every chunk gets {to} copies; rf stays {from} until then" : $"the copies beyond {to} are freed"),
            Pool: Label));
        StartJob(ReplicateJob, op, 0);
    }
}
