using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class IntegrityTests
{
    [TestMethod]
    public async Task Read_OneReplicaCorrupt_ReturnsGoodBytesRepairsAndReports()
    {
        var devs = TestDevices.Memory(3);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        // One CRC per chunk (layout 2); BlockChecksumTests covers the same at layout 3, block by block.
        var pool = await engine.CreatePoolAsync("tank", 6L * 1024 * 1024, 2, TestDevices.SmallPool with { LayoutVersion = 2 });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 64 * 1024, 16384);
        var data = TestDevices.Pattern(64 * 1024, 5);
        await img.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, img, 1);
        Assert.AreEqual(2, where.Length);
        Assert.AreNotEqual(where[0].Target, where[1].Target, "rf=2 replicas must be on distinct targets");
        TestHelpers.FlipByte(where[0].Device, where[0].Offset + 777);

        var back = new byte[64 * 1024];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
        var mismatch = ras.WithId(RasIds.DataChecksumMismatch).Single();
        Assert.AreEqual(16384L, mismatch.Offset);
        Assert.AreEqual(where[0].Target, mismatch.Target);
        Assert.AreEqual(where[0].Target, ras.WithId(RasIds.ReplicaRepaired).Single().Target);
        var repaired = new byte[16384];
        where[0].Device.ReadBytes(where[0].Offset, repaired);
        CollectionAssert.AreEqual(data[16384..32768], repaired);
    }

    [TestMethod]
    public async Task Read_NoGoodCopy_FailsNamingPoolImageOffset()
    {
        var devs = TestDevices.Memory(2);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 64 * 1024, 16384);
        await img.WriteAsync(0, TestDevices.Pattern(64 * 1024, 5));
        var where = TestHelpers.ReplicaLocations(pool, img, 2).Single();
        TestHelpers.FlipByte(where.Device, where.Offset + 5);
        var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.ReadAsync(40_000, new byte[100]).AsTask());
        StringAssert.Contains(e.Message, "pool 'tank', image 'v' at offset 32768");
        Assert.AreEqual(32768L, e.Offset);
        Assert.AreEqual(Interop.Errno.EILSEQ, e.Errno);
        Assert.IsTrue(ras.WithId(RasIds.DataUnrecoverable).Any());
        // A partial write into the damaged chunk must not launder the bad bytes either.
        await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.WriteAsync(40_000, new byte[10]).AsTask());
        // Other chunks still read.
        var ok = new byte[16384];
        await img.ReadAsync(0, ok);
        CollectionAssert.AreEqual(TestDevices.Pattern(64 * 1024, 5)[..16384], ok);
    }

    [TestMethod]
    public async Task Image_ThinAndTrim_UnwrittenReadsZeroAndTrimFreesSpace()
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 1L << 30, 16384);
        Assert.AreEqual(0L, pool.Query().Targets.Sum(t => t.UsedBytes));
        await img.WriteAsync(100_000, TestDevices.Pattern(50_000, 1));
        long used = pool.Query().Targets.Sum(t => t.UsedBytes);
        // Layout 3: each 16 KiB chunk's extent carries its 4 KiB block table.
        Assert.AreEqual(4 * (16384L + 4096), used);
        await img.TrimAsync(98_304, 32768);
        Assert.AreEqual(2 * (16384L + 4096), pool.Query().Targets.Sum(t => t.UsedBytes));
        await img.TrimAsync(140_000, 5);
        var back = new byte[60_000];
        await img.ReadAsync(90_000, back);
        var expect = new byte[60_000];
        TestDevices.Pattern(50_000, 1).CopyTo(expect, 10_000);
        Array.Clear(expect, 8_304, 32768 - 8_304 + 0);
        Array.Clear(expect, 0, 131_072 - 90_000);
        Array.Clear(expect, 50_000, 5);
        CollectionAssert.AreEqual(expect, back);
    }

    [TestMethod]
    [DataRow(1000, 4000, DisplayName = "ends of two chunks")]
    [DataRow(0, 4096, DisplayName = "one whole chunk")]
    [DataRow(100, 20_000, DisplayName = "head, whole chunks, tail")]
    [DataRow(5000, 15_000, DisplayName = "through the image end")]
    public async Task Trim_AnyRange_ZeroesExactlyThatRange(int offset, int length)
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 2L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 20_000, 4096);
        var data = TestDevices.Pattern(20_000, 4);
        await img.WriteAsync(0, data);
        length = Math.Min(length, 20_000 - offset);
        await img.TrimAsync(offset, length);
        Array.Clear(data, offset, length);
        var back = new byte[20_000];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        await (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
    }

    [TestMethod]
    public async Task Resize_ShrinkThenGrow_TailReadsZero()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 2L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 100_000, 16384);
        await img.WriteAsync(0, TestDevices.Pattern(100_000, 2));
        await img.ResizeAsync(20_000, allowShrink: true);
        Assert.AreEqual(2 * (16384L + 4096), pool.Query().Targets.Sum(t => t.UsedBytes), "two 16 KiB chunks, each with its block table");
        await img.ResizeAsync(100_000);
        var back = new byte[100_000];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(TestDevices.Pattern(100_000, 2)[..20_000], back[..20_000]);
        CollectionAssert.AreEqual(new byte[80_000], back[20_000..]);
        Assert.AreEqual("100000", img.GetProperty("size"));
    }
}
