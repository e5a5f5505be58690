using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// A pool's open reads the live part of each shard's log (from the head to the first invalid batch),
/// not the whole region (PoolOpener.ReadLiveLogAsync): the hot swap's open and every start used to
/// read 64 MiB a shard whatever was in it.
/// </summary>
[TestClass]
public sealed class OpenLogReadTests
{
    private const int Chunk = 4096;
    private const long LogBytes = 1024 * 1024;

    /// <summary>Counts the bytes read inside one byte range (a shard's log region).</summary>
    private sealed class LogReadCountingDevice(string name, long capacity) : MemoryBlockDevice(name, capacity)
    {
        private long _bytes;
        public long Start = -1, End = -1;

        public long LogBytesRead => Interlocked.Read(ref _bytes);

        protected override void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
        {
            if (opcode == IoOpcode.Read && offset < End && offset + buffer.Length > Start)
                Interlocked.Add(ref _bytes, Math.Min(End, offset + buffer.Length) - Math.Max(Start, offset));
            base.Execute(opcode, offset, length, buffer, flags);
        }
    }

    private static PoolCreateOptions Options(uint layout) => TestDevices.SmallPool with { WalBytes = LogBytes, LayoutVersion = layout };

    [TestMethod]
    [DataRow(4u, DisplayName = "WAL v1 (layout 4)")]
    [DataRow(0u, DisplayName = "WAL v2 (newest layout)")]
    public async Task Open_CleanlyClosedPool_ReadsOnlyTheFirstWindowOfItsLog(uint layout)
    {
        var disk = new LogReadCountingDevice("log0", TestDevices.TargetSize);
        var (engine, _) = await TestDevices.FormatAsync([disk]);
        var pool = await engine.CreatePoolAsync("tank", 2L * 1024 * 1024, 1, Options(layout));
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 64 * Chunk, Chunk);
        for (int i = 0; i < 64; i++)
            await image.WriteAsync(i * Chunk, TestDevices.Pattern(Chunk, i));
        var shard = pool.Shards[0];
        Assert.AreEqual(LogBytes, shard.Header.WalLength);
        (disk.Start, disk.End) = (shard.WalStart, shard.WalStart + shard.Header.WalLength);
        await engine.DisposeAsync();

        long before = disk.LogBytesRead;
        var (reopened, _) = await TestDevices.OpenAsync([disk]);
        var again = await reopened.OpenPoolAsync("tank");
        long read = disk.LogBytesRead - before;
        Assert.IsTrue(read > 0 && read <= PoolOpener.FirstLogWindow,
            $"the open read {read} bytes of a {LogBytes}-byte log that a clean close left empty; at most the first window ({PoolOpener.FirstLogWindow}) is needed");
        Assert.AreEqual(read, again.OpenTimings!.LogBytesRead);
        var back = new byte[Chunk];
        for (int i = 0; i < 64; i++)
        {
            await again.OpenImage("c", "v").ReadAsync(i * Chunk, back);
            CollectionAssert.AreEqual(TestDevices.Pattern(Chunk, i), back, $"chunk {i}");
        }
        await reopened.DisposeAsync();
    }

    /// <summary>
    /// A crash leaves a live log longer than the first window that wraps at the region's end: the open
    /// reads on window by window, across the wrap, and replays every acknowledged write.
    /// </summary>
    [TestMethod]
    [DataRow(4u, DisplayName = "WAL v1 (layout 4)")]
    [DataRow(0u, DisplayName = "WAL v2 (newest layout)")]
    public async Task Open_AfterCrashWithLongWrappedLog_ReadsItAllAndReplaysEveryAcknowledgedWrite(uint layout)
    {
        var power = new CrashSwitch();
        var disk = new CrashDisk("crash0", TestDevices.TargetSize, power);
        var engine = await StorageEngine.FormatAsync([disk]);
        var pool = await engine.CreatePoolAsync("tank", 2L * 1024 * 1024, 1, Options(layout));
        await pool.CreateContainerAsync("c");
        const int Chunks = 256;
        var image = await pool.CreateImageAsync("c", "v", Chunks * Chunk, Chunk);
        var last = new int[Chunks];
        int n = 0;
        async Task WriteNextAsync()
        {
            int chunk = n % Chunks;
            await image.WriteAsync(chunk * Chunk, TestDevices.Pattern(Chunk, n + 1));
            last[chunk] = n + 1;
            n++;
        }
        long L = pool.Shards[0].Header.WalLength;
        long Tail() => (pool.Shards[0].Header.WalHead + pool.Log.Used) % L;
        // A checkpoint puts the head in the region's last quarter (the log checkpoints by itself at half full too).
        while (pool.Shards[0].Header.WalHead < L * 3 / 4)
        {
            await WriteNextAsync();
            if (Tail() >= L * 3 / 4)
                await pool.Log.CheckpointAsync();
        }
        long head = pool.Shards[0].Header.WalHead;
        // Then records past the region's end, more than a few windows of them, and no checkpoint.
        while (pool.Log.Used < L * 2 / 5)
            await WriteNextAsync();
        Assert.AreEqual(head, pool.Shards[0].Header.WalHead, "no checkpoint may have moved the head");
        Assert.IsTrue(Tail() < head, $"the live log must wrap: head {head}, tail {Tail()}");
        Assert.IsTrue(pool.Log.Used > 2 * PoolOpener.FirstLogWindow, $"the live log ({pool.Log.Used} bytes) must be longer than two windows");

        power.CutPower();
        var after = disk.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Kept);
        var (reopened, _) = await TestDevices.OpenAsync([after]);
        var again = await reopened.OpenPoolAsync("tank");
        Assert.IsTrue(again.ReplayedRecords > 0);
        Assert.IsTrue(again.OpenTimings!.LogBytesRead < L, $"read {again.OpenTimings.LogBytesRead} of {L} log bytes");
        var back = new byte[Chunk];
        for (int c = 0; c < Chunks; c++)
        {
            await again.OpenImage("c", "v").ReadAsync(c * Chunk, back);
            CollectionAssert.AreEqual(last[c] == 0 ? new byte[Chunk] : TestDevices.Pattern(Chunk, last[c]), back, $"chunk {c} (write {last[c]})");
        }
        await reopened.DisposeAsync();
    }
}
