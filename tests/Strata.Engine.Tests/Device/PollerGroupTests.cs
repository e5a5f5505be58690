using Strata.Engine.Device;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// Several devices served by the threads of one <see cref="PollerGroup"/> (the engine's file
/// targets share one polling thread): I/O on each reads its own data, a device closes while the
/// others keep working (also from inside a completion on the shared thread), and the group
/// refuses to stop under open devices.
/// </summary>
[TestClass]
public sealed class PollerGroupTests
{
    private readonly TestDevices _devices = new();

    [TestCleanup]
    public void Cleanup() => _devices.Dispose();

    private NativeBlockDevice Open(string name, PollerGroup group, int pollers = 1)
    {
        TestDevices.EnsureShim();
        return NativeBlockDevice.Open($"file:{_devices.Path(name)}?create=1&size=16M", new DeviceOptions { Group = group, Pollers = pollers, QueueDepth = 16 });
    }

    private static void Fill(Span<byte> span, int seed)
    {
        for (int i = 0; i < span.Length; i++)
            span[i] = (byte)(seed * 31 + i * 7);
    }

    private static async Task WriteReadAsync(NativeBlockDevice dev, int seed, int rounds)
    {
        int bs = dev.Geometry.LogicalBlockSize;
        using var w = dev.Buffers.Rent(bs);
        using var r = dev.Buffers.Rent(bs);
        for (int round = 0; round < rounds; round++)
        {
            long offset = (long)(seed % 64 * rounds + round) * bs;
            Fill(w.Span, seed * 1000 + round);
            await dev.WriteAsync(offset, w.Memory);
            if (round % 7 == 0)
                await dev.FlushAsync();
            await dev.ReadAsync(offset, r.Memory);
            Assert.IsTrue(w.Span.SequenceEqual(r.Span), $"{dev.Name} seed {seed} round {round}: read back different bytes");
        }
    }

    /// <summary>Sequential writes of <paramref name="bytes"/> each, one in flight at a time; returns the group's kernel waits meanwhile.</summary>
    private async Task<long> KernelWaitsDuringWritesAsync(int slowTransferBytes, int bytes, int writes)
    {
        using var group = new PollerGroup(threads: 1);
        TestDevices.EnsureShim();
        using var dev = NativeBlockDevice.Open($"file:{_devices.Path($"slow-{slowTransferBytes}")}?create=1&size=16M",
            new DeviceOptions { Group = group, QueueDepth = 16, SlowTransferBytes = slowTransferBytes });
        using var w = dev.Buffers.Rent(bytes);
        using var r = dev.Buffers.Rent(bytes);
        long before = group.KernelWaits;
        for (int i = 0; i < writes; i++)
        {
            Fill(w.Span, i);
            await dev.WriteAsync((long)i % 8 * bytes, w.Memory);
        }
        long waits = group.KernelWaits - before;
        await dev.ReadAsync((long)(writes - 1) % 8 * bytes, r.Memory);
        Assert.IsTrue(w.Span.SequenceEqual(r.Span), "the last write reads back");
        return waits;
    }

    [TestMethod]
    public async Task LargeWritesAloneInFlight_PollerWaitsInTheKernel()
    {
        // Every write is a slow command here: none completes at its submission (O_DIRECT), so the
        // poller finds only slow commands in flight and waits in the kernel instead of spinning.
        long waits = await KernelWaitsDuringWritesAsync(slowTransferBytes: 4096, bytes: 64 << 10, writes: 64);
        Assert.IsTrue(waits > 0, $"the poller never waited in the kernel with only slow writes in flight ({waits} waits)");
    }

    [TestMethod]
    public async Task SmallWritesInFlight_PollerBusyPolls()
    {
        long waits = await KernelWaitsDuringWritesAsync(slowTransferBytes: 1 << 20, bytes: 64 << 10, writes: 64);
        Assert.AreEqual(0, waits, "a poller with writes below SlowTransferBytes in flight (and no busy-poll window) spins, never waits in the kernel");
    }

