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
        if (which == "layout4")
        {
            GoldenFixtures.Save(Path.Combine(GoldenFixtures.SourceDirectory(), GoldenFixtures.Layout4), await GoldenFixtures.BuildLayout4Async());
            return;
        }
        if (which == "layout5")
        {
            GoldenFixtures.Save(Path.Combine(GoldenFixtures.SourceDirectory(), GoldenFixtures.Layout5), await GoldenFixtures.BuildLayout5Async());
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
            var devs5 = await GoldenFixtures.BuildLayout5Async();
            var engine5 = await StorageEngine.OpenAsync(devs5);
            await GoldenFixtures.VerifyLayout5Async(await engine5.OpenPoolAsync("golden"));
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
            "pool 'golden' shard on target 0 has layout version 99, this engine supports layout versions 1..6 (incompatible layout version: 99 larger than 6) and unknown incompat features 0x10000000000 (bit 40); refusing to open (nothing was written)",
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

    [TestMethod]
    [DataRow(GoldenFixtures.Layout4, 4u)]
    [DataRow(GoldenFixtures.Layout5, 5u)]
    public async Task GoldenLayout4And5_OpenReadOnly_ContentVerifiedAndNoByteChanged(string fixture, uint layout)
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(fixture));
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs, readOnly: true);
        Assert.AreEqual(layout, engine.ListPools().Single().LayoutVersion);
        var pool = await engine.OpenPoolAsync("golden");
        Assert.IsTrue(pool.ReplayedRecords > 0, "the fixture keeps its last records in the log, so opening it replays them");
        if (layout == 5)
            await GoldenFixtures.VerifyLayout5Async(pool);
        else
            await GoldenFixtures.VerifyLayout4Async(pool);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    [DataRow(GoldenFixtures.Layout1, 1u)]
    [DataRow(GoldenFixtures.Layout2, 2u)]
    [DataRow(GoldenFixtures.Layout3, 3u)]
    public async Task GoldenLayout1To3_UpgradedTo5_DataIntactMovedAndLogInV2(string fixture, uint layout)
    {
        var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(fixture));
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        Assert.AreEqual(layout, pool.LayoutVersion);
        var before = await UpgradeTests.ImageHashesAsync(pool);
        var plan = await pool.UpgradeAsync(5, dryRun: false);
        // Layout 1 crosses all five actions; 2 the three data ones; 3 placement_v2 and wal_v2.
        CollectionAssert.AreEqual(new[] { "pool_props_v2", "container_compression", "block_checksums", "placement_v2", "wal_v2" }.Skip(layout switch { 1 => 0, 2 => 2, _ => 3 }).ToArray(),
            plan.Actions.Select(a => a.Feature).ToArray());
        await pool.WaitForUpgradeAsync();
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        await Verify(pool);
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));
        await engine.DisposeAsync();
        var (again, _) = await TestDevices.OpenAsync(devs);
        await Verify(await again.OpenPoolAsync("golden"));

        async Task Verify(Pool p)
        {
            Assert.AreEqual(5u, p.LayoutVersion);
            Assert.AreEqual(WalFormatV2.Format, p.Log.Format);
            Assert.AreEqual(0, BlockChecksumUpgradeTests.WithoutTable(p));
            Assert.AreEqual(0, MigrationKit.Misplaced(p, PlacementV2.Instance));
            if (layout == 3)
                await GoldenFixtures.VerifyLayout3Async(p, layout: 5);
            else if (layout == 2)
                await GoldenFixtures.VerifyLayout2Async(p, layout: 5);
            else
                await GoldenFixtures.VerifyLayout1Async(p, layout: 5);
            CollectionAssert.AreEquivalent(before.ToList(), (await UpgradeTests.ImageHashesAsync(p)).ToList());
        }
    }

    /// <summary>
    /// `--max-layout N` plays release strata-1.(N-1): it refuses every fixture beyond N with the RAS
    /// event and without changing a byte, and opens (and replays) every fixture it knows.
    /// </summary>
    [TestMethod]
    [DataRow(2u)]
    [DataRow(3u)]
    [DataRow(4u)]
    public async Task OlderRelease_MaxLayoutN_RefusesFixturesBeyondUnchangedOpensThoseItKnows(uint n)
    {
        var release = Engine.Layout.LayoutCatalog.Default.Truncate(n);
        string[] fixtures = [GoldenFixtures.Layout1, GoldenFixtures.Layout2, GoldenFixtures.Layout3, GoldenFixtures.Layout4, GoldenFixtures.Layout5];
        for (uint layout = 1; layout <= 5; layout++)
        {
            var devs = GoldenFixtures.Load(GoldenFixtures.PathOf(fixtures[layout - 1]));
            string before = TestHelpers.Sha256(devs);
            var ras = new InMemoryRasSink();
            var engine = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = release });
            if (layout > n)
            {
                Assert.AreEqual("incompatible layout", engine.ListPools().Single().State, $"layout {layout}");
                var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => engine.OpenPoolAsync("golden"));
                StringAssert.Contains(e.Message, $"incompatible layout version: {layout} larger than {n}");
                var first = Engine.Layout.LayoutCatalog.Default[n + 1].Features[0];
                StringAssert.Contains(e.Message, $"{first.Name} (layout {n + 1})");
                Assert.AreEqual(RasIds.PoolLayoutIncompatible, ras.Events.Single().Id, $"layout {layout}");
                await engine.DisposeAsync();
                Assert.AreEqual(before, TestHelpers.Sha256(devs), $"release {n} wrote nothing to the layout-{layout} pool");
                continue;
            }
            var pool = await engine.OpenPoolAsync("golden");
            Assert.IsGreaterThan(0, pool.ReplayedRecords, $"layout {layout}");
            await (layout switch
            {
                1 => GoldenFixtures.VerifyLayout1Async(pool),
                2 => GoldenFixtures.VerifyLayout2Async(pool),
                3 => GoldenFixtures.VerifyLayout3Async(pool),
                _ => GoldenFixtures.VerifyLayout4Async(pool),
            });
            Assert.IsFalse(ras.Events.Any(e => e.Id == RasIds.PoolLayoutIncompatible), $"layout {layout}");
            await engine.DisposeAsync();
        }
    }
}
