namespace Strata.Engine.Layout;

/// <summary>
/// wal_v2 (exclusive): checkpoints every shard and restarts its log in WAL v2 framing
/// (<see cref="IUpgradePool.RestartLogInWalV2Async"/>; docs/format.md, "WAL v2"). The job runs it with
/// image I/O held at the gate and metadata changes refused; the committer switches between two rounds,
/// so no batch is ever half one format, and the action returns at the switch: the checkpoint follows
/// while held I/O goes on (its commits wait for it, as for any checkpoint). Idempotent: run again
/// (a crash before the job's cursor was durable), it checkpoints again and the log stays v2.
/// Crash argument in docs/format.md, "WAL v2".
/// </summary>
public sealed class WalV2Action : IUpgradeAction
{
    public static readonly WalV2Action Instance = new();

    public ActionAccess Access => ActionAccess.Exclusive;

    /// <summary>One item: the switch (its cost is one checkpoint, which grows with the chunk maps, not with the data).</summary>
    public ActionEstimate Estimate(IUpgradePool pool) => new(1, 0, 0, 0);

    public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        await ctx.Pool.RestartLogInWalV2Async().ConfigureAwait(false);
        ctx.ReportProgress(1, 0);
    }
}
