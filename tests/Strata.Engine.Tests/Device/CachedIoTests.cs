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
public sealed partial class CachedIoTests
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
    /// The default limits take a 264 KiB read on the caller's thread (two 128 KiB chunks and their block
    /// tables, what a 256 KiB NBD read of the daemon's default chunk size reads) and a read of a whole 1 MiB
    /// chunk with its table (DeviceOptions.CachedReadLimit, 2 MiB, off polling threads); a 3 MiB read goes
    /// through the queue pair and reads the same bytes.
    /// </summary>
    [TestMethod]
    public async Task BufferedDevice_ReadsUpTo2MiB_OnTheCallersThread_LongerThroughTheQueuePair()
    {
        using var dev = Open("two", direct: false);
        Assert.AreEqual(2 << 20, dev.Geometry.CachedReadLimit);
        const int Two = 2 * (128 + 4) << 10, Chunk = (1024 + 4) << 10, Long = 3 << 20;
        using var w = dev.Buffers.Rent(Long);
        using var r = dev.Buffers.Rent(Long);
        for (int i = 0; i < w.Span.Length; i++)
            w.Span[i] = (byte)(i * 7 + i / 4096);
        await dev.WriteAsync(1 << 20, w.Memory);
        // The 3 MiB write completed on the polling thread, where only CachedIoLimit (512 KiB) is read in place.
        await Task.Yield();
        foreach (int length in new[] { Two, Chunk })
        {
            r.Span.Clear();
            var read = dev.ReadAsync(1 << 20, r.Memory[..length]);
            Assert.IsTrue(read.IsCompletedSuccessfully, $"a {length}-byte read of cached pages went through the polling thread");
            await read;
            Assert.IsTrue(w.Span[..length].SequenceEqual(r.Span[..length]));
        }
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

    private const int PosixFadvDontNeed = 4;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int PosixFadvise(int fd, long offset, long length, int advice);

    /// <summary>Drops the file's clean pages from the page cache (the device must have flushed them).</summary>
    private static void DropCached(string path)
    {
        using var fs = File.OpenRead(path);
        Assert.AreEqual(0, PosixFadvise((int)fs.SafeFileHandle.DangerousGetHandle(), 0, 0, PosixFadvDontNeed));
    }

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static byte[] ReadFile(string path, long offset, int length)
    {
        var b = new byte[length];
        using var fs = File.OpenRead(path);
        fs.Position = offset;
        fs.ReadExactly(b);
        return b;
    }

    /// <summary>
    /// A block table and its 1 MiB chunk written together from ordinary arrays: one vectored page-cache
    /// call on the caller's thread (sio_device_writev_cached; each part alone would have been copied
    /// there, CachedWriteLimit), head then rest in the file.
    /// </summary>
    [TestMethod]
    public async Task BufferedDevice_WriteGather_TableAnd1MiBChunk_OneCallOnTheCallersThread()
    {
        // Off whatever thread the previous test's last completion left this one on (it may be a polling thread).
        await Task.Yield();
        Assert.IsFalse(PollerThread.OnPollerThread);
        // lock=0: the test reads the file while the device is open (File.OpenRead takes a shared flock).
        using var dev = Open("gather", direct: false, "&lock=0");
        byte[] head = Pattern(4096, 1), rest = Pattern(1 << 20, 2);
        var write = dev.WriteGatherAsync(1 << 20, head, rest);
        Assert.IsTrue(write.IsCompletedSuccessfully, "a gathered write without FUA went through the polling thread");
        await write;
        Assert.AreEqual(1L, dev.CachedPairs);
        await dev.FlushAsync();
        CollectionAssert.AreEqual(head, ReadFile(_devices.Path("gather"), 1 << 20, head.Length));
        CollectionAssert.AreEqual(rest, ReadFile(_devices.Path("gather"), (1 << 20) + head.Length, rest.Length));
    }

    /// <summary>Sector-sized parts on a 512-byte-block file: the head need not fill a page.</summary>
    [TestMethod]
    public async Task BufferedDevice_512ByteBlocks_OddHead_GatherAndScatterInOneCallEach()
    {
        using var dev = Open("gather512", direct: false, "&block=512");
        byte[] head = Pattern(3 * 512, 3), rest = Pattern(61 * 512, 4);
        long offset = 5 * 512;
        await dev.WriteGatherAsync(offset, head, rest);
        byte[] a = new byte[7 * 512], b = new byte[57 * 512];
        var read = dev.ReadScatterAsync(offset, a, b);
        Assert.IsTrue(read.IsCompletedSuccessfully, "a scattered read of cached pages went through the polling thread");
        await read;
        Assert.AreEqual(2L, dev.CachedPairs);
        var all = head.Concat(rest).ToArray();
        CollectionAssert.AreEqual(all[..a.Length], a);
        CollectionAssert.AreEqual(all[a.Length..], b);
    }

    /// <summary>
    /// A scattered read of pages the page cache does not hold fails on the caller's thread (-EAGAIN)
    /// and goes through the queue pair: the same bytes, and then they are cached and read in one call.
    /// </summary>
    [TestMethod]
    public async Task BufferedDevice_ReadScatter_NotCached_FallsBackToTheQueuePair_SameBytes()
    {
        string path = _devices.Path("scatter");
        using var dev = Open("scatter", direct: false, "&lock=0");
        byte[] head = Pattern(4096, 5), rest = Pattern(64 * 1024, 6);
        await dev.WriteGatherAsync(2 << 20, head, rest);
        await dev.FlushAsync();
        DropCached(path);
        long pairs = dev.CachedPairs;
        byte[] h = new byte[head.Length], r = new byte[rest.Length];
        await dev.ReadScatterAsync(2 << 20, h, r);
        Assert.AreEqual(pairs, dev.CachedPairs, "pages not cached were served on the caller's thread");
        CollectionAssert.AreEqual(head, h);
        CollectionAssert.AreEqual(rest, r);
        Array.Clear(h);
        Array.Clear(r);
        var again = dev.ReadScatterAsync(2 << 20, h, r);
        Assert.IsTrue(again.IsCompletedSuccessfully, "the reread pages were not served from the page cache");
        await again;
        Assert.AreEqual(pairs + 1, dev.CachedPairs);
        CollectionAssert.AreEqual(head, h);
        CollectionAssert.AreEqual(rest, r);
    }

    /// <summary>FUA, faults and a 3 MiB read (over CachedReadLimit) take the queue pair, never the vectored call.</summary>
    [TestMethod]
    public async Task BufferedDevice_FuaFaultsAndLongReads_GoThroughTheQueuePair()
    {
        using var dev = Open("gatherq", direct: false);
        byte[] head = Pattern(4096, 7), rest = Pattern(3 << 20, 8);
        await dev.WriteGatherAsync(0, head, rest, WriteFlags.Fua);
        Assert.AreEqual(0L, dev.CachedPairs, "a FUA write was copied into the page cache");
        byte[] h = new byte[head.Length], r = new byte[rest.Length];
        await dev.ReadScatterAsync(0, h, r);
        Assert.AreEqual(0L, dev.CachedPairs, "a read over CachedReadLimit was served on the caller's thread");
        CollectionAssert.AreEqual(head, h);
        CollectionAssert.AreEqual(rest, r);

        dev.SetFaults("fail_io=1&fail_ops=write");
        var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.WriteGatherAsync(0, rest.AsMemory(0, 4096), rest.AsMemory(4096, 8192)));
        Assert.AreEqual(Errno.EIO, e.Errno);
        Assert.AreEqual(0L, dev.CachedPairs);
        dev.SetFaults("");
        await dev.WriteGatherAsync(0, head, rest.AsMemory(0, 8192));
        Assert.AreEqual(1L, dev.CachedPairs);
    }

    [TestMethod]
    public async Task DirectDevice_GatherAndScatter_TwoCommandsThroughTheQueuePair()
    {
        using var dev = Open("gatherd", direct: true);
        using var head = dev.Buffers.Rent(4096);
        using var rest = dev.Buffers.Rent(65536);
        Pattern(4096, 9).CopyTo(head.Span);
        Pattern(65536, 10).CopyTo(rest.Span);
        await dev.WriteGatherAsync(8192, head.Memory, rest.Memory);
        using var h = dev.Buffers.Rent(4096);
        using var r = dev.Buffers.Rent(65536);
        await dev.ReadScatterAsync(8192, h.Memory, r.Memory);
        Assert.AreEqual(0L, dev.CachedPairs);
        Assert.IsTrue(h.Span.SequenceEqual(head.Span));
        Assert.IsTrue(r.Span.SequenceEqual(rest.Span));
    }
}
