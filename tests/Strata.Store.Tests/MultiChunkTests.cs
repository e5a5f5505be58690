using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>Requests spanning many chunks: adjacent extents go in one device command, the chunks' records in one log round.</summary>
[TestClass]
public sealed class MultiChunkTests
{
    /// <summary>Counts writes and reads per region (the shard's log and data area).</summary>
    private sealed class CountingDisk(string name, long capacity) : MemoryBlockDevice(name, capacity)
    {
        public (long Start, long End) Log = (-1, -1), Data = (-1, -1);
        public int LogWrites, DataWrites, DataReads;

        protected override void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
        {
            bool log = offset >= Log.Start && offset < Log.End, data = offset >= Data.Start && offset < Data.End;
            if (opcode == IoOpcode.Write && log)
                Interlocked.Increment(ref LogWrites);
            if (opcode == IoOpcode.Write && data)
                Interlocked.Increment(ref DataWrites);
            if (opcode == IoOpcode.Read && data)
                Interlocked.Increment(ref DataReads);
            base.Execute(opcode, offset, length, buffer, flags);
        }
    }

    [TestMethod]
    public async Task WriteAndRead_ManyChunks_OneDeviceCommandPerRunOneLogRound()
    {
        var disk = new CountingDisk("count0", TestDevices.TargetSize);
        var (engine, _) = await TestDevices.FormatAsync([disk]);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 1 << 20, 4096);
        var shard = pool.Shards[0];
        disk.Log = (shard.WalStart, shard.WalStart + shard.Header.WalLength);
        disk.Data = (shard.Base + shard.Header.DataOffset, shard.Base + shard.Header.DataOffset + shard.Header.DataLength);

        var data = TestDevices.Pattern(64 * 4096, 1);
        await img.WriteAsync(8192, data);
        Assert.AreEqual(1, disk.DataWrites, "64 chunks on one target, allocated as one run: one device write");
        Assert.AreEqual(1, disk.LogWrites, "the 64 chunk-map records share one log round");

        var back = new byte[data.Length + 100];
        await img.ReadAsync(8192 - 50, back);
        Assert.AreEqual(1, disk.DataReads, "adjacent extents are read with one device read");
        CollectionAssert.AreEqual(data, back[50..^50]);
        CollectionAssert.AreEqual(new byte[50], back[..50], "unwritten chunk before");
        CollectionAssert.AreEqual(new byte[50], back[^50..], "unwritten chunk after");

        // A partial overwrite across chunk boundaries keeps the bytes around it.
        var patch = TestDevices.Pattern(3 * 4096, 2);
        await img.WriteAsync(8192 + 1000, patch);
        patch.CopyTo(data, 1000);
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync([disk]);
        var again = new byte[data.Length];
        await (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v").ReadAsync(8192, again);
        CollectionAssert.AreEqual(data, again);
    }

    [TestMethod]
    public async Task Read_ManyChunksOneWithNoGoodCopy_FailsNamingThatChunk()
    {
        var devs = TestDevices.Memory(2);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 64 * 1024, 4096);
        var data = TestDevices.Pattern(64 * 1024, 3);
        await img.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, img, 5).Single();
        TestHelpers.FlipByte(where.Device, where.Offset + 7);

        var back = new byte[64 * 1024];
        var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.ReadAsync(0, back).AsTask());
        StringAssert.Contains(e.Message, "pool 'tank', image 'v' at offset 20480");
        Assert.AreEqual(20480L, ras.WithId(RasIds.DataChecksumMismatch).Single().Offset);
        Assert.IsTrue(back.AsSpan(20480, 4096).IndexOfAnyExcept((byte)0) < 0, "the bad chunk's bytes never reach the caller");
        // The chunks around it still read.
        await img.ReadAsync(0, back.AsMemory(0, 20480));
        CollectionAssert.AreEqual(data[..20480], back[..20480]);
    }
}
