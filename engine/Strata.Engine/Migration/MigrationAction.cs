using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>
/// An online upgrade action that runs a <see cref="MigrationLoop"/> with the transform a layout
/// feature supplies (<c>transformFor</c>, built when the action starts, from the pool). Its
/// estimate asks the same transform what every chunk needs, so progress totals and the
/// free-space precondition come from what will actually move. Idempotent: a chunk already in its
/// new place or form plans nothing, so any number of runs from any saved cursor ends the same.
/// A run that had to leave chunks where they were (device errors, unreadable data) fails the
/// action with the count and the first reason; running the upgrade again retries them.
/// </summary>
internal sealed class MigrationAction(Func<Pool, IChunkTransform> transformFor, MigrationOptions? options = null) : IUpgradeAction
{
    public ActionAccess Access => ActionAccess.Online;

    public MigrationOptions Options { get; } = options ?? new MigrationOptions();

    /// <summary>
    /// The pool behind an action's view of it: a data-moving action works on chunks, which only
    /// the pool service has (Migration sits above Pools; Layout sees the pool as IUpgradePool).
    /// </summary>
    internal static Pool PoolOf(IUpgradePool pool) =>
        pool as Pool ?? throw new InvalidOperationException($"a data-moving action runs on a Pool, not a {pool.GetType().Name}");

    public ActionEstimate Estimate(IUpgradePool upgrading)
    {
        var pool = PoolOf(upgrading);
        var transform = transformFor(pool);
        var (chunks, bytes, growth) = Plan(pool, transform);
        long reserve = 0;
        foreach (var m in Images(pool))
            reserve = Math.Max(reserve, (long)m.ChunkSize);
        // The largest net growth of a target, plus room for the copies in flight there at once.
        long need = growth.Length == 0 || bytes == 0 ? 0 : Math.Max(0, growth.Max()) + reserve * Options.InFlightPerTarget;
        return new ActionEstimate(chunks, 0, bytes, need);
    }

    public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
    {
        var loop = new MigrationLoop(ctx, transformFor(PoolOf(ctx.Pool)), Options);
        var result = await loop.RunAsync(cursor, ct).ConfigureAwait(false);
        if (result.Left == 0)
            result = await loop.RunAsync(0, ct, sweep: true).ConfigureAwait(false);
        if (result.Left > 0)
            throw new StoreException(Interop.Errno.EIO,
                $"{result.Left} chunk(s) could not be moved and kept their location (first: {result.FirstLeft}); run 'strata pool upgrade {ctx.Pool.Label}' to retry them");
    }

    private static List<ImageMeta> Images(Pool pool)
    {
        lock (pool.Meta.Sync)
            return [.. pool.Meta.Images.Values];
    }

    /// <summary>Mapped chunks, bytes the transform would write, and each target's net growth (bytes in minus bytes freed).</summary>
    internal static (long Chunks, long Bytes, long[] Growth) Plan(Pool pool, IChunkTransform transform)
    {
        long chunks = 0, bytes = 0;
        var growth = new long[pool.TargetCount];
        foreach (var meta in Images(pool))
        {
            KeyValuePair<long, ChunkMap>[] maps;
            lock (pool.Meta.Sync)
                maps = [.. meta.Chunks];
            foreach (var (index, map) in maps)
            {
                chunks++;
                var source = new ChunkSource(meta.Id, index, meta.ChunkSize, map);
                var targets = new int[transform.ReplicasAfter(source)];
                if (!transform.Plan(source, targets, out var plan))
                    continue;
                foreach (int t in targets)
                {
                    bool kept = !plan.RewriteAll && Array.Exists(map.Replicas, r => r.Target == t);
                    if (kept)
                        continue;
                    bytes += plan.ExtentBytes;
                    growth[t] += plan.ExtentBytes;
                }
                foreach (var r in map.Replicas)
                    if (plan.RewriteAll || Array.IndexOf(targets, r.Target) < 0)
                        growth[r.Target] -= map.ExtentLength(meta.ChunkSize);
            }
        }
        return (chunks, bytes, growth);
    }
}
