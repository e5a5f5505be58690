using Strata.Engine.Device;
using Strata.Engine.Pools;

namespace Strata.Store.Tests;

[TestClass]
public sealed class GroupCommitTests
{
    /// <summary>Counts writes that land in one byte range (the shard's log).</summary>
    private sealed class CountingDisk(string name, long capacity) : MemoryBlockDevice(name, capacity)
    {
        public long RangeStart = -1, RangeEnd = -1, DataStart = long.MaxValue;
        public int Writes;
        public int DataWrites;
        /// <summary>When set, the first log write waits until this many data writes happened (no timing in the test).</summary>
        public int HoldLogUntilDataWrites;
        private readonly ManualResetEventSlim _dataDone = new();

        protected override void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
        {
            if (opcode == IoOpcode.Write && offset >= DataStart && Interlocked.Increment(ref DataWrites) >= HoldLogUntilDataWrites)
                _dataDone.Set();
            if (opcode == IoOpcode.Write && offset >= RangeStart && offset < RangeEnd)
            {
                if (Interlocked.Increment(ref Writes) == 1 && HoldLogUntilDataWrites > 0)
                    _dataDone.Wait(TimeSpan.FromSeconds(30));
            }
            base.Execute(opcode, offset, length, buffer, flags);
        }
    }

    [TestMethod]
    public async Task ConcurrentWrites_ShareLogWrites_AllDurable()
    {
        var disk = new CountingDisk("count0", TestDevices.TargetSize);
        var (engine, _) = await TestDevices.FormatAsync([disk]);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 1 << 20, 4096);
        var shard = pool.Shards[0];
        disk.RangeStart = shard.WalStart;
        disk.RangeEnd = shard.WalStart + shard.Header.WalLength;
        const int N = 64;
        // The first log write is held until every data write happened, so the others must queue behind it.
        disk.DataStart = shard.Base + shard.Header.DataOffset;
        disk.HoldLogUntilDataWrites = N;
        await Task.WhenAll(Enumerable.Range(0, N).Select(i => Task.Run(() => img.WriteAsync(i * 4096L, TestDevices.Pattern(4096, i)))));
        Assert.IsTrue(disk.Writes < N, $"{disk.Writes} log writes for {N} concurrent writes: no group commit");
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync([disk]);
        var img2 = (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v");
        for (int i = 0; i < N; i++)
        {
            var b = new byte[4096];
            await img2.ReadAsync(i * 4096L, b);
            CollectionAssert.AreEqual(TestDevices.Pattern(4096, i), b);
        }
    }
}
