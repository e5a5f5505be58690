using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Writeback writes (Image.WriteAsync with durable false, what NBD writes without FUA use): visible at
/// once, durable only after a flush round (Image.FlushAsync, any durable write, a checkpoint, or the
/// engine's WritebackFlushInterval); a crash before then loses them chunk by chunk and never exposes
/// other bytes; extents they supersede are not reused until they are durable.
/// </summary>
[TestClass]
public sealed class WritebackTests
{
    private const int ChunkSize = 4096;
    private static readonly StorageEngineOptions NoTimer = new() { WritebackFlushInterval = Timeout.InfiniteTimeSpan };

    private sealed record Setup(CrashDisk[] Disks, CrashSwitch Power, Pool Pool, Image Image);

    private static async Task<Setup> CreateAsync(int targets, int rf, StorageEngineOptions? options = null, long poolBytesPerTarget = 1024L * 1024, int imageChunks = 16,
        long diskBytes = 4L * 1024 * 1024)
    {
        var power = new CrashSwitch();
        var disks = Enumerable.Range(0, targets).Select(i => new CrashDisk($"crash{i}", diskBytes, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks, options ?? NoTimer);
        var pool = await engine.CreatePoolAsync("tank", targets * poolBytesPerTarget, rf, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", imageChunks * ChunkSize, ChunkSize);
        return new Setup(disks, power, pool, image);
    }

    private static async Task<byte[]> ReopenAndReadAsync(CrashDisk[] disks, Func<int, long, long, PendingFate> fate, int length)
    {
        var after = disks.Select(d => d.AfterCrash(new CrashSwitch(), fate)).ToArray();
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.OpenAsync(after, NoTimer with { Ras = ras });
        var pool = await engine.OpenPoolAsync("tank");
        var back = new byte[length];
        await pool.OpenImage("c", "v").ReadAsync(0, back);
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), "a crash exposed bad data");
        await engine.DisposeAsync();
        return back;
    }

    [TestMethod]
    [DataRow(1, 1)]
    [DataRow(2, 2)]
    public async Task Writeback_VisibleAtOnce_LostByACrashBeforeAFlush_PreviousContentsIntact(int targets, int rf)
    {
        var (disks, _, pool, image) = await CreateAsync(targets, rf);
        var durable = TestDevices.Pattern(8 * ChunkSize, 1);
        await image.WriteAsync(0, durable);
        Assert.IsTrue(disks.All(d => d.PendingWrites == 0), "a durable write left unflushed writes");

        // Overwrite chunks 0..1 (partly) and write the never-written chunk 10, all writeback.
        var wb1 = TestDevices.Pattern(ChunkSize + 100, 2);
        var wb2 = TestDevices.Pattern(ChunkSize, 3);
        await image.WriteAsync(50, wb1, durable: false);
        await image.WriteAsync(10 * ChunkSize, wb2, durable: false);
        var expect = new byte[16 * ChunkSize];
        durable.CopyTo(expect, 0);
        wb1.CopyTo(expect, 50);
        wb2.CopyTo(expect, 10 * ChunkSize);
        var now = new byte[expect.Length];
        await image.ReadAsync(0, now);
        CollectionAssert.AreEqual(expect, now, "writeback writes are not visible to reads");
        Assert.IsTrue(disks.Any(d => d.PendingWrites > 0), "writeback writes were flushed");
        Assert.IsTrue(pool.Log.HasDeferredFrees, "the extents writeback superseded were freed before the new mapping was durable");

        // Power fails: nothing unflushed survives. The durable contents come back, unchanged.
        var lost = await ReopenAndReadAsync(disks, (_, _, _) => PendingFate.Lost, expect.Length);
        var old = new byte[expect.Length];
        durable.CopyTo(old, 0);
        CollectionAssert.AreEqual(old, lost);

        // Or everything unflushed survives: the writeback contents, once their records are in the log
        // (a writeback write is answered before its record is logged; a crash before that loses it).
        await pool.Log.LoggedAsync();
        var kept = await ReopenAndReadAsync(disks, (_, _, _) => PendingFate.Kept, expect.Length);
        CollectionAssert.AreEqual(expect, kept);
    }

