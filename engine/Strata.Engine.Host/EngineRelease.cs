using Strata.Engine.Layout;

namespace Strata.Engine.Host;

/// <summary>
/// Which release this daemon plays: the build's own catalog, or (hidden --max-layout N) the
/// catalog of an older release that ends at N, so tests and rollback drills run "older
/// software" from the same binary. Set once from the command line before the engine starts.
/// </summary>
internal static class EngineRelease
{
    public static uint? MaxLayout { get; set; }

    public static TimeSpan UpgradeStepDelay { get; set; }

    public static int UpgradeHoldAtStep { get; set; }

    public static LayoutCatalog Catalog => MaxLayout is { } n ? LayoutCatalog.Default.Truncate(n) : LayoutCatalog.Default;
}
