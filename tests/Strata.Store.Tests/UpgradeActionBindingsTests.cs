using Strata.Engine.Layout;
using Strata.Engine.Migration;

namespace Strata.Store.Tests;

/// <summary>The catalog declares features; Migration.UpgradeActionBindings gives the job their actions.</summary>
[TestClass]
public sealed class UpgradeActionBindingsTests
{
    [TestMethod]
    public void DefaultBindings_EveryFeatureAboveLayout1_HasAnActionOfItsAccess()
    {
        var cat = LayoutCatalog.Default;
        foreach (var f in cat.Versions.Where(v => v.Version > 1).SelectMany(v => v.Features))
        {
            Assert.IsNull(f.Action, $"{f.Name}: the default catalog binds no action itself (Layout references nothing above it)");
            var action = UpgradeActionBindings.Default.For(f);
            Assert.IsNotNull(action, f.Name);
            Assert.AreEqual(f.Access, action.Access, $"{f.Name}: the action's access matches its kind ({f.Kind})");
        }
        Assert.IsInstanceOfType<MigrationAction>(UpgradeActionBindings.Default.For(cat.Find("placement_v2")!));
        Assert.IsInstanceOfType<MigrationAction>(UpgradeActionBindings.Default.For(cat.Find("block_checksums")!));
        Assert.AreSame(WalV2Action.Instance, UpgradeActionBindings.Default.For(cat.Find(LayoutCatalog.WalV2Feature)!));
        Assert.IsNull(UpgradeActionBindings.Default.For(cat.Find("base")!), "layout 1 has nothing to run");
    }

    [TestMethod]
    public void For_UnboundFeatureAboveLayout1_ThrowsNamingIt()
    {
        var typo = new LayoutFeature("placement_v3", 4, FeatureClass.Incompat, 3, ActionKind.DataMovement, "a misspelt feature", null);
        var e = Assert.ThrowsExactly<InvalidOperationException>(() => UpgradeActionBindings.Default.For(typo));
        Assert.AreEqual("layout feature 'placement_v3' (layout 4) has no upgrade action in this build", e.Message);
    }
}
