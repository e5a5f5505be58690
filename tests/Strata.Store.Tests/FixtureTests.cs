using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class FixtureTests
{
    [TestMethod]
    public async Task Fixtures_Regenerate_WhenAsked()
    {
        string? which = Environment.GetEnvironmentVariable("STRATA_WRITE_FIXTURES");
        if (which == "layout2")
        {
            // A shipped layout's image is never regenerated; this writes only the layout-2 one.
            GoldenFixtures.Save(Path.Combine(GoldenFixtures.SourceDirectory(), GoldenFixtures.Layout2), await GoldenFixtures.BuildLayout2Async());
            return;
        }
        if (which == "layout3")
        {
            GoldenFixtures.Save(Path.Combine(GoldenFixtures.SourceDirectory(), GoldenFixtures.Layout3), await GoldenFixtures.BuildLayout3Async());
            return;
        }
        if (which != "1")
        {
            // The builders must still produce pools the verifiers accept, so the two never drift apart.
            var devs = await GoldenFixtures.BuildLayout1Async();
            var engine = await StorageEngine.OpenAsync(devs);
            await GoldenFixtures.VerifyLayout1Async(await engine.OpenPoolAsync("golden"));
            var devs2 = await GoldenFixtures.BuildLayout2Async();
            var engine2 = await StorageEngine.OpenAsync(devs2);
            await GoldenFixtures.VerifyLayout2Async(await engine2.OpenPoolAsync("golden"));
            var devs3 = await GoldenFixtures.BuildLayout3Async();
            var engine3 = await StorageEngine.OpenAsync(devs3);
            await GoldenFixtures.VerifyLayout3Async(await engine3.OpenPoolAsync("golden"));
            return;
        }
        string dir = GoldenFixtures.SourceDirectory();
        var golden = await GoldenFixtures.BuildLayout1Async();
        GoldenFixtures.Save(Path.Combine(dir, GoldenFixtures.Layout1), golden);
        var future = await GoldenFixtures.BuildLayout1Async();
        await TestHelpers.RewriteShardHeadersAsync(future, h => h with { LayoutVersion = 99, Incompat = h.Incompat | GoldenFixtures.FutureIncompatBit });
        GoldenFixtures.Save(Path.Combine(dir, GoldenFixtures.Future), future);
    }

    [TestMethod]
    public async Task GoldenLayout1_OpenReadOnly_ContentVerifiedAndNoByteChanged()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Layout1));
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs, readOnly: true);
        var info = engine.ListPools().Single();
        Assert.AreEqual(("golden", 1u), (info.Label, info.LayoutVersion));
        var pool = await engine.OpenPoolAsync("golden");
        Assert.IsTrue(pool.ReplayedRecords > 0, "the fixture keeps its last records in the log, so opening it exercises replay");
        await GoldenFixtures.VerifyLayout1Async(pool);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task GoldenLayout1_OpenWritable_ReplaysAndKeepsWorking()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Layout1));
        var (engine, _) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        await GoldenFixtures.VerifyLayout1Async(pool);
        var d0 = pool.OpenImage("alpha", "disk0");
        await d0.WriteAsync(199_000, new byte[1000]);
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        var b = new byte[10];
        await (await engine2.OpenPoolAsync("golden")).OpenImage("alpha", "disk0").ReadAsync(0, b);
        CollectionAssert.AreEqual(GoldenFixtures.Content(10, 1), b);
    }

    [TestMethod]
    public async Task GoldenLayout1_UpgradedTo2_DataIntactAndLayout2FeaturesAvailable()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Layout1));
        var (engine, _) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        var before = await UpgradeTests.ImageHashesAsync(pool);
        await pool.UpgradeAsync(2, dryRun: false);
        await pool.WaitForUpgradeAsync();
        await GoldenFixtures.VerifyLayout1Async(pool, layout: 2);
        CollectionAssert.AreEquivalent(before.ToList(), (await UpgradeTests.ImageHashesAsync(pool)).ToList());
        await pool.CreateContainerAsync("gamma");
        await pool.SetContainerPropertyAsync("gamma", "compression", "on");
        await engine.DisposeAsync();
        var (again, _) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(2u, (await again.OpenPoolAsync("golden")).LayoutVersion);
    }

    [TestMethod]
    public async Task GoldenLayout2_OpenReadOnly_ContentVerifiedAndNoByteChanged_OlderReleaseRefuses()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Layout2));
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs, readOnly: true);
        Assert.AreEqual(2u, engine.ListPools().Single().LayoutVersion);
        var pool = await engine.OpenPoolAsync("golden");
        Assert.IsTrue(pool.ReplayedRecords > 0);
        await GoldenFixtures.VerifyLayout2Async(pool);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
        Assert.AreEqual(before, TestHelpers.Sha256(devs));

        var oldRas = new InMemoryRasSink();
        var old = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = oldRas, Catalog = Engine.Layout.LayoutCatalog.Default.Truncate(1) });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => old.OpenPoolAsync("golden"));
        StringAssert.Contains(e.Message, "incompatible layout version: 2 larger than 1");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, oldRas.Events.Single().Id);
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task FutureLayout99_Open_RefusedAndDeviceBytesUnchanged()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Future));
        string before = TestHelpers.Sha256(devs);
        var (roEngine, _) = await TestDevices.OpenAsync(devs, readOnly: true);
        await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => roEngine.OpenPoolAsync("golden"));
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(99u, engine.ListPools().Single().LayoutVersion);
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => engine.OpenPoolAsync("golden"));
        Assert.AreEqual(
            "pool 'golden' shard on target 0 has layout version 99, this engine supports layout versions 1..5 (incompatible layout version: 99 larger than 5) and unknown incompat features 0x10000000000 (bit 40); refusing to open (nothing was written)",
            e.Message);
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, ras.Events.Single().Id);
        Assert.AreEqual("incompatible layout", engine.ListPools().Single().State);
        await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => engine.OpenPoolAsync("golden"));
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    [DataRow(GoldenFixtures.Layout1, 1u)]
    [DataRow(GoldenFixtures.Layout2, 2u)]
    public async Task GoldenLayout1And2_UpgradedTo3_DataIntactEveryChunkHasItsTable(string fixture, uint layout)
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(fixture));
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        Assert.AreEqual(layout, pool.LayoutVersion);
        var before = await UpgradeTests.ImageHashesAsync(pool);
        Assert.IsGreaterThan(0, BlockChecksumUpgradeTests.WithoutTable(pool));
        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual(0, BlockChecksumUpgradeTests.WithoutTable(pool));
        if (layout == 2)
            await GoldenFixtures.VerifyLayout2Async(pool, layout: 3);
        else
            await GoldenFixtures.VerifyLayout1Async(pool, layout: 3);
        CollectionAssert.AreEquivalent(before.ToList(), (await UpgradeTests.ImageHashesAsync(pool)).ToList());
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));
        await engine.DisposeAsync();
        var (again, _) = await TestDevices.OpenAsync(devs);
        var p = await again.OpenPoolAsync("golden");
        Assert.AreEqual(3u, p.LayoutVersion);
        CollectionAssert.AreEquivalent(before.ToList(), (await UpgradeTests.ImageHashesAsync(p)).ToList());
    }

    [TestMethod]
    public async Task GoldenLayout3_OpenReadOnly_ContentVerifiedAndNoByteChanged_Layout2ReleaseRefuses()
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(GoldenFixtures.Layout3));
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs, readOnly: true);
        Assert.AreEqual(3u, engine.ListPools().Single().LayoutVersion);
        var pool = await engine.OpenPoolAsync("golden");
        Assert.IsTrue(pool.ReplayedRecords > 0, "the fixture keeps its last records in the log, so opening it replays ChunkMapBlocks records");
        await GoldenFixtures.VerifyLayout3Async(pool);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
        Assert.AreEqual(before, TestHelpers.Sha256(devs));

        // --max-layout 2: the release before block checksums refuses the pool and writes nothing.
        var oldRas = new InMemoryRasSink();
        var old = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = oldRas, Catalog = Engine.Layout.LayoutCatalog.Default.Truncate(2) });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => old.OpenPoolAsync("golden"));
        StringAssert.Contains(e.Message, "incompatible layout version: 3 larger than 2");
        StringAssert.Contains(e.Message, "block_checksums (layout 3)");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, oldRas.Events.Single().Id);
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }
}
