using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Store.Tests;

[TestClass]
public sealed class BadInputTests
{
    private static async Task<(StorageEngine, Pool, MemoryBlockDevice[])> PoolAsync(long size = 4L * 1024 * 1024, int rf = 1)
    {
        var devs = TestDevices.Memory(2);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", size, rf, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        return (engine, pool, devs);
    }

    [TestMethod]
    public async Task Write_PastImageEnd_RejectedNamingImageAndSize()
    {
        var (_, pool, _) = await PoolAsync();
        var img = await pool.CreateImageAsync("c", "v", 10_000, 4096);
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => img.WriteAsync(9_000, new byte[2_000]).AsTask());
        StringAssert.Contains(e.Message, "past the end of image 'v' in pool 'tank' (10000 bytes)");
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => img.ReadAsync(-1, new byte[1]).AsTask());
    }

    [TestMethod]
    public async Task Write_PoolFull_NoSpaceErrorAndAcknowledgedDataKept()
    {
        var (engine, pool, devs) = await PoolAsync(size: 512 * 1024);
        var img = await pool.CreateImageAsync("c", "v", 4L * 1024 * 1024, 4096);
        var acked = new List<int>();
        NoSpaceException? full = null;
        for (int i = 0; i < 1024 && full == null; i++)
        {
            try
            {
                await img.WriteAsync(i * 4096L, TestDevices.Pattern(4096, i));
                acked.Add(i);
            }
            catch (NoSpaceException e)
            {
                full = e;
            }
        }
        Assert.IsNotNull(full);
        Assert.AreEqual(Errno.ENOSPC, full.Errno);
        StringAssert.Contains(full.Message, "no space left in pool 'tank'");
        Assert.AreEqual(PoolStatus.Ready, pool.State);
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        var img2 = (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v");
        foreach (int i in acked)
        {
            var b = new byte[4096];
            await img2.ReadAsync(i * 4096L, b);
            CollectionAssert.AreEqual(TestDevices.Pattern(4096, i), b);
        }
        // Trimming returns space: writes work again.
        await img2.TrimAsync(0, 64 * 1024);
        await img2.WriteAsync(0, new byte[4096]);
    }

    /// <summary>
    /// A write of many chunks that needs more than the pool has left: ENOSPC, not an endless retry
    /// (the extents it took before it ran out count as space coming back, so it tries again a bounded
    /// number of times); it keeps none of them, and the data already written stays.
    /// </summary>
    [TestMethod]
    public async Task Write_ManyChunksPoolFull_NoSpaceErrorNothingKept()
    {
        var (engine, pool, _) = await PoolAsync(size: 256 * 1024);
        var img = await pool.CreateImageAsync("c", "v", 1L << 20, 4096);
        var first = TestDevices.Pattern(128 * 1024, 1);
        await img.WriteAsync(0, first);
        long free = pool.Query().Targets.Sum(t => t.FreeBytes);
        Assert.AreEqual(128 * 1024, free);
        var full = await Assert.ThrowsExactlyAsync<NoSpaceException>(() => img.WriteAsync(128 * 1024, new byte[192 * 1024]).AsTask());
        Assert.AreEqual(Errno.ENOSPC, full.Errno);
        StringAssert.Contains(full.Message, "no space left in pool 'tank'");
        Assert.AreEqual(free, pool.Query().Targets.Sum(t => t.FreeBytes), "the failed write kept extents");
        var back = new byte[first.Length];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(first, back);
        await engine.DisposeAsync();
    }

    [TestMethod]
    public async Task Create_DuplicateLabels_Rejected()
    {
        var (engine, pool, _) = await PoolAsync();
        await pool.CreateImageAsync("c", "v", 4096);
        await Assert.ThrowsExactlyAsync<DuplicateLabelException>(() => engine.CreatePoolAsync("tank", 1 << 20));
        await Assert.ThrowsExactlyAsync<DuplicateLabelException>(() => pool.CreateContainerAsync("c"));
        var e = await Assert.ThrowsExactlyAsync<DuplicateLabelException>(() => pool.CreateImageAsync("c", "v", 4096));
        StringAssert.Contains(e.Message, "already has an image 'v'");
    }

    [TestMethod]
    [DataRow("")]
    [DataRow("-x")]
    [DataRow("a b")]
    [DataRow("a/b")]
    [DataRow("x123456789012345678901234567890123456789012345678901234567890123")]
    public async Task Create_InvalidLabel_Rejected(string label)
    {
        var (engine, pool, _) = await PoolAsync();
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.CreatePoolAsync(label, 1 << 20));
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.CreateContainerAsync(label));
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => pool.CreateImageAsync("c", label, 4096));
    }

    [TestMethod]
    public async Task Lookup_UnknownPoolContainerImage_NotFound()
    {
        var (engine, pool, _) = await PoolAsync();
        var e = await Assert.ThrowsExactlyAsync<NotFoundException>(() => engine.OpenPoolAsync("nope"));
        Assert.AreEqual("no pool 'nope'", e.Message);
        Assert.ThrowsExactly<NotFoundException>(() => pool.OpenImage("c", "nope"));
        Assert.ThrowsExactly<NotFoundException>(() => pool.OpenImage("nope", "v"));
        Assert.ThrowsExactly<NotFoundException>(() => pool.GetProperty("nope"));
        await Assert.ThrowsExactlyAsync<NotFoundException>(() => engine.DestroyPoolAsync("nope"));
    }

    [TestMethod]
    public async Task Create_BadRfOrSize_Rejected()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.CreatePoolAsync("a", 1 << 20, 3));
        var e = await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.CreatePoolAsync("a", 1 << 20, 2));
        StringAssert.Contains(e.Message, "needs at least 2 targets");
        await Assert.ThrowsExactlyAsync<InvalidRequestException>(() => engine.CreatePoolAsync("a", 0));
        var big = await Assert.ThrowsExactlyAsync<NoSpaceException>(() => engine.CreatePoolAsync("a", 1L << 40));
        StringAssert.Contains(big.Message, "no space left for pool 'a'");
    }

    [TestMethod]
    public async Task OpenEngine_WrongDevice_RefusedNamingIt()
    {
        var devs = TestDevices.Memory(2);
        await TestDevices.FormatAsync(devs);
        var blank = new MemoryBlockDevice("blank", TestDevices.TargetSize);
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(async () => await TestDevices.OpenAsync([devs[0], blank]));
        StringAssert.Contains(e.Message, "device 'blank' is not a Strata target");
        var other = TestDevices.Memory(2);
        await TestDevices.FormatAsync(other);
        var mixed = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(async () => await TestDevices.OpenAsync([devs[0], other[1]]));
        StringAssert.Contains(mixed.Message, "wrong device?");
        var missing = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(async () => await TestDevices.OpenAsync([devs[0]]));
        StringAssert.Contains(missing.Message, "target 0 of 2, but 1 devices were given");
    }

    [TestMethod]
    public async Task OpenEngine_TruncatedDevice_RefusedNamingSizes()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        await engine.CreatePoolAsync("tank", 1 << 20, 1, TestDevices.SmallPool);
        var small = new MemoryBlockDevice("short", TestDevices.TargetSize / 2);
        var bytes = new byte[small.Geometry.Capacity];
        devs[0].ReadBytes(0, bytes);
        small.WriteBytes(0, bytes);
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(async () => await TestDevices.OpenAsync([small]));
        StringAssert.Contains(e.Message, "device 'short' is truncated");
    }

    [TestMethod]
    public async Task DestroyPool_ThenCreate_SpaceReusedAndOldPoolGone()
    {
        var (engine, pool, devs) = await PoolAsync();
        await Assert.ThrowsExactlyAsync<BusyException>(() => engine.DestroyPoolAsync("tank"));
        await pool.DisposeAsync();
        await engine.DestroyPoolAsync("tank");
        Assert.AreEqual(0, engine.ListPools().Count);
        var again = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        Assert.AreEqual(0, again.ListContainers().Count);
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(again.Id, engine2.ListPools().Single().Id);
    }
}

