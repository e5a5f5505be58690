using Strata.Engine.Layout;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>
/// The action of layout 4 (<c>placement_v2</c>): chunks whose replicas are not on the targets
/// placement v2 names are copied there through the migration loop, verified, switched, and their
/// old extents freed; replicas already on one of their new targets stay. From the moment the job
/// reaches it, client writes place new replicas with placement v2 (Pool.Placement: a data-movement
/// feature's layout placement applies from then on), and the
/// layout switch to 4 makes it the pool's placement. The free-space precondition is each
/// target's net growth plus room for the copies in flight (MigrationAction.Estimate). Targets
/// excluded before or during the job get nothing, and chunks with no copy left stay (SurvivorMove).
/// </summary>
internal static class PlacementV2Action
{
    public static readonly IUpgradeAction Instance =
        new MigrationAction(pool => new SurvivorMove(pool, new PlacementMove(new Pools.CurrentlyExcluding(pool, PlacementV2.Instance), pool.TargetCount)));
}
