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

    /// <summary>
    /// Buffered file targets (reads of the page cache on the caller's thread): whole chunks of a
    /// multi-chunk read are read straight into the caller's buffer and verified there, the request's
    /// partial edge chunks through a buffer; a chunk that does not verify (rf 1: no good copy) fails
    /// the read naming it, and its bytes are not left in the caller's buffer.
    /// </summary>
    [TestMethod]
    [DataRow(2u, DisplayName = "layout 2: one CRC per chunk")]
    [DataRow(3u, DisplayName = "layout 3: block tables in front of the chunks")]
    public async Task Read_ManyChunksOnBufferedFiles_WholeChunksInPlaceCorruptOneFailsUnseen(uint layout)
    {
        string dir = Directory.CreateTempSubdirectory("strata-inplace-").FullName;
        var dev = NativeBlockDevice.Open($"file:{Path.Combine(dir, "t0.img")}?create=1&size=16M&direct=0", new DeviceOptions { ArenaBytes = 0 });
        try
        {
            var (engine, ras) = await TestDevices.FormatAsync([dev]);
            await using var _ = engine;
            var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = layout });
            await pool.CreateContainerAsync("c");
            const int cs = 16 * 1024;
            var img = await pool.CreateImageAsync("c", "v", 16 * cs, cs);
            var data = TestDevices.Pattern(16 * cs, 5);
            await img.WriteAsync(0, data);

            // Unaligned at both ends: partial first and last chunks, whole ones between.
            var back = new byte[14 * cs + 300];
            await img.ReadAsync(cs / 2, back);
            CollectionAssert.AreEqual(data.AsSpan(cs / 2, back.Length).ToArray(), back);

            // Corrupt chunk 5 behind the store's back: a raw write of the device block holding one of its bytes.
            var meta = pool.Meta.Images[img.Id];
            var r = meta.Chunks[5].Replicas[0];
            var shard = pool.Shards[r.Target];
            long at = shard.Base + shard.Header.DataOffset + r.Offset + (meta.Chunks[5].Blocks ? ChunkChecksum.TableSize : 0) + 100;
            long block = at / 4096 * 4096;
            var raw = new byte[4096];
            await dev.ReadAsync(block, raw);
            raw[at - block] ^= 0xFF;
            await dev.WriteAsync(block, raw);
            var dest = new byte[16 * cs];
            var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.ReadAsync(0, dest).AsTask());
            StringAssert.Contains(e.Message, $"at offset {5 * cs}");
            Assert.IsTrue(ras.WithId(RasIds.DataChecksumMismatch).Any(x => x.Offset == 5 * cs));
            Assert.IsTrue(dest.AsSpan(5 * cs, cs).IndexOfAnyExcept((byte)0) < 0, "the bad chunk's bytes never reach the caller");
            // The chunks around it still read.
            var before = new byte[5 * cs];
            await img.ReadAsync(0, before);
            CollectionAssert.AreEqual(data[..(5 * cs)], before);
            var after = new byte[10 * cs];
            await img.ReadAsync(6 * cs, after);
            CollectionAssert.AreEqual(data[(6 * cs)..], after);
        }
        finally
        {
            dev.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// Layout 3 on a buffered file target: a chunk's write puts its block table and the chunk down with
    /// one vectored page-cache call (ChunkIo.WriteApartAsync), and a read of whole chunks in place reads
    /// each chunk's table and the chunk with one (ChunkRuns.ReadRunInPlaceAsync); the bytes read back.
    /// </summary>
    [TestMethod]
    public async Task Layout3OnBufferedFile_TableAndChunkMoveInOneCallEach()
    {
        string dir = Directory.CreateTempSubdirectory("strata-vec-").FullName;
        var dev = NativeBlockDevice.Open($"file:{Path.Combine(dir, "t0.img")}?create=1&size=16M&direct=0", new DeviceOptions { ArenaBytes = 0 });
        try
        {
            var (engine, _) = await TestDevices.FormatAsync([dev]);
            await using var _e = engine;
            var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 1, TestDevices.Layout3Pool);
            await pool.CreateContainerAsync("c");
            const int cs = 16 * 1024;
            var img = await pool.CreateImageAsync("c", "v", 8 * cs, cs);
            var data = TestDevices.Pattern(8 * cs, 9);
            for (int i = 0; i < 8; i++)
            {
                long before = dev.CachedPairs;
                await img.WriteAsync(i * cs, data.AsMemory(i * cs, cs));
                Assert.AreEqual(before + 1, dev.CachedPairs, $"chunk {i}: the table and the chunk were not one write");
            }
            Assert.IsTrue(pool.Meta.Images[img.Id].Chunks[0].Blocks, "layout 3 chunks carry block tables");

            long beforeRead = dev.CachedPairs;
            var back = new byte[6 * cs];
            await img.ReadAsync(cs, back);
            CollectionAssert.AreEqual(data.AsSpan(cs, 6 * cs).ToArray(), back);
            Assert.AreEqual(beforeRead + 6, dev.CachedPairs, "each whole chunk's table and data were not one read");
        }
        finally
        {
            dev.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }
}
