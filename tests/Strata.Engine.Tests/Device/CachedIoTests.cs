using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// On a buffered file device, reads the page cache holds and writes without FUA complete on the
/// caller's thread (sio_device_read_cached, sio_device_write_cached); direct devices do not offer
/// it, cached_writes=0 turns the writes off, and with faults configured I/O takes the queue pair,
/// where the fault is decided and reported.
/// </summary>
[TestClass]
public sealed class CachedIoTests
{
    private readonly TestDevices _devices = new();

    [TestCleanup]
    public void Cleanup() => _devices.Dispose();

    private NativeBlockDevice Open(string name, bool direct, string more = "")
    {
        TestDevices.EnsureShim();
        return NativeBlockDevice.Open($"file:{_devices.Path(name)}?create=1&size=16M&direct={(direct ? 1 : 0)}{more}", new DeviceOptions { QueueDepth = 16 });
    }

    [TestMethod]
    public async Task BufferedDevice_WriteWithoutFua_CompletesOnTheCallersThread_FlushMakesItDurable()
    {
        string path = _devices.Path("wbuf");
        using (var dev = Open("wbuf", direct: false))
        {
            Assert.IsTrue(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedWrite));
            using var w = dev.Buffers.Rent(65536);
            for (int i = 0; i < w.Span.Length; i++)
                w.Span[i] = (byte)(i * 7 + 3);
            var write = dev.WriteAsync(4096, w.Memory);
            Assert.IsTrue(write.IsCompletedSuccessfully, "a write without FUA went through the polling thread");
            await write;
            // A FUA write goes through the queue pair (RWF_DSYNC there) and is just as readable.
            await dev.WriteAsync(1 << 20, w.Memory, WriteFlags.Fua);
            await dev.FlushAsync();
        }
        var file = new byte[65536];
        using (var fs = File.OpenRead(path))
        {
            fs.Position = 4096;
            fs.ReadExactly(file);
        }
        for (int i = 0; i < file.Length; i++)
            Assert.AreEqual((byte)(i * 7 + 3), file[i], $"byte {i}");
    }

    [TestMethod]
    public async Task BufferedDevice_1MiBWrite_OnTheCallersThread_ButThroughTheQueuePairFromAPollingThread()
    {
        // Off whatever thread the previous test's last completion left this one on (it may be a polling thread).
        await Task.Yield();
        Assert.IsFalse(PollerThread.OnPollerThread);
        using var dev = Open("wlarge", direct: false);
        using var w = dev.Buffers.Rent(1 << 20);
        using var r = dev.Buffers.Rent(1 << 20);
        for (int i = 0; i < w.Span.Length; i++)
            w.Span[i] = (byte)(i * 11 + 5);
        var write = dev.WriteAsync(0, w.Memory);
        Assert.IsTrue(write.IsCompletedSuccessfully, "a 1 MiB write without FUA went through the polling thread");
        await write;

        // A flush always goes through the queue pair: its continuation runs on the polling thread, where a
        // long copy would hold up every queue pair the thread serves, so the write is queued from there.
        // A flush that completed before the await continues inline instead: flush again (bounded).
        for (int i = 0; i < 100 && !PollerThread.OnPollerThread; i++)
            await dev.FlushAsync().ConfigureAwait(false);
        Assert.IsTrue(PollerThread.OnPollerThread, "no flush's continuation ran on the polling thread in 100 flushes");
        w.Span.Reverse();
        var fromPoller = dev.WriteAsync(1 << 20, w.Memory);
        Assert.IsFalse(fromPoller.IsCompleted, "a 1 MiB write from a polling thread was copied on that thread");
        await fromPoller.ConfigureAwait(false);
        await Task.Yield();
        await dev.ReadAsync(1 << 20, r.Memory);
        Assert.IsTrue(r.Span.SequenceEqual(w.Span), "the queued write reads back");
    }

    [TestMethod]
    public async Task CachedWritesOff_WritesGoThroughTheQueuePair()
    {
        using var dev = Open("woff", direct: false, "&cached_writes=0");
        Assert.IsFalse(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedWrite));
        Assert.IsTrue(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedRead));
        using var b = dev.Buffers.Rent(4096);
        b.Span.Fill(9);
        await dev.WriteAsync(0, b.Memory);
        using var r = dev.Buffers.Rent(4096);
        await dev.ReadAsync(0, r.Memory);
        Assert.IsTrue(r.Span.SequenceEqual(b.Span));
        var e = Assert.ThrowsExactly<DeviceArgumentException>(() => Open("wbad", direct: true, "&cached_writes=1").Dispose());
        StringAssert.Contains(e.Message, "cached_writes=1 needs the page cache");
    }

    [TestMethod]
    public async Task BufferedDevice_WithFaults_WriteFailsThroughTheQueuePair()
    {
        using var dev = Open("wfaulty", direct: false);
        using var b = dev.Buffers.Rent(4096);
        dev.SetFaults("fail_io=1&fail_ops=write");
        await Assert.ThrowsAsync<DeviceException>(async () => await dev.WriteAsync(0, b.Memory));
        dev.SetFaults("");
        await dev.WriteAsync(0, b.Memory);
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

    /// <summary>
    /// The default limit (DeviceOptions.CachedIoLimit, 512 KiB) takes a 264 KiB read on the caller's
    /// thread: two 128 KiB chunks and their block tables, what a 256 KiB NBD read of the daemon's
    /// default chunk size reads. A 1 MiB read goes through the queue pair and reads the same bytes.
    /// </summary>
    [TestMethod]
    public async Task BufferedDevice_TwoChunkRead_OnTheCallersThread_1MiBThroughTheQueuePair()
    {
        using var dev = Open("two", direct: false);
        const int Two = 2 * (128 + 4) << 10;
        using var w = dev.Buffers.Rent(1 << 20);
        using var r = dev.Buffers.Rent(1 << 20);
        for (int i = 0; i < w.Span.Length; i++)
            w.Span[i] = (byte)(i * 7 + i / 4096);
        await dev.WriteAsync(1 << 20, w.Memory);
        var read = dev.ReadAsync(1 << 20, r.Memory[..Two]);
        Assert.IsTrue(read.IsCompletedSuccessfully, "a 264 KiB read of cached pages went through the polling thread");
        await read;
        Assert.IsTrue(w.Span[..Two].SequenceEqual(r.Span[..Two]));
        r.Span.Clear();
        await dev.ReadAsync(1 << 20, r.Memory);
        Assert.IsTrue(w.Span.SequenceEqual(r.Span));
    }

    [TestMethod]
    public async Task DirectDevice_HasNoCachedRead_ReadsGoThroughTheQueuePair()
    {
        using var dev = Open("direct", direct: true);
        Assert.IsFalse(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedRead));
        Assert.IsFalse(dev.Geometry.Features.HasFlag(DeviceFeatures.CachedWrite));
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
