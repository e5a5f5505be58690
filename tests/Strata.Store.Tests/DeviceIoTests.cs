using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Region I/O (DeviceIo): memory the device reads or writes directly goes in pieces of the device's
/// own transfer limit, so a chunk's extent with its block table (1 MiB + 4 KiB) is one command.
/// </summary>
[TestClass]
public sealed class DeviceIoTests
{
    private const int Extent = 1024 * 1024 + 4096;

    [TestMethod]
    public async Task AnExtentAboveOneMebibyteIsOneWriteAndOneRead()
    {
        var dev = new CountingDevice("d", 8L * 1024 * 1024);
        Assert.IsTrue(Extent <= dev.Geometry.MaxTransfer, "the test needs a device whose transfer limit holds the extent");
        var data = TestDevices.Pattern(Extent, seed: 7);

        await DeviceIo.WriteAsync(dev, 2 * Extent, data);
        var writes = dev.Writes;
        Assert.AreEqual(1, writes.Length);
        Assert.AreEqual((2L * Extent, (long)Extent), writes[0]);

        var back = new byte[Extent];
        await DeviceIo.ReadAsync(dev, 2 * Extent, back);
        Assert.AreEqual(1L, dev.Reads);
        CollectionAssert.AreEqual(data, back);
    }

    [TestMethod]
    public async Task APooledWriteOfAnExtentIsOneWrite()
    {
        var dev = new CountingDevice("d", 8L * 1024 * 1024);
        var data = TestDevices.Pattern(Extent, seed: 9);

        await DeviceIo.WritePooledAsync(dev, 0, data);
        Assert.AreEqual(1, dev.Writes.Length);
        Assert.AreEqual((long)Extent, dev.Writes[0].Length);

        var back = new byte[Extent];
        await DeviceIo.ReadAsync(dev, 0, back);
        CollectionAssert.AreEqual(data, back);
    }
}
