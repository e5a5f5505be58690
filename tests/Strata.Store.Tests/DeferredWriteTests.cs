using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Deferred writes (layout 6, docs/format.md "Deferred writes"): a small write into a durable chunk with a
/// block table logs its blocks and the chunk's new table in a ChunkDeferred record, and only once that record
/// is durable writes them over the chunk's own extent. A crash at any point leaves the old or the new
/// contents whole, and once the write was acknowledged, the new; replay writes the blocks again; a rewrite
/// whose extent left the chunk (and may now hold another chunk) is dropped; a read-only open serves the
/// blocks from the log.
/// </summary>
[TestClass]
public sealed class DeferredWriteTests
{
    private const int KiB = 1024, Block = 4096;
    private const int Chunk = 64 * KiB;
    private static readonly StorageEngineOptions NoTimer = new() { WritebackFlushInterval = Timeout.InfiniteTimeSpan };

    private static async Task<(Pool Pool, Image Image, StorageEngine Engine)> CreateAsync(Engine.Device.IBlockDevice dev, long imageSize, int chunkSize = Chunk)
    {
        var engine = await StorageEngine.FormatAsync([dev], NoTimer);
        // A log large enough that no routine checkpoint moves its head past the records these tests crash on.
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool with { WalBytes = 1024 * 1024 });
        Assert.AreEqual(6u, pool.LayoutVersion);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", imageSize, chunkSize);
        return (pool, image, engine);
    }

    private static CrashDisk NewDisk(CrashSwitch power, string name = "crash0") => new(name, 16L * 1024 * 1024, power);

    private static long ExtentOf(Pool pool, Image image, long chunk) => TestHelpers.ReplicaLocations(pool, image, chunk)[0].Offset;

    [TestMethod]
    public async Task SmallDurableWrite_IntoDurableChunk_WritesInPlace_SameExtentNoCopy()
    {
        var dev = new CountingDevice("count0", 16L * 1024 * 1024);
        var (pool, image, engine) = await CreateAsync(dev, 2 * Chunk);
        var expect = TestDevices.Pattern(Chunk, 1);
        await image.WriteAsync(0, expect);
        long extent = ExtentOf(pool, image, 0);
        dev.Reset();
        // An aligned block, two blocks, and a piece whose edges merge with old bytes.
        (int At, byte[] Data)[] writes = [(5 * Block, TestDevices.Pattern(Block, 2)), (8 * Block, TestDevices.Pattern(2 * Block, 3)), (3 * Block - 100, TestDevices.Pattern(300, 4))];
        foreach (var (at, data) in writes)
        {
            await image.WriteAsync(at, data);
            data.CopyTo(expect, at);
        }
        Assert.AreEqual(3L, pool.Log.DeferredWrites);
        Assert.AreEqual(extent, ExtentOf(pool, image, 0), "the chunk keeps its extent");
        // Log batches, tables and blocks: about 20 KiB a write, where three copies on write would write 3 x 68 KiB.
        long written = dev.Writes.Sum(w => w.Length);
        Assert.IsTrue(written < 2 * Chunk, $"{written} bytes written for three small writes: no chunk was copied");
        var back = new byte[Chunk];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
        // Reopened cleanly (the records replayed, their blocks written again: the same bytes).
        await engine.DisposeAsync();
        var (again, ras) = await TestDevices.OpenAsync([dev]);
        await using var _ = again;
        var p2 = await again.OpenPoolAsync("tank");
        await p2.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable));
    }

    [TestMethod]
    public async Task LargeOrWritebackWrites_AreNotDeferred_ByDefault()
    {
        var dev = new CountingDevice("count0", 16L * 1024 * 1024);
        var (pool, image, engine) = await CreateAsync(dev, 2 * Chunk);
        await using var _ = engine;
        await image.WriteAsync(0, TestDevices.Pattern(2 * Chunk, 1));
        // More than a quarter of the chunk: a copy on write.
        await image.WriteAsync(0, TestDevices.Pattern(Chunk / 2, 2));
        // Writeback: deferred only from Pool.DeferWritebackFromChunkSize on (off unless set).
        await image.FlushAsync();
        await image.WriteAsync(Block, TestDevices.Pattern(Block, 3), durable: false);
        Assert.AreEqual(0L, pool.Log.DeferredWrites);
        await image.FlushAsync();
        pool.DeferWritebackFromChunkSize = Chunk;
        await image.WriteAsync(2 * Block, TestDevices.Pattern(Block, 4), durable: false);
        Assert.AreEqual(1L, pool.Log.DeferredWrites);
        // The next one starts where that one ended (a run of small writes into the chunk): copied once, so the
        // rest of the run goes in place instead of waiting a round each (ChunkMap.DeferredEnd).
        await image.WriteAsync(3 * Block, TestDevices.Pattern(Block, 5), durable: false);
        Assert.AreEqual(1L, pool.Log.DeferredWrites, "a write continuing a deferred one copies the chunk");
        await image.WriteAsync(4 * Block, TestDevices.Pattern(Block, 6), durable: false);
        Assert.AreEqual(1L, pool.Log.InPlaceWrites, "and the run goes on in place");
        // Elsewhere in another durable chunk: deferred.
        await image.WriteAsync(Chunk + 7 * Block, TestDevices.Pattern(Block, 7), durable: false);
        Assert.AreEqual(2L, pool.Log.DeferredWrites);
    }

    /// <summary>
    /// A writeback deferred write (Pool.DeferWritebackFromChunkSize) is answered once its record is queued, before
    /// its round flushes (docs/format.md "Deferred writes", item 9): with the round's flush held in the device, the
    /// write returns; a read of that chunk and a FLUSH wait for the round (the chunk's lock and the record's
    /// writeback ordinal), a read of another chunk does not; once the flush goes on both see the write.
    /// </summary>
    [TestMethod]
    [Timeout(60_000)]
    public async Task WritebackDeferredWrite_AnsweredBeforeItsRound_ChunkReadersAndFlushWaitForIt()
    {
        var hold = new IoHold();
        var disk = new HoldingDisk("hold0", hold, (_, op, _, _) => op == Engine.Device.IoOpcode.Flush);
        var (pool, image, engine) = await CreateAsync(disk, 3 * Chunk);
        await using var _ = engine;
        var expect = TestDevices.Pattern(2 * Chunk, 70);
        await image.WriteAsync(0, expect);
        pool.DeferWritebackFromChunkSize = Chunk;
        hold.Arm();
        var one = TestDevices.Pattern(Block, 71);
        // Answered with the round's flush held: a write that waited for its round would never return here.
        await image.WriteAsync(2 * Block + Chunk, one, durable: false);
        await hold.Held.Task;
        Assert.AreEqual(1L, pool.Log.DeferredWrites);
        one.CopyTo(expect, 2 * Block + Chunk);
        var back = new byte[Chunk];
        Task read, flush;
        try
        {
            read = image.ReadAsync(Chunk, back).AsTask();
            flush = image.FlushAsync();
            var other = new byte[Chunk];
            await image.ReadAsync(0, other);
            CollectionAssert.AreEqual(expect[..Chunk], other, "another chunk reads while the round waits");
            Assert.IsFalse(read.IsCompleted, "a read of the chunk waits for the blocks to be in place");
            Assert.IsFalse(flush.IsCompleted, "a FLUSH covers a writeback deferred write");
        }
        finally
        {
            hold.Release.TrySetResult();
        }
        await read;
        CollectionAssert.AreEqual(expect[Chunk..], back);
        await flush;
        Assert.IsTrue(pool.Log.IsDurableBase(pool.Meta.Images.Values.Single().Chunks.GetLocked(1)!), "durable once FLUSH returned");
    }

    /// <summary>
    /// A deferred write needs a durable base mapping (PoolLog.IsDurableBase): into a chunk whose mapping is a
    /// writeback copy on write no flush covers yet, a small durable write copies on write; once a flush
    /// covered the mapping, the next one is deferred.
    /// </summary>
    [TestMethod]
    public async Task SmallDurableWrite_IntoAnUnflushedWritebackMapping_CopiesOnWrite_AfterAFlushIsDeferred()
    {
        var dev = new CountingDevice("count0", 16L * 1024 * 1024);
        var (pool, image, engine) = await CreateAsync(dev, 2 * Chunk);
        await using var _ = engine;
        var expect = TestDevices.Pattern(Chunk, 60);
        await image.WriteAsync(0, expect);
        // A writeback copy on write (more than a quarter of the chunk): its mapping is not durable yet.
        var half = TestDevices.Pattern(Chunk / 2, 61);
        await image.WriteAsync(0, half, durable: false);
        half.CopyTo(expect, 0);
        long unflushed = ExtentOf(pool, image, 0);
        var one = TestDevices.Pattern(Block, 62);
        await image.WriteAsync(9 * Block, one);
        one.CopyTo(expect, 9 * Block);
        Assert.AreEqual(0L, pool.Log.DeferredWrites, "not deferred over a mapping no flush covers");
        Assert.AreNotEqual(unflushed, ExtentOf(pool, image, 0), "copied on write");
        // That durable write's own mapping is durable: the next small write is deferred, in place.
        long durableExtent = ExtentOf(pool, image, 0);
        var two = TestDevices.Pattern(Block, 63);
        await image.WriteAsync(3 * Block, two);
        two.CopyTo(expect, 3 * Block);
        Assert.AreEqual(1L, pool.Log.DeferredWrites);
        Assert.AreEqual(durableExtent, ExtentOf(pool, image, 0));
        var back = new byte[Chunk];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
    }

    /// <summary>
    /// A durable chunk, then acknowledged deferred writes (an aligned block, an unaligned piece): their records
    /// were flushed, their in-place writes (tables and blocks) were not. Every subset of those pending writes,
    /// and each one torn, must reopen to the last acknowledged contents: replay writes the blocks again.
    /// </summary>
    [TestMethod]
    public async Task AcknowledgedDeferredWrites_AnySubsetOfInPlaceWritesLostOrTorn_ReplayRestoresTheLastContents()
    {
        var disk = NewDisk(new CrashSwitch());
        var (pool, image, _) = await CreateAsync(disk, 2 * Chunk);
        var now = TestDevices.Pattern(Chunk, 10);
        await image.WriteAsync(0, now);
        Assert.AreEqual(0, disk.PendingWrites);
        var contents = new List<byte[]> { (byte[])now.Clone() };
        (int At, byte[] Data)[] writes = [(2 * Block, TestDevices.Pattern(Block, 11)), (Block - 60, TestDevices.Pattern(100, 12))];
        foreach (var (at, data) in writes)
        {
            await image.WriteAsync(at, data);
            data.CopyTo(now, at);
            contents.Add((byte[])now.Clone());
        }
        Assert.AreEqual(2L, pool.Log.DeferredWrites);
        int n = disk.PendingWrites;
        Assert.IsTrue(n is >= 2 and <= 8, $"{n} pending writes: the in-place tables and blocks");
        for (int mask = 0; mask < 1 << n; mask++)
            Assert.AreEqual(2, await CrashReopen.WhichAsync(disk, contents, (i, _, _) => (mask >> i & 1) != 0 ? PendingFate.Kept : PendingFate.Lost, $"kept mask {mask:x}"));
        for (int torn = 0; torn < n; torn++)
            Assert.AreEqual(2, await CrashReopen.WhichAsync(disk, contents, (i, _, _) => i == torn ? PendingFate.Torn : PendingFate.Kept, $"write {torn} torn"));
    }

    /// <summary>
    /// Power cut at every device command of a deferred write (its log write, the flush, the in-place table and
    /// blocks), with the unflushed writes kept, lost or torn at random: the chunk holds the old or the new
    /// contents whole, never a mix and never a checksum error; once the write completed, the new.
    /// </summary>
    [TestMethod]
    public async Task DeferredWrite_PowerCutAtEachCommand_ChunkHoldsOldOrNewWhole()
    {
        int cuts = 0;
        var seen = new HashSet<int>();
        for (int crashAfter = 1; crashAfter <= 8; crashAfter++)
        {
            for (int seed = 0; seed < 6; seed++)
            {
                var power = new CrashSwitch();
                var disk = NewDisk(power);
                var (_, image, engine) = await CreateAsync(disk, 2 * Chunk);
                var old = TestDevices.Pattern(Chunk, 20);
                await image.WriteAsync(0, old);
                var piece = TestDevices.Pattern(Block + 512, 21);
                var @new = (byte[])old.Clone();
                piece.CopyTo(@new, 3 * Block);
                power.Reset(crashAfter, rng: new Random(seed));
                bool acked = false;
                try
                {
                    await image.WriteAsync(3 * Block, piece);
                    acked = true;
                }
                catch (Exception) when (power.Crashed)
                {
                }
                if (!power.Crashed)
                    power.CutPower();
                else
                    cuts++;
                var after = disk.AfterCrash(new Random(seed), new CrashSwitch());
                int which = await CrashReopen.WhichAsync(after, [old, @new], (_, _, _) => PendingFate.Kept, $"crash after {crashAfter} commands, seed {seed}");
                if (acked)
                    Assert.AreEqual(1, which, $"crash after {crashAfter}: the acknowledged write was lost");
                seen.Add(which);
                await engine.DisposeAsync();
            }
        }
        Assert.IsTrue(cuts > 0, "the power was never cut inside a write");
        CollectionAssert.AreEquivalent(new[] { 0, 1 }, seen.ToArray(), "crashes left both the old and the new contents");
    }

    /// <summary>
    /// A deferred write into chunk 0's extent A, then a whole-chunk write of chunk 0 (a copy on write: A is freed)
    /// and a write of chunk 1 that takes A. The deferred record is still in the log: replay must not write its
    /// blocks into A, which now holds chunk 1.
    /// </summary>
    [TestMethod]
    public async Task DeferredRewrite_ExtentReusedByAnotherChunkAfterACopy_IsDropped()
    {
        var disk = NewDisk(new CrashSwitch());
        var (pool, image, _) = await CreateAsync(disk, 2 * Chunk);
        var c0 = TestDevices.Pattern(Chunk, 30);
        await image.WriteAsync(0, c0);
        long a = ExtentOf(pool, image, 0);
        var piece = TestDevices.Pattern(Block, 31);
        await image.WriteAsync(Block, piece);
        Assert.AreEqual(1L, pool.Log.DeferredWrites);
        c0 = TestDevices.Pattern(Chunk, 32);
        await image.WriteAsync(0, c0);
        Assert.AreNotEqual(a, ExtentOf(pool, image, 0), "a whole-chunk write copies on write");
        // Copies on write of chunk 1 until the allocator's cursor comes round to A (each frees the one before).
        long checkpoints = pool.Log.Stats.Checkpoints;
        var c1 = Array.Empty<byte>();
        for (int i = 0; i < 200 && (c1.Length == 0 || ExtentOf(pool, image, 1) != a); i++)
        {
            c1 = TestDevices.Pattern(Chunk, 100 + i);
            await image.WriteAsync(Chunk, c1);
        }
        Assert.AreEqual(a, ExtentOf(pool, image, 1), "chunk 1 took chunk 0's freed extent");
        Assert.AreEqual(checkpoints, pool.Log.Stats.Checkpoints, "no checkpoint moved the log's head past the deferred record");
        var after = disk.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Lost);
        var (engine, ras) = await TestDevices.OpenAsync([after]);
        await using var _ = engine;
        var p2 = await engine.OpenPoolAsync("tank");
        var back = new byte[2 * Chunk];
        await p2.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(c0, back.AsSpan(0, Chunk).ToArray(), "chunk 0");
        CollectionAssert.AreEqual(c1, back.AsSpan(Chunk).ToArray(), "chunk 1: the dropped rewrite left it alone");
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));
    }

    /// <summary>
    /// Acknowledged deferred writes whose in-place writes were lost, opened by a read-only engine: it writes
    /// nothing, and serves the blocks and the new table from the log (no checksum error, the new contents).
    /// </summary>
    [TestMethod]
    public async Task ReadOnlyOpen_InPlaceWritesLost_ServesTheBlocksFromTheLog_WritesNothing()
    {
        var disk = NewDisk(new CrashSwitch());
        var (pool, image, _) = await CreateAsync(disk, 2 * Chunk);
        var now = TestDevices.Pattern(Chunk, 40);
        await image.WriteAsync(0, now);
        var contents = new List<byte[]> { (byte[])now.Clone() };
        foreach (var (at, data) in new[] { (0, TestDevices.Pattern(Block, 41)), (7 * Block + 9, TestDevices.Pattern(2000, 42)) })
        {
            await image.WriteAsync(at, data);
            data.CopyTo(now, at);
        }
        contents.Add((byte[])now.Clone());
        Assert.AreEqual(2L, pool.Log.DeferredWrites);
        Assert.IsTrue(disk.PendingWrites > 0);
        var lost = disk.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Lost);
        string before = TestHelpers.Sha256(lost);
        var (ro, ras) = await TestDevices.OpenAsync([lost], readOnly: true);
        await using (ro)
        {
            var back = new byte[Chunk];
            await (await ro.OpenPoolAsync("tank")).OpenImage("c", "v").ReadAsync(0, back);
            CollectionAssert.AreEqual(contents[1], back, "the read-only open serves the logged blocks");
            Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), string.Join("; ", ras.Events.Select(e => e.Message)));
        }
        Assert.AreEqual(before, TestHelpers.Sha256(lost), "a read-only open wrote nothing");
        // A writable open then writes the blocks in place for good.
        Assert.AreEqual(1, await CrashReopen.WhichAsync(lost, contents, (_, _, _) => PendingFate.Kept, "writable"));
    }

    /// <summary>
    /// rf 2 on two disks: a device error at each command of a deferred write in turn (the log writes, the flushes,
    /// the in-place tables and blocks). Where an in-place write fails on one replica and the other was written,
    /// the write succeeds and that target leaves the pool (as for a failed replica write of new data); either
    /// way the acknowledged bytes read back, now and after a reopen, and no read meets a torn replica.
    /// </summary>
    [TestMethod]
    public async Task DeferredWrite_ReplicaDeviceFailsAtEachCommand_TargetLeavesOrPoolFails_AcknowledgedBytesReadBack()
    {
        int survivedByDrop = 0;
        for (int faultAt = 1; faultAt <= 16; faultAt++)
        {
            var power = new CrashSwitch();
            CrashDisk[] disks = [NewDisk(power), NewDisk(power, "crash1")];
            var ras = new InMemoryRasSink();
            var engine = await StorageEngine.FormatAsync(disks, NoTimer with { Ras = ras });
            var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 2, TestDevices.SmallPool with { WalBytes = 1024 * 1024 });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "v", 2 * Chunk, Chunk);
            var old = TestDevices.Pattern(Chunk, 50);
            await image.WriteAsync(0, old);
            var piece = TestDevices.Pattern(Block, 51);
            var @new = (byte[])old.Clone();
            piece.CopyTo(@new, 6 * Block);
            power.Reset(0, faultAt);
            bool acked;
            try
            {
                await image.WriteAsync(6 * Block, piece);
                acked = true;
            }
            catch (StoreException)
            {
                acked = false;
            }
            if (!power.Faulted)
            {
                // Past the write's last command: every one of them failed once.
                Assert.IsTrue(acked && faultAt > 6, $"fault at {faultAt}: the write issued only {faultAt - 1} commands");
                await engine.DisposeAsync();
                break;
            }
            Assert.AreEqual(1L, pool.Log.DeferredWrites, $"fault at {faultAt}");
            string what = $"fault at command {faultAt} ({(acked ? "acknowledged" : "failed")}; excluded {string.Join(",", pool.ExcludedTargets)}; {string.Join(" | ", ras.Events.Select(e => e.Id))})";
            if (acked)
            {
                var back = new byte[Chunk];
                await image.ReadAsync(0, back);
                CollectionAssert.AreEqual(@new, back, what);
                if (ras.Events.Any(e => e.Id == RasIds.DataWriteFailed && e.Message.Contains("in-place write of a deferred write")))
                {
                    survivedByDrop++;
                    Assert.AreEqual(1, pool.ExcludedTargets.Count, what);
                }
                await image.FlushAsync();
            }
            else
            {
                Assert.AreEqual(PoolStatus.ReadOnly, pool.State, what);
            }
            Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), what);
            await engine.DisposeAsync();
            // Reopened from what the disks hold after a power cut (the fault's disk sound again).
            power.CutPower();
            var after = disks.Select(d => d.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Lost)).ToArray();
            var ras2 = new InMemoryRasSink();
            var again = await StorageEngine.OpenAsync(after, NoTimer with { Ras = ras2 });
            var p2 = await again.OpenPoolAsync("tank");
            var read = new byte[Chunk];
            await p2.OpenImage("c", "v").ReadAsync(0, read);
            if (acked)
                CollectionAssert.AreEqual(@new, read, what + ", reopened");
            else
                Assert.IsTrue(read.AsSpan().SequenceEqual(old) || read.AsSpan().SequenceEqual(@new), what + ", reopened: old or new whole");
            Assert.IsFalse(ras2.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), what + ", reopened: " + string.Join(" | ", ras2.Events.Select(e => e.Message)));
            await again.DisposeAsync();
        }
        Assert.IsTrue(survivedByDrop > 0, "no fault landed on an in-place write that the other replica survived");
    }

    /// <summary>
    /// The record's decoder: a payload round-trips; every truncation, and counts forged near 2^31 or that do not
    /// add up to the payload's length, are refused as corrupt metadata (never an index or arithmetic exception).
    /// </summary>
    [TestMethod]
    public void ChunkDeferredPayload_RoundTrips_TruncatedOrForgedIsCorruptMetadata()
    {
        Replica[] replicas = [new(0, 69632, 0xAABBCCDD), new(1, 4096, 0xAABBCCDD)];
        var crcs = Enumerable.Range(0, 16).Select(i => (uint)(i * 7919)).ToArray();
        var payload = new byte[MetaRecords.ChunkDeferredLength(2, 16, 2)];
        int at = MetaRecords.EncodeChunkDeferred(payload, 7, 42, replicas, 3, 2, crcs);
        TestDevices.Pattern(2 * Block, 5).CopyTo(payload, at);
        var d = MetaRecords.ReadChunkDeferred(payload);
        Assert.AreEqual((7u, 42L, 3, 2, at), (d.Image, d.Chunk, d.FirstBlock, d.Blocks, d.BlocksAt));
        CollectionAssert.AreEqual(replicas, d.Replicas);
        CollectionAssert.AreEqual(crcs, d.Crcs);
        for (int n = 0; n < payload.Length; n += n < 200 ? 1 : 997)
            Assert.ThrowsExactly<CorruptMetadataException>(() => MetaRecords.ReadChunkDeferred(payload.AsSpan(0, n)), $"truncated to {n}");
        int counts = MetaRecords.ChunkMapLength(replicas);
        foreach (var (field, value) in new[] { (0, int.MaxValue), (0, -1), (0, 15), (4, 0), (4, 3), (4, int.MaxValue), (8, 0), (8, 17), (8, int.MaxValue), (8, -4) })
        {
            var forged = (byte[])payload.Clone();
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(forged.AsSpan(counts + field), value);
            Assert.ThrowsExactly<CorruptMetadataException>(() => MetaRecords.ReadChunkDeferred(forged), $"field {field} = {value}");
        }
    }

}
