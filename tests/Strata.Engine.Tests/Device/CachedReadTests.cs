using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// Reads on a buffered file device that the page cache holds complete on the caller's thread
/// (sio_device_read_cached); direct devices do not offer it, and with faults configured reads
/// take the queue pair, where the fault is decided and reported.
/// </summary>
[TestClass]
public sealed class CachedReadTests
{
    private readonly TestDevices _devices = new();

    [TestCleanup]
    public void Cleanup() => _devices.Dispose();

    private NativeBlockDevice Open(string name, bool direct)
    {
        TestDevices.EnsureShim();
        return NativeBlockDevice.Open($"file:{_devices.Path(name)}?create=1&size=16M&direct={(direct ? 1 : 0)}", new DeviceOptions { QueueDepth = 16 });
    }

    [TestMethod]
    public async Task BufferedDevice_CachedRead_CompletesOnTheCallersThread()
    {
        using var dev = Open("buf", direct: false);
        Assert.IsTrue(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedRead));
        using var w = dev.Buffers.Rent(65536);
        using var r = dev.Buffers.Rent(65536);
        for (int i = 0; i < w.Span.Length; i++)
            w.Span[i] = (byte)(i * 13 + 1);
        await dev.WriteAsync(8192, w.Memory);
        var read = dev.ReadAsync(8192, r.Memory);
        Assert.IsTrue(read.IsCompletedSuccessfully, "a read of cached pages went through the polling thread");
        await read;
        Assert.IsTrue(w.Span.SequenceEqual(r.Span));
        // Pages never written are cached as zeroes once read; any length the device takes works.
        var tail = dev.Buffers.Rent(4096);
        await dev.ReadAsync(16L * 1024 * 1024 - 4096, tail.Memory);
        Assert.IsTrue(tail.Span.IndexOfAnyExcept((byte)0) < 0);
        tail.Dispose();
    }

    [TestMethod]
    public async Task DirectDevice_HasNoCachedRead_ReadsGoThroughTheQueuePair()
    {
        using var dev = Open("direct", direct: true);
        Assert.IsFalse(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedRead));
        using var w = dev.Buffers.Rent(4096);
        using var r = dev.Buffers.Rent(4096);
        w.Span.Fill(0x5a);
        await dev.WriteAsync(0, w.Memory);
        await dev.ReadAsync(0, r.Memory);
        Assert.IsTrue(r.Span.SequenceEqual(w.Span));
    }

    [TestMethod]
    public async Task BufferedDevice_WithFaults_ReadFailsThroughTheQueuePair()
    {
        using var dev = Open("faulty", direct: false);
        using var b = dev.Buffers.Rent(4096);
        await dev.WriteAsync(0, b.Memory);
        await dev.ReadAsync(0, b.Memory);
        dev.SetFaults("fail_io=1&fail_ops=read");
        var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.ReadAsync(0, b.Memory));
        StringAssert.Contains(e.Message, "read");
        dev.SetFaults("");
        await dev.ReadAsync(0, b.Memory);
    }
}
