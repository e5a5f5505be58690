using Strata.Engine.Layout;

namespace Strata.Engine.Migration;

/// <summary>
/// Binds the catalog's features to their actions. The catalog (Layout) declares features by
/// name, version, class and kind and references nothing else in the engine; the actions of the
/// data-moving features live here in Migration, above Pools and Store, so the binding is made here,
/// where both are visible, and handed to the job (StorageEngineOptions.Actions). An explicit list,
/// not discovery: a feature of a supported version with no action refuses the job instead of being
/// skipped (UpgradeActionBindingsTests checks the default catalog is fully bound).
/// </summary>
public sealed class UpgradeActionBindings
{
    private readonly IReadOnlyDictionary<string, IUpgradeAction> _byName;

    public UpgradeActionBindings(IReadOnlyDictionary<string, IUpgradeAction> byName) => _byName = byName;

    /// <summary>This build's actions, by feature name.</summary>
    public static UpgradeActionBindings Default { get; } = new(new Dictionary<string, IUpgradeAction>(StringComparer.Ordinal)
    {
        ["pool_props_v2"] = PoolPropsV2Action.Instance,
        ["container_compression"] = NoDataAction.Instance,
        [BlockChecksumsFeature] = BlockTableRewrite.Action,
        [PlacementV2Feature] = PlacementV2Action.Instance,
        [LayoutCatalog.WalV2Feature] = WalV2Action.Instance,
        // Layout 6: nothing on disk is rewritten; from the switch on, writers may log ChunkDeferred records.
        [LayoutCatalog.DeferredWritesFeature] = NoDataAction.Instance,
    });

    public const string BlockChecksumsFeature = "block_checksums";

    public const string PlacementV2Feature = "placement_v2";

    /// <summary>
    /// The action of a feature: the one a catalog bound itself (test catalogs do), else this
    /// registry's; null only for the base feature of layout 1, which has nothing to run.
    /// </summary>
    public IUpgradeAction? For(LayoutFeature feature)
    {
        if (feature.Action != null)
            return feature.Action;
        if (_byName.TryGetValue(feature.Name, out var action))
            return action;
        if (feature.Version == LayoutCatalog.MinSupported)
            return null;
        throw new InvalidOperationException($"layout feature '{feature.Name}' (layout {feature.Version}) has no upgrade action in this build");
    }
}
