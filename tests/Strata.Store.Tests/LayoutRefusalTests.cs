using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class LayoutRefusalTests
{
    private static async Task<Engine.Device.MemoryBlockDevice[]> PoolWithDataAsync(uint layout = 0)
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 65536, 4096);
        await img.WriteAsync(0, TestDevices.Pattern(65536, 7));
        await engine.DisposeAsync();
        return devs;
    }

    [TestMethod]
    public async Task OpenPool_FutureLayoutAndUnknownIncompat_RefusedNamingVersionsAndNothingWritten()
    {
        var devs = await PoolWithDataAsync();
        await TestHelpers.RewriteShardHeadersAsync(devs, h => h with { LayoutVersion = 99, Incompat = h.Incompat | (1UL << 40) });
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(99u, engine.ListPools().Single().LayoutVersion);
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => engine.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "pool 'tank' shard on target 0 has layout version 99, this engine supports layout versions 1..6");
        StringAssert.Contains(e.Message, "bit 40");
        StringAssert.Contains(e.Message, "nothing was written");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, ras.Events.Single().Id);
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task OpenPool_IncompatBitOfANewerLayout_RefusedByTheOlderRelease()
    {
        var devs = await PoolWithDataAsync(layout: 3);
        await TestHelpers.RewriteShardHeadersAsync(devs, h => h with { Incompat = h.Incompat | LayoutCatalog.Default.Find("placement_v2")!.Mask });
        string before = TestHelpers.Sha256(devs);
        // Release strata-1.2 (layouts 1..3) does not know placement_v2.
        var engine = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Catalog = LayoutCatalog.Default.Truncate(3) });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => engine.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "unknown incompat features 0x8 (placement_v2 (layout 4))");
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task OpenPool_UnknownRoCompatBit_OpensReadOnlyWithoutWriting()
    {
        var devs = await PoolWithDataAsync();
        await TestHelpers.RewriteShardHeadersAsync(devs, h => h with { RoCompat = 1UL << 5 });
        string before = TestHelpers.Sha256(devs);
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(PoolStatus.ReadOnly, pool.State);
        var img = pool.OpenImage("c", "v");
        var back = new byte[65536];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(TestDevices.Pattern(65536, 7), back);
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => img.WriteAsync(0, new byte[10]).AsTask());
        Assert.IsTrue(ras.WithId(RasIds.PoolReadOnly).Any());
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task OpenPool_UnknownCompatBit_OpensNormally()
    {
        var devs = await PoolWithDataAsync();
        await TestHelpers.RewriteShardHeadersAsync(devs, h => h with { Compat = 1UL << 9 });
        var (engine, _) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(PoolStatus.Ready, pool.State);
        await pool.OpenImage("c", "v").WriteAsync(1, new byte[] { 1 });
    }

    [TestMethod]
    public async Task CreatePool_New_RecordsNewestLayoutAndItsFeatureWords()
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        var q = pool.Query();
        Assert.AreEqual(6u, q.LayoutVersion);
        Assert.AreEqual(0x3FUL, q.Incompat, "base, container_compression, block_checksums, placement_v2, wal_v2 and deferred_writes");
        Assert.AreEqual(0x1UL, q.Compat, "pool_props_v2");
        Assert.AreEqual(0UL, q.RoCompat);
        Assert.AreEqual("6", pool.GetProperty("layout_version"));
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.SetPropertyAsync("layout_version", "2"));
    }

    [TestMethod]
    public async Task CreatePool_Layout1_RecordsLayout1AndItsFeatureWords()
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = 1 });
        var q = pool.Query();
        Assert.AreEqual(1u, q.LayoutVersion);
        Assert.AreEqual(0x1UL, q.Incompat);
        Assert.AreEqual(0UL, q.Compat);
        Assert.AreEqual("1", pool.GetProperty("layout_version"));
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.CreatePoolAsync("t4", 4L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = 7 }));
    }
}
