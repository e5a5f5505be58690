using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class PoolApiTests
{
    [TestMethod]
    public async Task Image_WriteReadAnyOffset_ReturnsWrittenBytes()
    {
        var devs = TestDevices.Memory(3);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 2, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c1");
        var img = await pool.CreateImageAsync("c1", "vol", 1_000_000, 16384);
        var data = TestDevices.Pattern(50_000, 1);
        await img.WriteAsync(12_345, data);
        var back = new byte[60_000];
        await img.ReadAsync(10_000, back);
        CollectionAssert.AreEqual(new byte[2_345], back[..2_345]);
        CollectionAssert.AreEqual(data, back[2_345..52_345]);
        CollectionAssert.AreEqual(new byte[60_000 - 52_345], back[52_345..]);
    }

    [TestMethod]
    public async Task Pool_Reopen_ReplaysMetadataAndData()
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c1");
        var img = await pool.CreateImageAsync("c1", "vol", 4 * 1024 * 1024, 4096);
        for (int i = 0; i < 200; i++)
            await img.WriteAsync(i * 8192L, TestDevices.Pattern(4096, i));
        await pool.SetPropertyAsync("label", "tank2");
        await engine.DisposeAsync();

        var (engine2, _) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual("tank2", engine2.ListPools().Single().Label);
        var pool2 = await engine2.OpenPoolAsync("tank2");
        var img2 = pool2.OpenImage("c1", "vol");
        for (int i = 0; i < 200; i++)
        {
            var b = new byte[4096];
            await img2.ReadAsync(i * 8192L, b);
            CollectionAssert.AreEqual(TestDevices.Pattern(4096, i), b, $"block {i}");
        }
    }
}
