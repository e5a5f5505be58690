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
