using Strata.Engine.Device;

namespace Strata.Engine.Tests.Device;

[TestClass]
public sealed class DmaBufferPoolTests
{
    [TestMethod]
    public void Rent_OddLength_RoundsCapacityButExposesLength()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 1 << 20);
        using var b = pool.Rent(5000);
        Assert.AreEqual(5000, b.Length);
        Assert.AreEqual(8192, b.Capacity);
        Assert.AreEqual(5000, b.Memory.Length);
        unsafe { Assert.AreEqual(0L, (long)b.Pointer % 4096, "aligned"); }
    }

    [TestMethod]
    public void Rent_FromArena_StartsAtAMultipleOfItsSizeUpToAHugePage()
    {
        // The native allocator backs an arena with 2 MiB pages where it can (dma.c): a 1 MiB + 4 KiB
        // extent buffer carved after small ones must not straddle more page boundaries than it needs.
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 16 << 20);
        using var small = pool.Rent(4096);
        using var extent = pool.Rent((1 << 20) + 4096);
        using var medium = pool.Rent(64 << 10);
        unsafe
        {
            long arena = pool.Arena.Base;
            Assert.AreEqual(arena, (long)small.Pointer, "the first rental starts the arena");
            Assert.AreEqual(0L, ((long)extent.Pointer - arena) % (2 << 20), "a 2 MiB buffer starts on a 2 MiB boundary of the arena");
            Assert.IsTrue((long)extent.Pointer >= arena && (long)extent.Pointer + extent.Capacity <= arena + (16 << 20), "carved from the arena");
            Assert.AreEqual(0L, ((long)medium.Pointer - arena) % (64 << 10), "a 64 KiB buffer on a 64 KiB boundary");
        }
    }

    [TestMethod]
    public void Return_ThenRent_ReusesBufferAndCountsOutstanding()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 0);
        var a = pool.Rent(4096);
        Assert.AreEqual(1L, pool.OutstandingCount);
        Assert.AreEqual(4096L, pool.OutstandingBytes);
        unsafe
        {
            var p = (nint)a.Pointer;
            a.Dispose();
            Assert.AreEqual(0L, pool.OutstandingCount);
            using var again = pool.Rent(100);
            Assert.AreEqual(p, (nint)again.Pointer, "the freed buffer is reused");
        }
    }

    [TestMethod]
    public void DoubleDispose_ReturnsOnce()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 0);
        var a = pool.Rent(4096);
        a.Dispose();
        a.Dispose();
        Assert.AreEqual(0L, pool.OutstandingCount);
        var x = pool.Rent(4096);
        var y = pool.Rent(4096);
        Assert.AreNotSame(x, y, "a double dispose must not hand one buffer to two owners");
        x.Dispose();
        y.Dispose();
    }

    [TestMethod]
    public void UseAfterReturn_Throws()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 0);
        var a = pool.Rent(4096);
        a.Dispose();
        Assert.ThrowsExactly<ObjectDisposedException>(() => a.Span[0] = 1);
    }

    [TestMethod]
    public void Leak_IsReportedWithRentalSite()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "dev0", 4096, arenaBytes: 0) { TrackRentals = true };
        var leaked = pool.Rent(4096);
        var report = pool.DescribeOutstanding();
        Assert.AreEqual(1, report.Count);
        StringAssert.Contains(report[0], "dev0");
        StringAssert.Contains(report[0], nameof(Leak_IsReportedWithRentalSite));
        leaked.Dispose();
        Assert.AreEqual(0, pool.DescribeOutstanding().Count);
    }

    [TestMethod]
    public void LargeRental_BeyondPooledClasses_IsFreedOnReturn()
    {
        using var pool = new DmaBufferPool(NativeMemoryAllocator.Instance, "test", 4096, arenaBytes: 0);
        var big = pool.Rent(DmaBufferPool.MaxPooledSize * 2);
        long held = pool.NativeBytes;
        Assert.IsTrue(held >= DmaBufferPool.MaxPooledSize * 2);
        big.Dispose();
        Assert.AreEqual(held - DmaBufferPool.MaxPooledSize * 2, pool.NativeBytes);
    }
}
