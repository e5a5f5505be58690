using Strata.Engine.Device;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Store.Tests;

[TestClass]
public sealed class FlushCoalescerTests
{
    /// <summary>A memory device whose flushes complete only when the test says so.</summary>
    private sealed class GatedFlushDisk(string name) : MemoryBlockDevice(name, 1 << 20)
    {
        public readonly List<TaskCompletionSource> Flushes = new();

        protected override ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
        {
            if (opcode != IoOpcode.Flush)
                return base.SubmitCore(opcode, offset, length, buffer, flags);
            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (Flushes)
                Flushes.Add(tcs);
            return new ValueTask(tcs.Task);
        }
    }

    private static async Task WaitForFlushesAsync(GatedFlushDisk disk, int count)
    {
        for (int i = 0; i < 500; i++)
        {
            lock (disk.Flushes)
                if (disk.Flushes.Count >= count)
                    return;
            await Task.Delay(10);
        }
        Assert.Fail($"expected {count} device flushes in flight");
    }

    [TestMethod]
    public async Task Flush_FailsWhileAnotherRuns_TheOtherAndEveryLaterFlushFail()
    {
        var disk = new GatedFlushDisk("gated");
        var flusher = new FlushCoalescer(disk);
        var first = flusher.FlushAsync();
        var second = flusher.FlushAsync();
        // Both callers' writes completed before they asked, and neither flush started after the
        // other asked: each needs its own device flush, and the two run at once.
        await WaitForFlushesAsync(disk, 2);

        disk.Flushes[0].SetException(new DeviceException("gated", Errno.EIO, "injected flush failure"));
        await Assert.ThrowsExactlyAsync<DeviceException>(() => first);
        disk.Flushes[1].SetResult();
        var e = await Assert.ThrowsExactlyAsync<IOException>(() => second);
        StringAssert.Contains(e.Message, "an earlier flush failed");
        await Assert.ThrowsExactlyAsync<IOException>(() => flusher.FlushAsync());
        Assert.AreEqual(2, disk.Flushes.Count, "no device flush is issued after a failure");
        Assert.IsInstanceOfType<DeviceException>(flusher.Failure);
    }

    [TestMethod]
    public async Task Flush_CallerAfterAStartedFlush_IssuesItsOwnWithoutWaiting()
    {
        var disk = new GatedFlushDisk("gated");
        var flusher = new FlushCoalescer(disk);
        var first = flusher.FlushAsync();
        await WaitForFlushesAsync(disk, 1);
        var second = flusher.FlushAsync();
        await WaitForFlushesAsync(disk, 2);
        // No gate: the second caller's flush runs beside the first and may finish first.
        disk.Flushes[1].SetResult();
        await second;
        Assert.IsFalse(first.IsCompleted, "the first caller's flush has not completed");
        disk.Flushes[0].SetResult();
        await first;
    }
}
