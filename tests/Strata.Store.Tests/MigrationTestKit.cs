using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Migration;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// A placement for the loop's tests: every replica one target further than placement v1 puts it,
/// so every chunk of a pool with two or more targets has somewhere to move.
/// </summary>
internal sealed class RotatedPlacement : IPlacement
{
    public static readonly RotatedPlacement Instance = new();

    public int Version => 101;

    public int Target(uint image, long chunk, int replica, int targets) => (PlacementV1.Instance.Target(image, chunk, replica, targets) + 1) % targets;

    public void Targets(uint image, long chunk, int targets, Span<int> replicas)
    {
        for (int r = 0; r < replicas.Length; r++)
            replicas[r] = Target(image, chunk, r, targets);
    }
}

/// <summary>An upgrade action around a migration that reports each cursor it saved (so a test can act mid-run).</summary>
internal sealed class CursorSpyAction(IUpgradeAction inner) : IUpgradeAction
{
    private TaskCompletionSource<ulong> _saved = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes with the next cursor saved (durably) after the last <see cref="Reset"/>.</summary>
    public Task<ulong> Saved => _saved.Task;

    public void Reset() => _saved = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ActionAccess Access => inner.Access;

    public ActionEstimate Estimate(IUpgradePool pool) => inner.Estimate(pool);

    public Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct) =>
        inner.RunAsync(new UpgradeContext(ctx.Pool, ctx.Feature, async c =>
        {
            await ctx.SaveCursorAsync(c);
            _saved.TrySetResult(c);
        }, ctx.ReportProgress, ctx.ReportState), cursor, ct);
}

/// <summary>A RAS sink that also lets a test wait for the first event with an id.</summary>
internal sealed class WaitableRasSink : IRasSink
{
    private readonly InMemoryRasSink _all = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, TaskCompletionSource<RasEvent>> _waits = new();

    public void Emit(RasEvent e)
    {
        _all.Emit(e);
        Wait(e.Id).TrySetResult(e);
    }

    private TaskCompletionSource<RasEvent> Wait(string id) => _waits.GetOrAdd(id, _ => new(TaskCreationOptions.RunContinuationsAsynchronously));

    public Task<RasEvent> First(string id) => Wait(id).Task;

    public IEnumerable<RasEvent> WithId(string id) => _all.WithId(id);
}

/// <summary>Catalogs, pools on file targets and checks shared by the migration tests.</summary>
internal static class MigrationKit
{
    /// <summary>A test layout 3 whose only action moves every chunk to <see cref="RotatedPlacement"/>.</summary>
    public static MigrationAction RotateAction(MigrationOptions? options = null) =>
        new(pool => new PlacementMove(RotatedPlacement.Instance, pool.TargetCount), options);

    public static LayoutCatalog Catalog(IUpgradeAction action) =>
        TestCatalogs.WithVersion3(new LayoutFeature("test_move", 3, FeatureClass.Incompat, 5, ActionKind.DataMovement, "moves every chunk one target on", action));

    /// <summary>File targets through libstrata_io (O_DIRECT unless <paramref name="direct"/> is false); Inconclusive without the shim.</summary>
    public static NativeBlockDevice[] FileTargets(string dir, int count, string size = "32M", bool direct = true)
    {
        try
        {
            return Enumerable.Range(0, count).Select(i => NativeBlockDevice.Open(
                $"file:{Path.Combine(dir, $"t{i}")}?create=1&size={size}&direct={(direct ? 1 : 0)}", new DeviceOptions { ArenaBytes = direct ? 4 << 20 : 0 })).ToArray();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException or BadImageFormatException)
        {
            Assert.Inconclusive($"libstrata_io is not loadable: {e.Message}");
            throw;
        }
    }

    /// <summary>Whether every replica of every chunk is on the targets the placement names (as a set).</summary>
    public static int Misplaced(Pool pool, IPlacement placement)
    {
        int misplaced = 0;
        lock (pool.Meta.Sync)
        {
            foreach (var img in pool.Meta.Images.Values)
            {
                foreach (var (index, map) in img.Chunks)
                {
                    var want = new int[map.Replicas.Length];
                    placement.Targets(img.Id, index, pool.TargetCount, want);
                    if (!map.Replicas.Select(r => (int)r.Target).Order().SequenceEqual(want.Order()))
                        misplaced++;
                }
            }
        }
        return misplaced;
    }

    /// <summary>Chunks that do not have exactly rf (capped at the targets not excluded) replicas on distinct targets.</summary>
    public static int NotAtRf(Pool pool)
    {
        int rf = Math.Min(pool.Rf, pool.LiveTargets);
        lock (pool.Meta.Sync)
            return pool.Meta.Images.Values.Sum(i => i.Chunks.Values.Count(m => m.Replicas.Length != rf || m.Replicas.Select(r => r.Target).Distinct().Count() != rf));
    }

    /// <summary>Bytes the chunk maps refer to on every target: what the allocators must have in use.</summary>
    public static long MappedBytes(Pool pool)
    {
        lock (pool.Meta.Sync)
            return pool.Meta.Images.Values.Sum(i => i.Chunks.Values.Sum(m => (long)m.Replicas.Length * m.ExtentLength(i.ChunkSize)));
    }

    public static long UsedBytes(Pool pool) => pool.Query().Targets.Sum(t => t.UsedBytes);
}
