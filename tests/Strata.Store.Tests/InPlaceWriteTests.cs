using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Writeback writes into extents no flush covers yet are written in place (docs/format.md,
/// "Overwriting a writeback extent in place"): only the touched blocks and the table at layout 3;
/// a crash at any point leaves one whole earlier contents of the chunk; a failed in-place write
/// makes the pool read-only, so no flush can claim the torn extent's earlier write durable.
/// </summary>
[TestClass]
public sealed class InPlaceWriteTests
{
    private const int KiB = 1024, Block = 4096, T = ChunkChecksum.TableSize;
    private static readonly StorageEngineOptions NoTimer = new() { WritebackFlushInterval = Timeout.InfiniteTimeSpan };

    private static async Task<(Pool Pool, Image Image)> CreateAsync(Engine.Device.IBlockDevice dev, int chunkSize, long imageSize)
    {
        var engine = await StorageEngine.FormatAsync([dev], NoTimer);
        var pool = await engine.CreatePoolAsync("tank", 3L * 1024 * 1024, 1, TestDevices.Layout3Pool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", imageSize, chunkSize);
        return (pool, image);
    }

    private const int Chunk = 128 * KiB;

    /// <summary>An image of two 128 KiB chunks on a counting device whose first chunk was written back (pattern 1) and logged, not flushed.</summary>
    private static async Task<(CountingDevice Dev, Pool Pool, Image Image, byte[] Expect)> LoggedNotFlushedAsync()
    {
        var dev = new CountingDevice("count0", 8L * 1024 * 1024);
        var (pool, image) = await CreateAsync(dev, Chunk, 2 * Chunk);
        var expect = TestDevices.Pattern(Chunk, 1);
        await image.WriteAsync(0, expect, durable: false);
        // Logged by a round of writeback commits only: logged, not flushed, so still not durable.
        await pool.Log.LoggedAsync();
        return (dev, pool, image, expect);
    }

    private static long ExtentOf(Pool pool, Image image, long chunk) => TestHelpers.ReplicaLocations(pool, image, chunk)[0].Offset;

    /// <summary>
    /// Repeated in-place writes into one chunk keep one cached table per replica: each replaces the
    /// superseded replica's entry (BlockTableCache.Replace), so the cache neither grows nor rolls its
    /// generations over (which regrew a dictionary through the large object heap every few thousand
    /// writes), and the next small write still finds the current table without reading it.
    /// </summary>
    [TestMethod]
    public async Task InPlaceWrites_ReplaceTheChunksCachedTable_CacheStaysAtOneEntry()
    {
        const int cs = Chunk;
        var (dev, pool, image, expect) = await LoggedNotFlushedAsync();
        // A claim that meets the committer taking a round copies on write instead (a new extent, whose
        // table a later read caches beside the stale entry): rare, and counted, not assumed away.
        int copied = 0;
        for (int i = 0; i < 200; i++)
        {
            var block = TestDevices.Pattern(Block, 10 + i);
            int at = i % (cs / Block) * Block;
            long before = pool.Log.InPlaceWrites;
            await image.WriteAsync(at, block, durable: false);
            block.CopyTo(expect, at);
            if (pool.Log.InPlaceWrites == before)
                copied++;
        }
        Assert.IsTrue(copied < 100, $"most writes went in place ({copied} of 200 copied on write)");
        Assert.IsTrue(pool.Tables.Count <= 1 + copied, $"cached tables of the one chunk after 200 writes, {copied} of them copies: {pool.Tables.Count}");
        dev.Reset();
        var last = TestDevices.Pattern(Block, 999);
        long was = pool.Log.InPlaceWrites;
        await image.WriteAsync(5 * Block, last, durable: false);
        last.CopyTo(expect, 5 * Block);
        if (pool.Log.InPlaceWrites > was)
            Assert.AreEqual(0L, dev.BytesRead, "the current table came from the cache");
        var back = new byte[cs];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
    }

    /// <summary>
    /// An in-place write keeps the chunk's cached table array and gives it the new block CRCs once the
    /// write is done (the new table is made beside it, so a failed or refused write leaves it as it was):
    /// no array per write. After every write a read verifies through the cache, and at the end the
    /// table on the device, read afresh, matches the cached one entry for entry. (A write may still copy
    /// on write when its claim meets a round being taken; the array to keep is then the new extent's.)
    /// </summary>
    [TestMethod]
    public async Task InPlaceWrites_KeepTheCachedTableArray_ItMatchesTheDeviceAfterEachWrite()
    {
        const int cs = Chunk;
        var (_, pool, image, expect) = await LoggedNotFlushedAsync();
        var back = new byte[cs];
        uint[] Cached()
        {
            var r = pool.Meta.Images[image.Id].Chunks[0].Replicas[0];
            Assert.IsTrue(pool.Tables.TryGet(r, out var crcs), "the chunk's table is cached under its current replica");
            return crcs;
        }
        async Task<uint[]> ReadBackAsync(string what)
        {
            await image.ReadAsync(0, back);
            CollectionAssert.AreEqual(expect, back, what);
            return Cached();
        }
        // The first write in place reads the table and caches it; later ones keep that array.
        await image.WriteAsync(0, TestDevices.Pattern(Block, 5), durable: false);
        TestDevices.Pattern(Block, 5).CopyTo(expect, 0);
        var array = await ReadBackAsync("first write");
        int inPlace = 0;
        for (int i = 0; i <= 40; i++)
        {
            // Single blocks, runs of blocks, an unaligned piece that merges its edges with old bytes, and last the whole chunk.
            byte[] piece = i == 40 ? TestDevices.Pattern(cs, 77) : (i % 3) switch
            {
                0 => TestDevices.Pattern(Block, 20 + i),
                1 => TestDevices.Pattern(3 * Block, 20 + i),
                _ => TestDevices.Pattern(Block + 100, 20 + i),
            };
            int at = i == 40 ? 0 : i % 3 == 2 ? (i % 20) * Block + 700 : (i % 25) * Block;
            long before = pool.Log.InPlaceWrites;
            await image.WriteAsync(at, piece, durable: false);
            piece.CopyTo(expect, at);
            if (pool.Log.InPlaceWrites > before)
            {
                inPlace++;
                Assert.AreSame(array, Cached(), $"write {i} went in place: the cached array is the one the chunk had");
            }
            array = await ReadBackAsync($"write {i}");
        }
        Assert.IsTrue(inPlace > 0, "writes into the unflushed extent went in place");
        // The device's table, read and verified against the map with nothing cached, holds the same CRCs.
        var replica = pool.Meta.Images[image.Id].Chunks[0].Replicas[0];
        var table = new byte[T];
        await pool.Shards[replica.Target].ReadDataAsync(replica.Offset, table);
        Assert.IsTrue(ChunkChecksum.VerifyTable(replica, image.Id, 0, cs, table, out var onDevice).Ok, "the device's table verifies against the map");
        CollectionAssert.AreEqual(array.Take(cs / Block).ToArray(), onDevice!.Take(cs / Block).ToArray());
    }

    /// <summary>
    /// A partial durable write into a chunk a flush covers copies the chunk on write; its new table keeps
    /// the verified old block CRCs and sums only the touched blocks again (ChunkIo.TableOfMerged). Each
    /// write's extent is then read back through a fresh table read: table against the map, every block against the table.
    /// </summary>
    [TestMethod]
    public async Task PartialDurableWrites_CopyOnWrite_NewTableMatchesEveryBlock()
    {
        const int cs = 1024 * KiB;
        var dev = new CountingDevice("count0", 16L * 1024 * 1024);
        var (pool, image) = await CreateAsync(dev, cs, cs);
        var expect = TestDevices.Pattern(cs, 1);
        await image.WriteAsync(0, expect, durable: true);
        var rng = new Random(5);
        for (int i = 0; i < 40; i++)
        {
            long before = ExtentOf(pool, image, 0);
            int len = i % 3 == 0 ? Block : rng.Next(1, 3 * Block);
            int at = i % 3 == 0 ? rng.Next(cs / Block) * Block : rng.Next(0, cs - len);
            var data = TestDevices.Pattern(len, 100 + i);
            await image.WriteAsync(at, data, durable: true);
            data.CopyTo(expect, at);
            Assert.AreNotEqual(before, ExtentOf(pool, image, 0), $"write {i} copied the chunk to a fresh extent");
        }
        Assert.AreEqual(0L, pool.Log.InPlaceWrites);
        // Not from the cache: a copy on write adds no table to it, so these reads check the new tables from the device.
        var back = new byte[cs];
        for (int b = 0; b < cs / Block; b++)
            await image.ReadAsync(b * Block, back.AsMemory(b * Block, Block));
        CollectionAssert.AreEqual(expect, back);
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
    }

    /// <summary>A full cache drops its old generation and reuses it as the new young one: still bounded, entries of the young one kept.</summary>
    [TestMethod]
    public void BlockTableCache_FullGenerations_RollOverAndStayBounded()
    {
        var cache = new BlockTableCache(8);
        var t = new uint[32];
        for (int i = 0; i < 100; i++)
            cache.Add(new Replica(0, i * 4096L, (uint)i), t);
        Assert.IsTrue(cache.Count <= 8, $"{cache.Count} tables held by a cache of 8");
        Assert.IsTrue(cache.TryGet(new Replica(0, 99 * 4096L, 99), out var got) && ReferenceEquals(got, t), "the latest table is held");
        Assert.IsFalse(cache.TryGet(new Replica(0, 0, 0), out _), "the first table was dropped");
    }

    [TestMethod]
    public async Task WritebackOverwrite_NotYetFlushed_WritesOnlyTheTouchedBlocksAndTheTableInPlace()
    {
        const int cs = Chunk;
        var (dev, pool, image, expect) = await LoggedNotFlushedAsync();
        long extent = ExtentOf(pool, image, 0);

        dev.Reset();
        var block = TestDevices.Pattern(Block, 2);
        await image.WriteAsync(2 * Block, block, durable: false);
        block.CopyTo(expect, 2 * Block);
        Assert.AreEqual(extent, ExtentOf(pool, image, 0), "the write copied the chunk to a fresh extent");
        Assert.AreEqual(2L * Block, dev.BytesWrittenIn(extent, T + cs), "bytes written to the chunk's extent: its table and the one block");
        Assert.AreEqual(0L, dev.BytesRead, "bytes read: none (the table the first write made is cached), nothing of the chunk's data");

        // Unaligned across blocks 3 and 4: those two are read, verified, merged and written with the table (now cached).
        dev.Reset();
        var odd = TestDevices.Pattern(100, 3);
        await image.WriteAsync(4 * Block - 50, odd, durable: false);
        odd.CopyTo(expect, 4 * Block - 50);
        Assert.AreEqual(3L * Block, dev.BytesWrittenIn(extent, T + cs), "the table and the two blocks the write touches");
        Assert.AreEqual(2L * Block, dev.BytesRead, "the two blocks the write touches");
        Assert.AreEqual(2L, pool.Log.InPlaceWrites);

        var back = new byte[cs];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);

        // Once a flush covers the mapping, its extent holds durable data: the next writeback write copies on write.
        await image.FlushAsync();
        await image.WriteAsync(0, TestDevices.Pattern(Block, 4), durable: false);
        Assert.AreNotEqual(extent, ExtentOf(pool, image, 0), "a write overwrote a durable extent in place");
        Assert.AreEqual(2L, pool.Log.InPlaceWrites);
    }

    [TestMethod]
    public async Task DurableOverwrite_OfNotYetFlushedWriteback_CopiesOnWrite()
    {
        var dev = new CountingDevice("count0", 8L * 1024 * 1024);
        var (pool, image) = await CreateAsync(dev, 16 * KiB, 64 * KiB);
        await image.WriteAsync(0, TestDevices.Pattern(16 * KiB, 1), durable: false);
        await pool.Log.LoggedAsync();
        long extent = ExtentOf(pool, image, 0);
        var data = TestDevices.Pattern(Block, 2);
        await image.WriteAsync(Block, data);
        Assert.AreNotEqual(extent, ExtentOf(pool, image, 0), "a durable write must get a fresh extent: its record is trusted once acknowledged");
        Assert.AreEqual(0L, pool.Log.InPlaceWrites);
        var back = new byte[Block];
        await image.ReadAsync(Block, back);
        CollectionAssert.AreEqual(data, back);
    }

    /// <summary>
    /// A durable chunk, then three writeback writes to it (a whole-chunk copy on write, then an aligned
    /// and an unaligned write in place), each logged: every subset of the writes pending since the last
    /// flush survives in turn, and each pending write torn with all the others kept. The chunk must hold
    /// one whole contents it had (never a mix, never a checksum error); a flush before the crash keeps the last.
    /// </summary>
    [TestMethod]
    public async Task InPlaceOverwrites_AnySubsetOfUnflushedWritesSurvives_ChunkHoldsOneWholeEarlierContents()
    {
        const int cs = 16 * KiB;
        var power = new CrashSwitch();
        var disk = new CrashDisk("crash0", 8L * 1024 * 1024, power);
        var (pool, image) = await CreateAsync(disk, cs, 2 * cs);
        var contents = new List<byte[]> { TestDevices.Pattern(cs, 10) };
        await image.WriteAsync(0, contents[0]);
        Assert.AreEqual(0, disk.PendingWrites);

        var next = TestDevices.Pattern(cs, 11);
        await image.WriteAsync(0, next, durable: false);
        await pool.Log.LoggedAsync();
        contents.Add((byte[])next.Clone());
        var aligned = TestDevices.Pattern(Block, 12);
        await image.WriteAsync(2 * Block, aligned, durable: false);
        await pool.Log.LoggedAsync();
        aligned.CopyTo(next, 2 * Block);
        contents.Add((byte[])next.Clone());
        var odd = TestDevices.Pattern(100, 13);
        await image.WriteAsync(Block - 60, odd, durable: false);
        await pool.Log.LoggedAsync();
        odd.CopyTo(next, Block - 60);
        contents.Add((byte[])next.Clone());
        Assert.AreEqual(2L, pool.Log.InPlaceWrites);

        int n = disk.PendingWrites;
        Assert.IsTrue(n is >= 6 and <= 12, $"{n} pending writes");
        var seen = new HashSet<int>();
        for (int mask = 0; mask < 1 << n; mask++)
            seen.Add(await CrashReopen.WhichAsync(disk, contents, (i, _, _) => (mask >> i & 1) != 0 ? PendingFate.Kept : PendingFate.Lost, $"kept mask {mask:x}"));
        for (int torn = 0; torn < n; torn++)
            seen.Add(await CrashReopen.WhichAsync(disk, contents, (i, _, _) => i == torn ? PendingFate.Torn : PendingFate.Kept, $"write {torn} torn"));
        // Losing everything brings back the durable contents, keeping everything the last.
        CollectionAssert.IsSubsetOf(new[] { 0, 3 }, seen.ToArray());

        await image.FlushAsync();
        Assert.AreEqual(0, disk.PendingWrites);
        Assert.AreEqual(3, await CrashReopen.WhichAsync(disk, contents, (_, _, _) => PendingFate.Lost, "after a flush"));
    }

    /// <summary>
    /// Whole-chunk writeback writes at layout 3 write the block table and the chunk as two device writes
    /// (the chunk from the caller's memory): a copy on write, then two overwrites in place. Every subset
    /// of the pending writes, and each one torn, leaves one whole contents the chunk had.
    /// </summary>
    [TestMethod]
    public async Task WholeChunkWrites_TableWrittenApart_AnySubsetOfUnflushedWritesSurvives()
    {
        const int cs = 16 * KiB;
        var power = new CrashSwitch();
        var disk = new CrashDisk("crash0", 8L * 1024 * 1024, power);
        var (pool, image) = await CreateAsync(disk, cs, 2 * cs);
        var contents = new List<byte[]> { TestDevices.Pattern(cs, 20) };
        await image.WriteAsync(0, contents[0]);
        Assert.AreEqual(0, disk.PendingWrites);
        long durableExtent = ExtentOf(pool, image, 0);
        for (int i = 1; i <= 3; i++)
        {
            contents.Add(TestDevices.Pattern(cs, 20 + i));
            await image.WriteAsync(0, contents[i], durable: false);
            await pool.Log.LoggedAsync();
        }
        Assert.AreNotEqual(durableExtent, ExtentOf(pool, image, 0), "the first writeback write must copy on write: the extent is durable");
        Assert.AreEqual(2L, pool.Log.InPlaceWrites);

        int n = disk.PendingWrites;
        Assert.IsTrue(n is >= 6 and <= 12, $"{n} pending writes");
        var seen = new HashSet<int>();
        for (int mask = 0; mask < 1 << n; mask++)
            seen.Add(await CrashReopen.WhichAsync(disk, contents, (i, _, _) => (mask >> i & 1) != 0 ? PendingFate.Kept : PendingFate.Lost, $"kept mask {mask:x}"));
        for (int torn = 0; torn < n; torn++)
            seen.Add(await CrashReopen.WhichAsync(disk, contents, (i, _, _) => i == torn ? PendingFate.Torn : PendingFate.Kept, $"write {torn} torn"));
        CollectionAssert.IsSubsetOf(new[] { 0, 3 }, seen.ToArray());
    }

    [TestMethod]
    public async Task InPlaceWrite_DeviceFails_WriteFailsAndPoolTurnsReadOnly()
    {
        const int cs = 16 * KiB;
        var power = new CrashSwitch();
        var disk = new CrashDisk("crash0", 8L * 1024 * 1024, power);
        var (pool, image) = await CreateAsync(disk, cs, 2 * cs);
        var first = TestDevices.Pattern(cs, 20);
        await image.WriteAsync(0, first, durable: false);
        await pool.Log.LoggedAsync();

        // The next device command is the in-place write of the whole chunk (table and data, one write).
        power.Reset(0, faultAt: 1);
        var e = await Assert.ThrowsExactlyAsync<StoreException>(() => image.WriteAsync(0, TestDevices.Pattern(cs, 21), durable: false).AsTask());
        StringAssert.Contains(e.Message, "write to pool 'tank' image 'v' at offset 0 failed");
        Assert.IsTrue(power.Faulted);
        Assert.AreEqual(1L, pool.Log.InPlaceWrites, "the write went to a fresh extent");
        Assert.AreEqual(PoolStatus.ReadOnly, pool.State);
        StringAssert.Contains(pool.ReadOnlyReason, "an in-place write of a writeback extent failed");
        // The first write's extent may be torn: no flush may now say it is durable.
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => image.FlushAsync());
    }
}
