using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// The contract every backend honours; each body runs once per backend.
/// Every test ends by checking that no DMA buffer leaked.
/// </summary>
[TestClass]
public sealed class DeviceContractTests
{
    private TestDevices _devices = null!;

    [TestInitialize]
    public void Init() => _devices = new TestDevices();

    [TestCleanup]
    public void Cleanup() => _devices.Dispose();

    private static void Fill(Span<byte> span, int seed)
    {
        var rng = new Random(seed);
        rng.NextBytes(span);
    }

    private static void AssertNoLeaks(IBlockDevice dev)
    {
        Assert.AreEqual(0L, dev.Buffers.OutstandingCount, string.Join("\n", dev.Buffers.DescribeOutstanding()));
    }

    /// <summary>Runs a test body on a fresh device, then checks that every buffer it rented came back.</summary>
    private async Task WithDevice(DeviceKind kind, Func<IBlockDevice, Task> body, DeviceOptions? options = null)
    {
        await using var dev = _devices.Open(kind, deviceOptions: options);
        dev.Buffers.TrackRentals = true;
        await body(dev);
        AssertNoLeaks(dev);
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task RoundTrip_ManyOffsetsAndSizes_ReadsBackWhatWasWritten(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            var rng = new Random(1234);
            var written = new List<(long Offset, byte[] Data)>();
            for (int i = 0; i < 60; i++)
            {
                int blocks = rng.Next(1, 65);
                long offset = (long)rng.Next(0, (int)(dev.Geometry.BlockCount - blocks)) * bs;
                if (i == 0) offset = 0;
                if (i == 1) offset = dev.Geometry.Capacity - (long)blocks * bs; // the last blocks
                using var buf = dev.Buffers.Rent(blocks * bs);
                Fill(buf.Span, i);
                await dev.WriteAsync(offset, buf.Memory);
                written.Add((offset, buf.Span.ToArray()));
            }
            // Later writes win where ranges overlap: check against a model.
            var model = new Dictionary<long, byte[]>();
            foreach (var (off, data) in written)
                for (int b = 0; b < data.Length / bs; b++)
                    model[off / bs + b] = data.AsSpan(b * bs, bs).ToArray();
            foreach (var (off, data) in written)
            {
                using var buf = dev.Buffers.Rent(data.Length);
                await dev.ReadAsync(off, buf.Memory);
                for (int b = 0; b < data.Length / bs; b++)
                    CollectionAssert.AreEqual(model[off / bs + b], buf.Span.Slice(b * bs, bs).ToArray(), $"block {off / bs + b}");
            }
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task ConcurrentIo_ManyTasks_EachReadsItsOwnData(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            const int Tasks = 64, Rounds = 20;
            var tasks = Enumerable.Range(0, Tasks).Select(t => Task.Run(async () =>
            {
                using var w = dev.Buffers.Rent(2 * bs);
                using var r = dev.Buffers.Rent(2 * bs);
                for (int round = 0; round < Rounds; round++)
                {
                    long offset = ((long)t * Rounds + round) * 2 * bs;
                    Fill(w.Span, t * 1000 + round);
                    await dev.WriteAsync(offset, w.Memory);
                    await dev.ReadAsync(offset, r.Memory);
                    Assert.IsTrue(w.Span.SequenceEqual(r.Span), $"task {t} round {round} read back different bytes");
                }
            })).ToArray();
            await Task.WhenAll(tasks);
        }, new DeviceOptions { Pollers = 2, QueueDepth = 16 });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    public async Task ConcurrentIo_ThreadPoolCompletions_EachReadsItsOwnData(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            await Task.WhenAll(Enumerable.Range(0, 32).Select(t => Task.Run(async () =>
            {
                using var w = dev.Buffers.Rent(bs);
                using var r = dev.Buffers.Rent(bs);
                for (int round = 0; round < 10; round++)
                {
                    Fill(w.Span, t * 100 + round);
                    await dev.WriteAsync((long)(t * 10 + round) * bs, w.Memory);
                    await dev.ReadAsync((long)(t * 10 + round) * bs, r.Memory);
                    Assert.IsTrue(w.Span.SequenceEqual(r.Span));
                }
            })));
        }, new DeviceOptions { InlineCompletions = false, CompletionBatch = 16 });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    public async Task Dispose_FromInsideACompletion_ClosesAtOnce(DeviceKind kind)
    {
        var dev = _devices.Open(kind);
        int bs = dev.Geometry.LogicalBlockSize;
        var buf = dev.Buffers.Rent(bs);
        // A command that completes before its await registers continues on the caller's
        // thread; keep issuing until a continuation runs inline on the poller.
        for (int i = 0; i < 1000 && !(Thread.CurrentThread.Name ?? "").StartsWith("strata-poll-", StringComparison.Ordinal); i++)
            await dev.WriteAsync(0, buf.Memory);
        Assert.StartsWith("strata-poll-", Thread.CurrentThread.Name ?? "", "with inline completions a continuation runs on the poller");
        buf.Dispose();
        dev.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await dev.FlushAsync());
        // The close is complete when Dispose returns, even on the poller's own thread:
        // the device's lock is released, so a new opener gets in at once.
        using var again = _devices.Open(kind);
        Assert.AreEqual(dev.Geometry.Capacity, again.Geometry.Capacity);
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task Batch_MixedCommands_AllComplete(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            using var a = dev.Buffers.Rent(bs);
            using var b = dev.Buffers.Rent(4 * bs);
            using var back = dev.Buffers.Rent(4 * bs);
            Fill(a.Span, 1);
            Fill(b.Span, 2);
            await dev.ExecuteAsync(new[]
            {
                IoRequest.Write(0, a.Memory),
                IoRequest.Write(8L * bs, b.Memory, WriteFlags.Fua),
                IoRequest.WriteZeroes(20L * bs, 2L * bs),
                IoRequest.Flush(),
            });
            await dev.ExecuteAsync(new[] { IoRequest.Read(8L * bs, back.Memory) });
            Assert.IsTrue(b.Span.SequenceEqual(back.Span));
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task TrimAndWriteZeroes_WrittenRange_ReadsBackZeroes(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            using var buf = dev.Buffers.Rent(32 * bs);
            Fill(buf.Span, 7);
            await dev.WriteAsync(0, buf.Memory);
            await dev.TrimAsync(4L * bs, 8L * bs);
            await dev.WriteZeroesAsync(16L * bs, 4L * bs);
            await dev.FlushAsync();
            var expected = buf.Span.ToArray();
            Array.Clear(expected, 4 * bs, 8 * bs);
            Array.Clear(expected, 16 * bs, 4 * bs);
            using var back = dev.Buffers.Rent(32 * bs);
            await dev.ReadAsync(0, back.Memory);
            CollectionAssert.AreEqual(expected, back.Span.ToArray());
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    public async Task Flush_ThenReopen_DataIsThere(DeviceKind kind)
    {
        int bs;
        byte[] data;
        {
            await using var dev = _devices.Open(kind);
            bs = dev.Geometry.LogicalBlockSize;
            using var buf = dev.Buffers.Rent(4 * bs);
            Fill(buf.Span, 99);
            data = buf.Span.ToArray();
            await dev.WriteAsync(12L * bs, buf.Memory);
            await dev.FlushAsync();
        }
        await WithDevice(kind, async again =>
        {
            using var back = again.Buffers.Rent(4 * bs);
            await again.ReadAsync(12L * bs, back.Memory);
            CollectionAssert.AreEqual(data, back.Span.ToArray());
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task InjectedEio_OnWrite_SurfacesAsIOExceptionWithErrno(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            if (dev is not IFaultInjectable faults)
            {
                Assert.Inconclusive($"{kind} backend has no fault injector");
                return;
            }
            int bs = dev.Geometry.LogicalBlockSize;
            using var buf = dev.Buffers.Rent(bs);
            faults.SetFaults("fail_io=2&fail_ops=write");
            await dev.WriteAsync(0, buf.Memory);
            var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.WriteAsync(bs, buf.Memory));
            Assert.IsInstanceOfType<IOException>(e);
            Assert.AreEqual(Errno.EIO, e.Errno);
            StringAssert.Contains(e.Message, dev.Name);
            StringAssert.Contains(e.Message, "EIO");
            StringAssert.Contains(e.Message, $"offset {bs}");
            await dev.WriteAsync(2L * bs, buf.Memory); // only the 2nd write fails
            Assert.AreEqual(1L, faults.GetFaultStats().IosFailed);
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    public async Task InjectedFlushFailure_Flush_ThrowsEio(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            var faults = (IFaultInjectable)dev;
            faults.SetFaults("fail_flush=all");
            var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.FlushAsync());
            Assert.AreEqual(Errno.EIO, e.Errno);
            faults.SetFaults("");
            await dev.FlushAsync();
            Assert.AreEqual(0L, faults.GetFaultStats().FlushesFailed, "clearing the spec resets the counters");
        });
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task Dispose_WhileIoInFlight_EveryTaskEndsAndNothingLeaks(DeviceKind kind)
    {
        var dev = _devices.Open(kind, deviceOptions: new DeviceOptions { QueueDepth = 8 });
        int bs = dev.Geometry.LogicalBlockSize;
        var buffers = Enumerable.Range(0, 32).Select(_ => dev.Buffers.Rent(16 * bs)).ToArray();
        var tasks = new List<Task>();
        for (int i = 0; i < buffers.Length; i++)
            tasks.Add(dev.WriteAsync((long)i * 16 * bs, buffers[i].Memory).AsTask());
        var disposing = Task.Run(() => dev.Dispose());
        var late = Task.Run(async () =>
        {
            await Task.Yield();
            try
            {
                await dev.ReadAsync(0, buffers[0].Memory);
            }
            catch (ObjectDisposedException)
            {
            }
        });
        await Task.WhenAll(tasks); // accepted I/O completes
        await disposing;
        await late;
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await dev.ReadAsync(0, buffers[1].Memory));
        foreach (var b in buffers)
            b.Dispose();
        AssertNoLeaks(dev);
    }

    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task BadRequests_MisalignedOrPastEnd_OneLineErrorNamingDevice(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            using var buf = dev.Buffers.Rent(2 * bs);
            var e1 = await Assert.ThrowsAsync<DeviceArgumentException>(async () => await dev.ReadAsync(1, buf.Memory[..bs]));
            StringAssert.Contains(e1.Message, "not a multiple");
            var e2 = await Assert.ThrowsAsync<DeviceArgumentException>(async () => await dev.ReadAsync(dev.Geometry.Capacity - bs, buf.Memory));
            Assert.AreEqual(Errno.ERANGE, e2.Errno);
            StringAssert.Contains(e2.Message, "beyond the device's end");
            if ((dev.Geometry.Features & DeviceFeatures.DirectIo) != 0)
            {
                var e3 = await Assert.ThrowsAsync<DeviceArgumentException>(async () => await dev.WriteAsync(0, buf.Memory.Slice(8, bs)));
                StringAssert.Contains(e3.Message, "not aligned");
            }
            foreach (var e in new Exception[] { e1, e2 })
            {
                StringAssert.Contains(e.Message, dev.Name);
                Assert.IsFalse(e.Message.Contains('\n'), "one line");
            }
        });
    }