    [TestMethod]
    public async Task WritebackWrites_CopyOnWriteAndInPlace_ReuseTheirPooledCommitsOnceFlushed()
    {
        // More writebacks in flight at once than the spares once kept (256): each holds its own commit until its round is done.
        const int chunks = 600;
        var (_, _, pool, image) = await CreateAsync(1, 1, poolBytesPerTarget: 6L * 1024 * 1024, imageChunks: chunks, diskBytes: 16L * 1024 * 1024);
        var expect = new byte[chunks * ChunkSize];
        async Task WriteAllAsync(int seed)
        {
            var data = TestDevices.Pattern(ChunkSize, seed);
            // Queued at once, as a deep client queue does: every commit is in flight together.
            await Task.WhenAll(Enumerable.Range(0, chunks).Select(i => image.WriteAsync((long)i * ChunkSize, data, durable: false).AsTask()));
            for (int i = 0; i < chunks; i++)
                data.CopyTo(expect, i * ChunkSize);
        }
        async Task FlushedAsync()
        {
            // The second flush's round completes after the first round let its commits go.
            await image.FlushAsync();
            await image.FlushAsync();
        }

        // Each cycle: copy-on-write (the chunks are fresh, or flushed), in place (not flushed since), then a
        // flush, which lets every commit go. At most two passes of commits are ever held at once, so reused
        // commits never number more; made anew for every write beyond a spare limit, they would.
        const int cycles = 4;
        for (int c = 0; c < cycles; c++)
        {
            await WriteAllAsync(2 * c + 1);
            await WriteAllAsync(2 * c + 2);
            await FlushedAsync();
        }
        // (A write that meets the committer taking a round copies on write instead.)
        Assert.IsTrue(pool.Log.InPlaceWrites > chunks, $"{pool.Log.InPlaceWrites} writes in place");
        long created = pool.Log.PooledCommitsCreated;
        Assert.IsTrue(created > 0, "writeback writes used no pooled commit");
        Assert.IsTrue(created <= 2 * chunks, $"{created} commits made for {2 * cycles * chunks} writes: made anew instead of reused");
        var back = new byte[expect.Length];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
    }

    [TestMethod]
    public async Task Writeback_ThenFlush_SurvivesACrashThatLosesEverythingUnflushed()
    {
        var (disks, _, pool, image) = await CreateAsync(1, 1);
        var data = TestDevices.Pattern(5 * ChunkSize + 77, 4);
        await image.WriteAsync(123, data, durable: false);
        await image.FlushAsync();
        Assert.AreEqual(0, disks[0].PendingWrites);
        Assert.IsFalse(pool.Log.HasDeferredFrees);
        // A flush with nothing writeback since costs no I/O at all.
        await image.FlushAsync();
        Assert.AreEqual(0, disks[0].PendingWrites);
        var back = await ReopenAndReadAsync(disks, (_, _, _) => PendingFate.Lost, 16 * ChunkSize);
        CollectionAssert.AreEqual(data, back[123..(123 + data.Length)]);
    }

    [TestMethod]
    public async Task DurableWrite_AfterWriteback_MakesTheWritebackDurableToo()
    {
        var (disks, _, _, image) = await CreateAsync(1, 1);
        var wb = TestDevices.Pattern(3 * ChunkSize, 5);
        await image.WriteAsync(0, wb, durable: false);
        var d = TestDevices.Pattern(ChunkSize, 6);
        await image.WriteAsync(9 * ChunkSize, d);
        Assert.AreEqual(0, disks[0].PendingWrites);
        var back = await ReopenAndReadAsync(disks, (_, _, _) => PendingFate.Lost, 16 * ChunkSize);
        CollectionAssert.AreEqual(wb, back[..(3 * ChunkSize)]);
        CollectionAssert.AreEqual(d, back[(9 * ChunkSize)..(10 * ChunkSize)]);
    }