[TestClass]
public sealed class FormatTests
{
    [TestMethod]
    public async Task Format_DeviceAlreadyATarget_RefusedUnlessForced()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        await engine.CreatePoolAsync("tank", 1 << 20, 1, TestDevices.SmallPool);
        var e = await Assert.ThrowsExactlyAsync<BusyException>(() => StorageEngine.FormatAsync(devs));
        StringAssert.Contains(e.Message, "device 'mem0' already is target 0");
        StringAssert.Contains(e.Message, "1 pool shard(s)");
        var fresh = await StorageEngine.FormatAsync(devs, force: true);
        Assert.AreEqual(0, fresh.ListPools().Count);
        var (reopened, _) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(0, reopened.ListPools().Count);
    }
}

[TestClass]
public sealed class MetadataRoomTests
{
    [TestMethod]
    public async Task CreateImages_MetadataAreaFull_NoSpaceAndPoolStillOpens()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 1L << 20, 1, TestDevices.SmallPool with { MinChunkSize = 16384 });
        await pool.CreateContainerAsync("c");
        // Fill the data area: chunk maps have their own reserve and must not eat the metadata room.
        // 48 chunks of 16 KiB, each with its 4 KiB block table (layout 3): 960 KiB of the 1 MiB.
        var img = await pool.CreateImageAsync("c", "data", 1L << 20, 16384);
        for (int i = 0; i < 48; i++)
            await img.WriteAsync(i * 16384L, TestDevices.Pattern(100, i));
        NoSpaceException? full = null;
        int created = 0;
        for (; created < 5000 && full == null; created++)
        {
            try
            {
                await pool.CreateImageAsync("c", $"image-{created:D5}", 4096);
            }
            catch (NoSpaceException e)
            {
                full = e;
            }
        }
        Assert.IsNotNull(full, "metadata never ran out");
        Assert.IsTrue(created > 100, $"only {created} images fit");
        StringAssert.Contains(full.Message, "no space left in pool 'tank' for more metadata");
        Assert.AreEqual(PoolStatus.Ready, pool.State);
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        var pool2 = await engine2.OpenPoolAsync("tank");
        Assert.AreEqual(created, pool2.ListImages("c").Count);
    }
}