    /// <summary>
    /// A gathered write puts its head at the offset and the rest right after it, a scattered read
    /// splits the same range the same way; each part follows the command rules.
    /// </summary>
    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    [DataRow(DeviceKind.Memory)]
    public async Task GatherAndScatter_TwoBuffers_AreOneAdjacentRange(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            int bs = dev.Geometry.LogicalBlockSize;
            long offset = 7L * bs;
            using var head = dev.Buffers.Rent(bs);
            using var rest = dev.Buffers.Rent(16 * bs);
            Fill(head.Span, 1);
            Fill(rest.Span, 2);
            await dev.WriteGatherAsync(offset, head.Memory, rest.Memory);
            using var whole = dev.Buffers.Rent(17 * bs);
            await dev.ReadAsync(offset, whole.Memory);
            Assert.IsTrue(whole.Span[..bs].SequenceEqual(head.Span), "head");
            Assert.IsTrue(whole.Span[bs..].SequenceEqual(rest.Span), "rest");

            // Scattered the other way round: 3 blocks then 14.
            using var a = dev.Buffers.Rent(3 * bs);
            using var b = dev.Buffers.Rent(14 * bs);
            await dev.ReadScatterAsync(offset, a.Memory, b.Memory);
            Assert.IsTrue(a.Span.SequenceEqual(whole.Span[..(3 * bs)]), "first part");
            Assert.IsTrue(b.Span.SequenceEqual(whole.Span[(3 * bs)..]), "second part");

            var e = await Assert.ThrowsAsync<DeviceArgumentException>(async () => await dev.WriteGatherAsync(offset, head.Memory[..(bs / 2)], rest.Memory));
            StringAssert.Contains(e.Message, "not a multiple");
            var past = await Assert.ThrowsAsync<DeviceArgumentException>(async () => await dev.ReadScatterAsync(dev.Geometry.Capacity - 2 * bs, a.Memory[..bs], b.Memory[..(2 * bs)]));
            Assert.AreEqual(Errno.ERANGE, past.Errno);
        });
    }

    /// <summary>When one part of a gathered write fails, the failure is reported once the other part is done (and it was written).</summary>
    [TestMethod]
    [DataRow(DeviceKind.Uring)]
    [DataRow(DeviceKind.Spdk)]
    public async Task WriteGather_OnePartFails_ThrowsAfterTheOtherIsWritten(DeviceKind kind)
    {
        await WithDevice(kind, async dev =>
        {
            var faults = (IFaultInjectable)dev;
            int bs = dev.Geometry.LogicalBlockSize;
            using var head = dev.Buffers.Rent(bs);
            using var rest = dev.Buffers.Rent(4 * bs);
            Fill(head.Span, 3);
            Fill(rest.Span, 4);
            faults.SetFaults($"fail_every=1&fail_ops=write&fail_range=0-{bs}");
            var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.WriteGatherAsync(0, head.Memory, rest.Memory));
            Assert.AreEqual(Errno.EIO, e.Errno);
            faults.SetFaults("");
            using var back = dev.Buffers.Rent(4 * bs);
            await dev.ReadAsync(bs, back.Memory);
            Assert.IsTrue(back.Span.SequenceEqual(rest.Span), "the part that did not fail was written");
        });
    }
}
