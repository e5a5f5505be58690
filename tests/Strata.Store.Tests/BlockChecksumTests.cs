using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Layout 3 (block_checksums) on the data path (docs/format.md, "Per-block checksums"): a chunk's
/// extent starts with a 4 KiB block table whose CRC is in the map, reads verify only the blocks
/// they touch, and a bad block is named, served from the other replica and repaired.
/// </summary>
[TestClass]
public sealed class BlockChecksumTests
{
    private const int KiB = 1024, MiB = 1024 * 1024, Block = 4096;

    private static async Task<(StorageEngine Engine, Pool Pool, Image Image, InMemoryRasSink Ras)> CreateAsync(
        IBlockDevice[] devs, int rf, uint layout, int chunkSize, long imageSize, long walBytes = 0)
    {
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var options = TestDevices.SmallPool with { LayoutVersion = layout };
        if (walBytes > 0)
            options = options with { WalBytes = walBytes };
        var pool = await engine.CreatePoolAsync("tank", devs.Length * 8L * MiB, rf, options);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", imageSize, chunkSize);
        return (engine, pool, image, ras);
    }

    private static long Used(Pool pool) => pool.Query().Targets.Sum(t => t.UsedBytes);

    [TestMethod]
    [DataRow(3u, 2 * Block, Block, DisplayName = "layout 3: the table and one block, then the block alone")]
    [DataRow(2u, MiB, MiB, DisplayName = "layout 2: the whole chunk each time")]
    public async Task Read4KiB_OneMiBChunks_ReadsOnlyWhatItVerifies(uint layout, int firstRead, int secondRead)
    {
        var dev = new CountingDevice("count0", 16L * MiB);
        var (_, pool, image, ras) = await CreateAsync([dev], 1, layout, MiB, 4L * MiB);
        var data = TestDevices.Pattern(2 * MiB, 7);
        await image.WriteAsync(0, data);
        Assert.AreEqual(layout == 3 ? 2L * (MiB + Block) : 2L * MiB, Used(pool));

        var back = new byte[Block];
        dev.Reset();
        await image.ReadAsync(300 * KiB, back);
        Assert.AreEqual((long)firstRead, dev.BytesRead, "bytes read from the device for the first 4 KiB read of the chunk");
        CollectionAssert.AreEqual(data.AsSpan(300 * KiB, Block).ToArray(), back);

        dev.Reset();
        await image.ReadAsync(MiB - Block, back);
        Assert.AreEqual((long)secondRead, dev.BytesRead, "bytes read for a second 4 KiB read of the same chunk");
        CollectionAssert.AreEqual(data.AsSpan(MiB - Block, Block).ToArray(), back);

        // An unaligned read across two blocks of the other chunk verifies exactly those two blocks.
        var two = new byte[100];
        dev.Reset();
        await image.ReadAsync(MiB + 2 * Block - 50, two);
        if (layout == 3)
            Assert.AreEqual(3L * Block, dev.BytesRead, "the table and the two blocks the read touches");
        CollectionAssert.AreEqual(data.AsSpan(MiB + 2 * Block - 50, 100).ToArray(), two);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
    }

    [TestMethod]
    public async Task Read_OneBlockOfOneReplicaCorrupt_OtherReplicaServesEventNamesBlockAndRepairs()
    {
        var devs = TestDevices.Memory(3);
        var (_, pool, image, ras) = await CreateAsync(devs, 2, 3, 64 * KiB, MiB);
        var data = TestDevices.Pattern(128 * KiB, 3);
        await image.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, image, 1);
        long block5 = where[0].Offset + ChunkChecksum.TableSize + 5 * Block;
        TestHelpers.FlipByte(where[0].Device, block5 + 10);

        // Block 6 of the damaged replica is intact and is all this read verifies.
        var b6 = new byte[Block];
        await image.ReadAsync(64 * KiB + 6 * Block, b6);
        CollectionAssert.AreEqual(data.AsSpan(64 * KiB + 6 * Block, Block).ToArray(), b6);
        Assert.IsFalse(ras.WithId(RasIds.DataChecksumMismatch).Any(), "a read of an intact block does not see its neighbour's damage");