    [TestMethod]
    public async Task Writeback_NoFlushAsked_BecomesDurableWithinTheInterval()
    {
        var (disks, _, _, image) = await CreateAsync(1, 1, new StorageEngineOptions { WritebackFlushInterval = TimeSpan.FromMilliseconds(100) });
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 7), durable: false);
        Assert.IsTrue(disks[0].PendingWrites > 0);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (disks[0].PendingWrites > 0 && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        Assert.AreEqual(0, disks[0].PendingWrites, "no flush round followed the writeback write");
    }

    /// <summary>
    /// As the NBD benchmark does: 1 MiB sequential writeback overwrites, 8 at once, of a full image, with
    /// room for twice the writes in flight: every pass supersedes more than the free space.
    /// </summary>
    [TestMethod]
    public async Task Writeback_ConcurrentLargeOverwrites_OfAFullImage_NoSpaceError()
    {
        var devices = TestDevices.Memory(1, 64L << 20);
        var engine = await StorageEngine.FormatAsync(devices, NoTimer);
        const long size = 16L << 20;
        var pool = await engine.CreatePoolAsync("tank", size + (16L << 20), 1, TestDevices.SmallPool with { WalBytes = 1 << 20 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", size, ChunkSize);
        await FillThenOverwriteAsync(image, passes: 3);
        await engine.DisposeAsync();
    }

    /// <summary>
    /// Fills the image with durable 1 MiB writes, then overwrites it <paramref name="passes"/> times in
    /// writeback, 8 writes at once, each pass with its own bytes, flushes, and reads every byte back:
    /// the last pass's bytes must be everywhere.
    /// </summary>
    private static async Task FillThenOverwriteAsync(Image image, int passes)
    {
        long size = image.Size;
        var fill = TestDevices.Pattern(1 << 20, 3);
        for (long at = 0; at < size; at += fill.Length)
            await image.WriteAsync(at, fill);
        var piece = fill;
        for (int pass = 0; pass < passes; pass++)
        {
            var bytes = piece = TestDevices.Pattern(1 << 20, 10 + pass);
            long next = -bytes.Length;
            await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
            {
                for (long at; (at = Interlocked.Add(ref next, bytes.Length)) < size;)
                    await image.WriteAsync(at, bytes, durable: false);
            })));
        }
        await image.FlushAsync();
        var back = new byte[piece.Length];
        for (long at = 0; at < size; at += back.Length)
        {
            await image.ReadAsync(at, back);
            Assert.IsTrue(back.AsSpan().SequenceEqual(piece), $"the MiB at {at} does not hold the last pass's bytes");
        }
    }

    [TestMethod]
    [DataRow(ChunkSize)]
    [DataRow(1 << 20)]
    public async Task Writeback_ConcurrentLargeOverwrites_FileTarget_NoSpaceError(int chunkSize)
    {
        var dir = Directory.CreateTempSubdirectory("strata-wb-").FullName;
        try
        {
            using var dev = Strata.Engine.Device.NativeBlockDevice.Open($"file:{Path.Combine(dir, "t0")}?create=1&size=256M&direct=1&qd=128");
            var engine = await StorageEngine.FormatAsync([dev]);
            const long size = 64L << 20;
            var pool = await engine.CreatePoolAsync("tank", size / 4 * 5, 1, new PoolCreateOptions { MinChunkSize = 4096 });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "v", size, chunkSize);
            await FillThenOverwriteAsync(image, passes: 4);
            await engine.DisposeAsync();
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [TestMethod]
    public async Task Writeback_OverwritesBeyondFreeSpace_FlushReleasesSupersededExtents_NoSpaceError()
    {
        // A pool with room for the image and little more: overwriting it three times in writeback
        // needs the superseded extents back, which only a flush round may release.
        var (_, _, pool, image) = await CreateAsync(1, 1, poolBytesPerTarget: 256 * 1024, imageChunks: 48);
        var expect = new byte[image.Size];
        for (int pass = 0; pass < 3; pass++)
        {
            var data = TestDevices.Pattern((int)image.Size, 10 + pass);
            for (int c = 0; c < 48; c++)
                await image.WriteAsync((long)c * ChunkSize, data.AsMemory(c * ChunkSize, ChunkSize), durable: false);
            data.CopyTo(expect, 0);
        }
        var back = new byte[image.Size];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
        await image.FlushAsync();
        Assert.IsFalse(pool.Log.HasDeferredFrees);
    }

    /// <summary>
    /// A writer that found no free extent looks for space that may come back only after its attempt:
    /// a flush round that ran in between (another writer's, here the hook's) returned the extents a
    /// writeback write superseded and left nothing pending and nothing held. The space is free, so the
    /// writer must try again rather than report ENOSPC. One chunk (ChunkIo) and two (ChunkRuns).
    /// </summary>
    [TestMethod]
    [DataRow(1)]
    [DataRow(2)]
    public async Task Write_OutOfSpace_ExtentsFreedBeforeTheWriterLooks_TriesAgainAndSucceeds(int chunks)
    {
        // 64 chunks of room, an image that leaves `chunks` free once it is written.
        var (_, _, pool, image) = await CreateAsync(1, 1, poolBytesPerTarget: 256 * 1024, imageChunks: 64 - chunks);
        var fill = TestDevices.Pattern((int)image.Size, 1);
        await image.WriteAsync(0, fill);
        int bytes = chunks * ChunkSize;
        var first = TestDevices.Pattern(bytes, 2);
        await image.WriteAsync(0, first, durable: false);
        Assert.AreEqual(0, pool.Query().Targets[0].FreeBytes, "the first overwrite did not take the last free extents");
        Assert.IsTrue(pool.Log.HasDeferredFrees);

        int looked = 0;
        pool.BeforeSpaceCheck = async () =>
        {
            if (Interlocked.Increment(ref looked) == 1)
                await image.FlushAsync();
        };
        var second = TestDevices.Pattern(bytes, 3);
        await image.WriteAsync(bytes, second, durable: false);
        pool.BeforeSpaceCheck = null;
        Assert.AreEqual(1, looked, "the second overwrite found space at once");

        await image.FlushAsync();
        var expect = (byte[])fill.Clone();
        first.CopyTo(expect, 0);
        second.CopyTo(expect, bytes);
        var back = new byte[image.Size];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
    }

    /// <summary>
    /// Writeback records are applied when queued and logged by a later batch, so a checkpoint taken
    /// meanwhile may hold mappings whose records are logged after it; replay then applies them again.
    /// Many writers overwrite chunks in writeback while checkpoints run, power fails with every
    /// unflushed write kept or every one lost (one crash each), and each chunk must hold one of the
    /// versions written to it; after a flush every chunk holds its last version, whatever is lost.
    /// </summary>
    [TestMethod]
    public async Task Writeback_CheckpointsWhileQueued_EveryChunkHoldsAWrittenVersion()
    {
        const int chunks = 32;
        var (disks, _, pool, image) = await CreateAsync(1, 1, poolBytesPerTarget: 2L * 1024 * 1024, imageChunks: chunks);
        var versions = Enumerable.Range(0, chunks).Select(_ => new List<byte[]> { new byte[ChunkSize] }).ToArray();
        var last = new byte[chunks][];
        for (int c = 0; c < chunks; c++)
            last[c] = versions[c][0];
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            for (int i = 0; i < 60; i++)
            {
                int c = (w * 61 + i * 7) % chunks;
                var data = TestDevices.Pattern(ChunkSize, w * 1000 + i + 1);
                // Each chunk belongs to one writer (c % 4 == w after the mapping below), so its order is known.
                c = c / 4 * 4 + w;
                lock (versions[c])
                    versions[c].Add(data);
                await image.WriteAsync((long)c * ChunkSize, data, durable: false);
                last[c] = data;
            }
        })).ToArray();
        var checkpoints = Task.Run(async () =>
        {
            while (!writers.All(t => t.IsCompleted))
                await pool.Log.CheckpointAsync();
        });
        await Task.WhenAll(writers);
        await checkpoints;

        foreach (var fate in new[] { PendingFate.Kept, PendingFate.Lost })
        {
            var back = await ReopenAndReadAsync(disks, (_, _, _) => fate, chunks * ChunkSize);
            for (int c = 0; c < chunks; c++)
            {
                var got = back.AsSpan(c * ChunkSize, ChunkSize).ToArray();
                Assert.IsTrue(versions[c].Any(v => v.AsSpan().SequenceEqual(got)), $"chunk {c} after a crash ({fate}) holds bytes never written to it");
            }
        }

        await image.FlushAsync();
        var flushed = await ReopenAndReadAsync(disks, (_, _, _) => PendingFate.Lost, chunks * ChunkSize);
        for (int c = 0; c < chunks; c++)
            CollectionAssert.AreEqual(last[c], flushed.AsSpan(c * ChunkSize, ChunkSize).ToArray(), $"chunk {c} lost a flushed write");
    }
}