    /// <summary>
    /// <paramref name="writes"/> 4 KiB writes, 8 in flight (above PollerThread.SpinDepth), while more threads than CPUs
    /// spin (runnable tasks waiting for a CPU, as /proc/loadavg counts them); returns the group's kernel waits meanwhile.
    /// </summary>
    private async Task<long> KernelWaitsUnderContentionAsync(int busyPollMicros, int writes)
    {
        var options = new DeviceOptions { QueueDepth = 16, BusyPollMicros = busyPollMicros };
        using var group = new PollerGroup(threads: 1, options);
        TestDevices.EnsureShim();
        using var dev = NativeBlockDevice.Open($"file:{_devices.Path($"contended-{busyPollMicros}")}?create=1&size=16M", options with { Group = group });
        int bs = 4096;
        using var w = dev.Buffers.Rent(8 * bs);
        Fill(w.Span, 7);
        using var stop = new CancellationTokenSource();
        var spinners = Enumerable.Range(0, Environment.ProcessorCount + 2).Select(_ => new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
                Thread.SpinWait(100);
        }) { IsBackground = true }).ToArray();
        foreach (var t in spinners)
            t.Start();
        long waits;
        try
        {
            long before = group.KernelWaits;
            for (int i = 0; i < writes / 8; i++)
                await Task.WhenAll(Enumerable.Range(0, 8).Select(k => dev.WriteAsync((long)(i % 16 * 8 + k) * bs, w.Memory.Slice(k * bs, bs)).AsTask()));
            waits = group.KernelWaits - before;
        }
        finally
        {
            stop.Cancel();
            foreach (var t in spinners)
                t.Join();
        }
        using var r = dev.Buffers.Rent(bs);
        await dev.ReadAsync((long)((writes / 8 - 1) % 16 * 8 + 3) * bs, r.Memory);
        Assert.IsTrue(w.Span.Slice(3 * bs, bs).SequenceEqual(r.Span), "the last round's fourth write reads back");
        return waits;
    }

    [TestMethod]
    public async Task AdaptivePoller_OthersWaitingForACpu_WaitsInTheKernel()
    {
        Assert.IsTrue(CpuContention.Available, "/proc/loadavg is readable on Linux");
        long waits = await KernelWaitsUnderContentionAsync(busyPollMicros: 0, writes: 256);
        Assert.IsTrue(waits > 0, $"with 8 small writes in flight and more runnable threads than CPUs the adaptive poller never waited in the kernel ({waits} waits)");
    }

    [TestMethod]
    public async Task SpinningPoller_OthersWaitingForACpu_BusyPolls()
    {
        long waits = await KernelWaitsUnderContentionAsync(busyPollMicros: -1, writes: 256);
        Assert.AreEqual(0, waits, "BusyPollMicros < 0 busy-polls whatever else is runnable");
    }

    [TestMethod]
    public void CpuContention_ParsesRunnableTasks()
    {
        Assert.AreEqual(3, CpuContention.Runnable("0.52 0.58 0.59 3/456 12345\n"u8));
        Assert.AreEqual(17, CpuContention.Runnable("10.24 10.77 7.66 17/1203 99\n"u8));
        Assert.AreEqual(-1, CpuContention.Runnable("0.52 0.58 0.59"u8), "no fourth field");
        Assert.AreEqual(-1, CpuContention.Runnable("0.52 0.58 0.59 x/456 1"u8), "not a number");
        Assert.AreEqual(-1, CpuContention.Runnable("0.52 0.58 0.59 3"u8), "cut before the slash");
        Assert.IsTrue(CpuContention.Runnable(System.Text.Encoding.ASCII.GetBytes(File.ReadAllText("/proc/loadavg"))) >= 1, "this machine's count includes the reader");
    }

    [TestMethod]
    public async Task ThreeDevicesOneThread_ConcurrentIoOnEach_ReadsItsOwnData()
    {
        using var group = new PollerGroup(threads: 1);
        var devs = new[] { Open("a", group), Open("b", group), Open("c", group, pollers: 2) };
        try
        {
            await Task.WhenAll(devs.SelectMany((d, i) => Enumerable.Range(0, 8).Select(t => Task.Run(() => WriteReadAsync(d, i * 8 + t, 40)))));
        }
        finally
        {
            foreach (var d in devs)
                d.Dispose();
        }
    }

    [TestMethod]
    public async Task OneDeviceCloses_WhileTheOthersRun_TheyKeepWorking()
    {
        using var group = new PollerGroup(threads: 2);
        using var a = Open("a", group);
        var b = Open("b", group);
        var running = Task.WhenAll(Enumerable.Range(0, 4).Select(t => Task.Run(() => WriteReadAsync(a, t, 200))));
        await WriteReadAsync(b, 9, 20);
        b.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await b.FlushAsync());
        await running;
        await WriteReadAsync(a, 5, 10);
        // The file lock went with the close: the path opens again on the same group.
        using var again = Open("b", group);
        await WriteReadAsync(again, 9, 5);
    }

    [TestMethod]
    public async Task DisposeFromACompletionOnTheSharedThread_ClosesThatDeviceOnly()
    {
        using var group = new PollerGroup(threads: 1);
        using var a = Open("a", group);
        var b = Open("b", group);
        using var buf = b.Buffers.Rent(b.Geometry.LogicalBlockSize);
        var closed = new TaskCompletionSource();
        // Inline completions: the continuation runs on the group's thread, which serves both devices.
        var write = b.WriteAsync(0, buf.Memory);
        var awaiter = write.ConfigureAwait(false).GetAwaiter();
        awaiter.OnCompleted(() =>
        {
            try
            {
                awaiter.GetResult();
                b.Dispose();
                closed.SetResult();
            }
            catch (Exception e)
            {
                closed.SetException(e);
            }
        });
        await closed.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await b.FlushAsync());
        await WriteReadAsync(a, 3, 20);
    }

    [TestMethod]
    public void GroupDisposedUnderAnOpenDevice_Refuses_ThenStopsAfterTheClose()
    {
        var group = new PollerGroup(threads: 1);
        var a = Open("a", group);
        var e = Assert.ThrowsExactly<InvalidOperationException>(() => group.Dispose());
        StringAssert.Contains(e.Message, "close them first");
        a.Dispose();
        group.Dispose();
        Assert.ThrowsExactly<ObjectDisposedException>(() => Open("b", group));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new PollerGroup(threads: 0));
    }
}