        var part = new byte[100];
        await image.ReadAsync(64 * KiB + 5 * Block + 7, part);
        CollectionAssert.AreEqual(data.AsSpan(64 * KiB + 5 * Block + 7, 100).ToArray(), part);
        var mismatch = ras.WithId(RasIds.DataChecksumMismatch).Single();
        Assert.AreEqual(where[0].Target, mismatch.Target);
        Assert.AreEqual(64L * KiB + 5 * Block, mismatch.Offset);
        StringAssert.Contains(mismatch.Message, $"the replica on target {where[0].Target} does not match its CRC32C in 4 KiB block 5 (image offset {64 * KiB + 5 * Block})");
        Assert.AreEqual(where[0].Target, ras.WithId(RasIds.ReplicaRepaired).Single().Target);
        var repaired = new byte[Block];
        where[0].Device.ReadBytes(block5, repaired);
        CollectionAssert.AreEqual(data.AsSpan(64 * KiB + 5 * Block, Block).ToArray(), repaired);
    }

    [TestMethod]
    public async Task Read_OneBlockCorruptRf1_ThatBlockFailsOthersStillRead()
    {
        var devs = TestDevices.Memory(1);
        var (_, pool, image, ras) = await CreateAsync(devs, 1, 3, 64 * KiB, MiB);
        var data = TestDevices.Pattern(64 * KiB, 4);
        await image.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, image, 0).Single();
        TestHelpers.FlipByte(where.Device, where.Offset + ChunkChecksum.TableSize + 2 * Block + 1);

        var b3 = new byte[Block];
        await image.ReadAsync(3 * Block, b3);
        CollectionAssert.AreEqual(data.AsSpan(3 * Block, Block).ToArray(), b3);
        var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => image.ReadAsync(2 * Block + 100, new byte[10]).AsTask());
        StringAssert.Contains(e.Message, "pool 'tank', image 'v' at offset 0");
        StringAssert.Contains(ras.WithId(RasIds.DataChecksumMismatch).Single().Message, "4 KiB block 2");
        Assert.AreEqual(1, ras.WithId(RasIds.DataUnrecoverable).Count());
        // A partial write merges with the whole verified chunk: it must not launder the bad block.
        await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => image.WriteAsync(10 * Block, new byte[10]).AsTask());
    }

    [TestMethod]
    public async Task Read_BlockTableCorrupt_MismatchNamesTableOtherReplicaServes()
    {
        var devs = TestDevices.Memory(2);
        var (_, pool, image, ras) = await CreateAsync(devs, 2, 3, 16 * KiB, MiB);
        var data = TestDevices.Pattern(16 * KiB, 5);
        await image.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, image, 0);
        // The table's image id: a table that names another image is refused like a bad CRC.
        TestHelpers.FlipByte(where[0].Device, where[0].Offset + 8);
        // The write cached the table it made; the read must meet the device's.
        pool.Tables.Clear();
        var back = new byte[Block];
        await image.ReadAsync(Block, back);
        CollectionAssert.AreEqual(data.AsSpan(Block, Block).ToArray(), back);
        StringAssert.Contains(ras.WithId(RasIds.DataChecksumMismatch).Single().Message, "has a block table that does not match the chunk map");
        Assert.AreEqual(1, ras.WithId(RasIds.ReplicaRepaired).Count());
    }

    [TestMethod]
    public async Task Write_MixedSizesAtLayout3_SpaceIncludesTablesAndReopenFromLogAndCheckpointReadsBack()
    {
        var devs = TestDevices.Memory(2);
        // A log that these writes never fill to half: the committer checkpoints after any round that
        // leaves it more than half full, and whether the last round does depends on how writeback
        // commits were gathered (timing), so "reopen from the log" would sometimes replay nothing.
        var (engine, pool, image, _) = await CreateAsync(devs, 2, 3, 16 * KiB, 256 * KiB, walBytes: 1 * MiB);
        var small = await pool.CreateImageAsync("c", "small", 64 * KiB, Block);
        var model = new byte[256 * KiB];
        var rng = new Random(11);
        for (int i = 0; i < 40; i++)
        {
            int len = rng.Next(1, i % 4 == 0 ? 100 * KiB : 20 * KiB);
            int off = rng.Next(0, model.Length - len + 1);
            var d = TestDevices.Pattern(len, 100 + i);
            d.CopyTo(model, off);
            await image.WriteAsync(off, d, durable: i % 3 != 0);
        }
        await small.WriteAsync(0, TestDevices.Pattern(8 * KiB, 9));
        long mapped = pool.ListImages("c").Single(i => i.Label == "v").MappedBytes / (16 * KiB);
        // rf 2: each 16 KiB chunk takes 20 KiB on two targets; a 4 KiB chunk keeps its single CRC and no table.
        Assert.AreEqual(2L * (mapped * (16 * KiB + Block) + 2 * Block), Used(pool));
        await image.FlushAsync();

        async Task CheckAsync(Pool p)
        {
            var back = new byte[model.Length];
            await p.OpenImage("c", "v").ReadAsync(0, back);
            CollectionAssert.AreEqual(model, back);
            var s = new byte[8 * KiB];
            await p.OpenImage("c", "small").ReadAsync(0, s);
            CollectionAssert.AreEqual(TestDevices.Pattern(8 * KiB, 9), s);
        }
        await CheckAsync(pool);
        await pool.CloseAsync(checkpoint: false);
        await engine.DisposeAsync();
        var (fromLog, _) = await TestDevices.OpenAsync(devs);
        var replayed = await fromLog.OpenPoolAsync("tank");
        Assert.IsTrue(replayed.ReplayedRecords > 0);
        await CheckAsync(replayed);
        Assert.AreEqual(2L * (mapped * (16 * KiB + Block) + 2 * Block), Used(replayed), "the allocator is rebuilt with each extent's table");
        await fromLog.DisposeAsync();
        var (fromCheckpoint, ras) = await TestDevices.OpenAsync(devs);
        var again = await fromCheckpoint.OpenPoolAsync("tank");
        Assert.AreEqual(0, again.ReplayedRecords);
        await CheckAsync(again);
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));
    }

    [TestMethod]
    [DataRow("Lost")]
    [DataRow("Torn")]
    public async Task Replay_Layout3RecordDurableExtentNot_DroppedAndChunkKeepsPreviousContents(string fate)
    {
        const int cs = 16 * KiB;
        var power = new CrashSwitch();
        var disks = new[] { new CrashDisk("crash0", 4L * MiB, power) };
        var engine = await StorageEngine.FormatAsync(disks);
        var pool = await engine.CreatePoolAsync("tank", MiB, 1, TestDevices.Layout3Pool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 4 * cs, cs);
        var acked = TestDevices.Pattern(cs, 1);
        await image.WriteAsync(cs, acked);

        power.CrashAtFlush = true;
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => image.WriteAsync(cs + 100, TestDevices.Pattern(Block, 2)).AsTask());
        var s = pool.Shards[0];
        long dataStart = s.Base + s.Header.DataOffset;
        var next = new CrashSwitch();
        var after = disks.Select(d => d.AfterCrash(next, (_, offset, _) => offset >= dataStart ? Enum.Parse<PendingFate>(fate) : PendingFate.Kept)).ToArray();

        var (reopenedEngine, ras) = await TestDevices.OpenAsync(after);
        var reopened = await reopenedEngine.OpenPoolAsync("tank");
        Assert.AreEqual(1, reopened.DroppedTailRecords);
        var back = new byte[cs];
        await reopened.OpenImage("c", "v").ReadAsync(cs, back);
        CollectionAssert.AreEqual(acked, back);
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));
    }

    [TestMethod]
    public void BlockTable_BuiltForAChunk_VerifiesOnlyForThatImageChunkAndData()
    {
        var data = TestDevices.Pattern(32 * KiB, 6);
        var extent = new byte[ChunkChecksum.TableSize + data.Length];
        uint crc = ChunkChecksum.BuildTable(7, 3, data, extent.AsSpan(0, ChunkChecksum.TableSize));
        data.CopyTo(extent, ChunkChecksum.TableSize);
        var r = new Replica(1, 8192, crc);
        Assert.IsTrue(ChunkChecksum.VerifyExtent(r, 7, 3, data.Length, extent).Ok);
        Assert.AreEqual(ChunkVerdict.TableBlock, ChunkChecksum.VerifyExtent(r, 8, 3, data.Length, extent).Block, "another image's table");
        Assert.IsFalse(ChunkChecksum.VerifyExtent(r, 7, 4, data.Length, extent).Ok, "another chunk's table");
        extent[ChunkChecksum.TableSize + 6 * Block + 9] ^= 1;
        var v = ChunkChecksum.VerifyExtent(r, 7, 3, data.Length, extent);
        Assert.AreEqual((false, 6), (v.Ok, v.Block));
        Assert.AreEqual((4096, 8192), ChunkChecksum.VerifiedRange(true, 32 * KiB, 4096 + 10, 5000));
        Assert.AreEqual((0, 32 * KiB), ChunkChecksum.VerifiedRange(false, 32 * KiB, 4096 + 10, 5000));
    }

    [TestMethod]
    public void CopyChecksum_BlockCrcs_MatchTheBuiltTableAndTheBytesAndNothingElse()
    {
        var data = TestDevices.Pattern(32 * KiB, 8);
        var table = new byte[ChunkChecksum.TableSize];
        ChunkChecksum.BuildTable(7, 3, data, table);
        var crcs = Enumerable.Range(0, 8).Select(k => Crc32C.Compute(data.AsSpan(k * Block, Block))).ToArray();
        var blocks = new CopyChecksum(0, crcs);
        Assert.IsTrue(blocks.MatchesTable(table));
        Assert.IsTrue(blocks.Matches(data));
        Assert.IsNull(new CopyChecksum(0, crcs[..4]).MatchesTable(table), "another block count: not comparable");
        Assert.IsNull(new CopyChecksum(Crc32C.Compute(data), default).MatchesTable(table), "a chunk CRC: not comparable with a table");
        Assert.IsTrue(new CopyChecksum(Crc32C.Compute(data), default).Matches(data));

        var other = (byte[])data.Clone();
        other[5 * Block + 17] ^= 0x40;
        var otherTable = new byte[ChunkChecksum.TableSize];
        ChunkChecksum.BuildTable(7, 3, other, otherTable);
        Assert.IsFalse(blocks.MatchesTable(otherTable));
        Assert.IsFalse(blocks.Matches(other));
        Assert.IsFalse(blocks.Matches(other.AsSpan(0, 16 * KiB)), "fewer bytes than the blocks expected");
        Assert.IsFalse(new CopyChecksum(Crc32C.Compute(data), default).Matches(other));
    }

    /// <summary>
    /// The check of an image migration's copy before it is written (ChunkIo.WriteAsync, expect): a
    /// whole chunk whose bytes are not the ones the source verified is refused, nothing is written.
    /// </summary>
    [TestMethod]
    [DataRow(3u, true, DisplayName = "table built: the source's block CRCs")]
    [DataRow(3u, false, DisplayName = "table built: the source's chunk CRC")]
    [DataRow(2u, true, DisplayName = "no table: the source's block CRCs")]
    [DataRow(2u, false, DisplayName = "no table: the source's chunk CRC")]
    public async Task WriteWithCopyChecksum_BytesNotTheSourcesRefusedNothingWritten(uint layout, bool blockForm)
    {
        const int cs = 64 * KiB;
        var (_, pool, image, _) = await CreateAsync(TestDevices.Memory(1), 1, layout, cs, 4L * cs);
        var data = TestDevices.Pattern(cs, 9);
        CopyChecksum Expect(byte[] bytes) => blockForm
            ? new CopyChecksum(0, Enumerable.Range(0, cs / Block).Select(k => Crc32C.Compute(bytes.AsSpan(k * Block, Block))).ToArray())
            : new CopyChecksum(Crc32C.Compute(bytes), default);
        var meta = pool.Meta.Images[image.Id];
        var corrupt = (byte[])data.Clone();
        corrupt[3 * Block + 1] ^= 1;
        long used = Used(pool);

        var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => pool.ChunkIo.WriteAsync(meta, 1, 0, corrupt, durable: false, Expect(data)).AsTask());
        StringAssert.Contains(e.Message, "nothing was written");
        Assert.IsNull(pool.ChunkIo.Lookup(meta, 1));
        Assert.AreEqual(used, Used(pool));

        await pool.ChunkIo.WriteAsync(meta, 1, 0, data, durable: false, Expect(data));
        var back = new byte[cs];
        await image.ReadAsync(cs, back);
        CollectionAssert.AreEqual(data, back);
    }

    /// <summary>
    /// A whole chunk handed with room for its table in front (a migration's copy): the table is built
    /// there and the extent written from that buffer; room whose tail is not the data is not used.
    /// </summary>
    [TestMethod]
    public async Task WriteWithTableRoom_TableBuiltInFrontOnlyWhenTheDataIsItsTail()
    {
        const int cs = 64 * KiB, T = ChunkChecksum.TableSize;
        var devs = TestDevices.Memory(1);
        var (engine, pool, image, ras) = await CreateAsync(devs, 1, 3, cs, 4L * cs);
        var meta = pool.Meta.Images[image.Id];
        var buffer = new byte[T + cs];
        TestDevices.Pattern(cs, 4).CopyTo(buffer, T);
        var data = buffer.AsMemory(T, cs);
        await pool.ChunkIo.WriteAsync(meta, 2, 0, data, durable: false, null, buffer);
        var map = pool.ChunkIo.Lookup(meta, 2)!;
        Assert.IsTrue(map.Blocks);
        Assert.IsTrue(ChunkChecksum.VerifyExtent(map.Replicas[0], meta.Id, 2, cs, buffer).Ok, "the table was built in the room in front of the chunk");

        var elsewhere = new byte[T + cs];
        var other = TestDevices.Pattern(cs, 5);
        await pool.ChunkIo.WriteAsync(meta, 3, 0, other, durable: true, null, elsewhere);
        Assert.IsTrue(elsewhere.All(b => b == 0), "room whose tail is not the data is left alone");

        await image.FlushAsync();
        await engine.DisposeAsync();
        var (reopenedEngine, _) = await TestDevices.OpenAsync(devs);
        await using var _e = reopenedEngine;
        var reopened = (await reopenedEngine.OpenPoolAsync("tank")).OpenImage("c", "v");
        var back = new byte[2 * cs];
        await reopened.ReadAsync(2 * cs, back);
        CollectionAssert.AreEqual(buffer[T..], back[..cs]);
        CollectionAssert.AreEqual(other, back[cs..]);
        Assert.AreEqual(0, ras.Events.Count(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable));
    }
}
