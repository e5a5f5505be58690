using Strata.Engine.Device;
using Strata.Engine.Pools;

namespace Strata.Store.Tests;

/// <summary>
/// The store's write path allocates (almost) nothing per write (issue 17): 4 KiB durable writes at
/// queue depth 32, as the store benchmark's randwrite-4k-qd32 row issues them, measured with
/// GC.GetTotalAllocatedBytes(precise) around each run of 10,240 writes. The counter is process-wide, so
/// whatever else the test host runs lands in a sample: five runs are measured and the least is judged
/// (on a loaded machine the committer lags, writeback commits pile up past the pooled ones kept spare, and
/// a run makes new ones: 450-550 B a write in two of three runs seen so).
/// Chunk maps are reused (ChunkMapSpares): the tests below also check that a reused map is never one a
/// reader can still hold.
/// </summary>
[TestClass]
[DoNotParallelize]
public sealed class WriteAllocationTests
{
    private const int Block = 4096;
    private const int Depth = 32;
    private const int WritesPerRun = 10240;
    private const long ImageSize = 8L << 20;

    /// <summary>
    /// What a write may allocate on memory targets: nothing of its own (its chunk map is a superseded one
    /// reused, its commit pooled, its round reused, its async steps' boxes from a pool every thread shares),
    /// only its share of a contended lock's or round slot's wait. The least of five measured 0.6-1.9 B in ten
    /// runs on a loaded machine (0.7-8 B with the runtime's per-thread box caches; 111-142 B when every write
    /// made a ChunkMap and its replica array, 88 B, and every round its Round, completions and closures).
    /// </summary>
    private const double MaxBytesPerWrite = 6;

    /// <summary>
    /// As <see cref="MaxBytesPerWrite"/> on io_uring file targets, where completions arrive on the device's
    /// polling thread: the boxes the write's steps and each round's log write and flush rent on one thread
    /// and give back on another come from a pool every thread shares (SharedPoolAsyncValueTaskMethodBuilder),
    /// and a writer's acknowledgement queues its pooled commit, not a work item. The least of five measured
    /// 0.7-1.2 B in ten runs on a loaded machine (15-57 B with the runtime's per-thread and per-CPU box caches,
    /// 111-171 B before maps and rounds were reused). A box made again per round (~10 B a write) fails it.
    /// </summary>
    private const double MaxBytesPerFileWrite = 8;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public async Task DurableWrites_4KiBAtQueueDepth32_AllocateLittlePerWrite() => await MeasureAsync(TouchedMemory(), durable: true);

    /// <summary>
    /// Writeback (NBD writes without FUA): copy-on-write into fresh extents and, for chunks written again
    /// before a flush, in place; their commits are pooled like the durable ones (580-620 B a write before).
    /// </summary>
    [TestMethod]
    public async Task WritebackWrites_4KiBAtQueueDepth32_AllocateLittlePerWrite() => await MeasureAsync(TouchedMemory(), durable: false);

    private static IBlockDevice[] TouchedMemory()
    {
        var devs = TestDevices.Memory(2, 96L << 20);
        // A memory device allocates a page on its first write: every page is touched first.
        foreach (var d in devs)
            for (long at = 0; at < d.Geometry.Capacity; at += MemoryBlockDevice.PageSize)
                d.WriteBytes(at, [0]);
        return devs;
    }

    /// <summary>The benchmark's path: io_uring file targets with O_DIRECT, completions on the polling thread, two log shards.</summary>
    [TestMethod]
    public async Task DurableWrites_4KiBAtQueueDepth32_FileTargets_AllocateLittlePerWrite()
    {
        var dir = Directory.CreateTempSubdirectory("strata-wralloc-").FullName;
        var devs = new List<IBlockDevice>();
        try
        {
            for (int i = 0; i < 2; i++)
                devs.Add(NativeBlockDevice.Open($"file:{Path.Combine(dir, $"t{i}")}?create=1&size=96M&direct=1&qd=128"));
            await MeasureAsync([.. devs], durable: true, MaxBytesPerFileWrite);
        }
        finally
        {
            foreach (var d in devs)
                d.Dispose();
            Directory.Delete(dir, true);
        }
    }

    private async Task MeasureAsync(IBlockDevice[] devs, bool durable, double bound = MaxBytesPerWrite)
    {
        var (engine, _) = await TestDevices.FormatAsync(devs);
        // A 24 MiB log: no checkpoint (which allocates with the size of the state) falls in a measured run.
        var pool = await engine.CreatePoolAsync("p", 2 * (40L << 20), 1, new PoolCreateOptions { WalBytes = 24L << 20, MinChunkSize = Block, MetadataBytes = 64 * 1024 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", ImageSize, Block);
        var model = TestDevices.Pattern((int)ImageSize, 1);
        await image.WriteAsync(0, model);

        var buffers = Enumerable.Range(0, Depth).Select(_ => new byte[Block]).ToArray();
        var rngs = Enumerable.Range(0, Depth).Select(i => new Random(100 + i)).ToArray();
        // Warm-up: pooled objects, tiered compilation, thread-pool threads. A writeback commit is held until its
        // round is done (up to the 20 ms gather): on memory targets thousands are, and the pool reaches that many
        // commits over the first few runs (each of those allocated about 690 B a write).
        for (int warm = 0; warm < (durable ? 1 : 4); warm++)
            await RunAsync(image, model, buffers, rngs, WritesPerRun, durable);
        double least = double.MaxValue;
        for (int run = 0; run < 5; run++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            await RunAsync(image, model, buffers, rngs, WritesPerRun, durable);
            double perWrite = (double)(GC.GetTotalAllocatedBytes(precise: true) - before) / WritesPerRun;
            TestContext.WriteLine($"run {run}: {perWrite:F1} managed bytes allocated per 4 KiB {(durable ? "durable" : "writeback")} write at QD {Depth}");
            least = Math.Min(least, perWrite);
        }
        var back = new byte[ImageSize];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(model, back, "every write reads back");
        Assert.IsLessThan(bound, least, $"{least:F1} bytes allocated per 4 KiB write, the least of five runs");
        await engine.DisposeAsync();
    }

    /// <summary>
    /// Writes reuse the maps they supersede: once every chunk was written through the one-chunk path, a run
    /// of writes makes almost no new ChunkMap (each write in flight, and each superseded map whose extents
    /// wait for a flush, holds one) and reuses one per write. A read of the whole image before (multi-chunk
    /// groups, which use the maps under their locks only) and a trim keep none of them from reuse.
    /// </summary>
    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public async Task Writes_EveryChunkWrittenOnce_ReuseTheMapsTheySupersede(bool durable)
    {
        var (engine, _) = await TestDevices.FormatAsync(TouchedMemory());
        var (pool, image, model) = await CreateImageAsync(engine);
        var buffers = Enumerable.Range(0, Depth).Select(_ => new byte[Block]).ToArray();
        var rngs = Enumerable.Range(0, Depth).Select(i => new Random(200 + i)).ToArray();
        for (long at = 0; at < ImageSize; at += Block)
            await image.WriteAsync(at, model.AsMemory((int)at, Block), durable);
        // Writeback: flushed, so the run below copies every chunk on write once (an overwrite before a flush goes
        // in place, its old map straight back) and the maps that supersedes are the spares the measured run needs.
        await image.FlushAsync();
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable);
        var whole = new byte[ImageSize];
        await image.ReadAsync(0, whole);
        CollectionAssert.AreEqual(model, whole, "the image reads back whole");
        if (durable)
        {
            // Nor does a trim of a whole chunk (it removes that chunk's map under all locks). Durable writes only:
            // the trim's flush round makes the next writeback write to every chunk copy on write, and how many
            // superseded maps are back by then is the flush timer's business, not the hold's.
            await image.TrimAsync(ImageSize - Block, Block);
            Array.Clear(model, (int)ImageSize - Block, Block);
        }
        // The maps the last run superseded by copy on write wait for a flush round before they are spare again (a
        // second at most, by the flush timer): flushed here, so the run below starts with them whatever the timer did.
        await image.FlushAsync();
        long created = pool.MapSpares.Created, reused = pool.MapSpares.Reused;
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable);
        long made = pool.MapSpares.Created - created, took = pool.MapSpares.Reused - reused;
        TestContext.WriteLine($"{(durable ? "durable" : "writeback")}: {made} maps made, {took} reused for {WritesPerRun} writes");
        Assert.IsLessThan(WritesPerRun / 20, made, $"{made} chunk maps made for {WritesPerRun} writes");
        Assert.IsGreaterThan(WritesPerRun * 9 / 10, took, $"{took} chunk maps reused for {WritesPerRun} writes");
        await image.FlushAsync();
        var back = new byte[ImageSize];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(model, back, "every write reads back");
        await engine.DisposeAsync();
    }

    /// <summary>
    /// A checkpoint's capture holds references to the maps it copied and encodes them after the state's lock
    /// (PoolStateCodec.Capture): while it lasts, writes that supersede those maps must not reuse them, or the
    /// checkpoint would record other chunks' extents. Writes go on between the capture and its encoding (and
    /// reuse maps installed since); the encoding is still the state as captured.
    /// </summary>
    [TestMethod]
    public async Task CheckpointCapture_WritesSupersedeItsMaps_EncodesTheMapsAsCaptured()
    {
        var (engine, _) = await TestDevices.FormatAsync(TouchedMemory());
        var (pool, image, model) = await CreateImageAsync(engine);
        var buffers = Enumerable.Range(0, Depth).Select(_ => new byte[Block]).ToArray();
        var rngs = Enumerable.Range(0, Depth).Select(i => new Random(300 + i)).ToArray();
        for (long at = 0; at < ImageSize; at += Block)
            await image.WriteAsync(at, model.AsMemory((int)at, Block));
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable: true);
        PoolStateCodec.PoolStateCapture capture;
        byte[] expected;
        lock (pool.Meta.Sync)
        {
            expected = PoolStateCodec.Serialize(pool.Meta);
            capture = PoolStateCodec.Capture(pool.Meta);
        }
        long reused = pool.MapSpares.Reused;
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable: true);
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable: false);
        // Maps installed after the capture were reused meanwhile (the test exercises reuse), never the captured ones.
        Assert.IsGreaterThan(0L, pool.MapSpares.Reused - reused, "writes after the capture reused maps installed since");
        CollectionAssert.AreEqual(expected, capture.Encode(), "the capture encodes the maps as they were when it was taken");
        capture.Release();
        await engine.DisposeAsync();
    }

    /// <summary>
    /// Checkpoints capture the chunks into the log's own arrays, one checkpoint after another (a few MiB for
    /// a large image: made once, not at every checkpoint), and let go of the maps once encoded.
    /// </summary>
    [TestMethod]
    public async Task Checkpoints_OneAfterAnother_CaptureIntoTheLogsOwnArrays()
    {
        var (engine, _) = await TestDevices.FormatAsync(TouchedMemory());
        var (pool, image, model) = await CreateImageAsync(engine);
        var buffers = Enumerable.Range(0, Depth).Select(_ => new byte[Block]).ToArray();
        var rngs = Enumerable.Range(0, Depth).Select(i => new Random(500 + i)).ToArray();
        for (long at = 0; at < ImageSize; at += Block)
            await image.WriteAsync(at, model.AsMemory((int)at, Block));
        await pool.Log.CheckpointAsync();
        var owned = pool.Log.CaptureBuffers;
        Assert.IsNotNull(owned, "the log has its capture arrays back once the checkpoint is written");
        var (keys, maps) = (owned.Keys, owned.Maps);
        Assert.IsGreaterThanOrEqualTo((int)(ImageSize / Block), keys.Length, "the arrays took every chunk");
        Assert.IsTrue(maps.All(m => m == null), "the arrays keep no map alive after the checkpoint");
        for (int i = 0; i < 3; i++)
        {
            await RunAsync(image, model, buffers, rngs, WritesPerRun / 4, durable: i % 2 == 0);
            await pool.Log.CheckpointAsync();
        }
        Assert.AreSame(owned, pool.Log.CaptureBuffers, "later checkpoints gave the same arrays back");
        Assert.AreSame(keys, owned.Keys, "later checkpoints captured the keys into the same array");
        Assert.AreSame(maps, owned.Maps, "later checkpoints captured the maps into the same array");
        var back = new byte[ImageSize];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(model, back, "every write reads back");
        await engine.DisposeAsync();
    }

    /// <summary>
    /// A map handed out to a caller that may keep it (PoolState.ChunkAt: a chunk mover's Location, which it
    /// later compares by reference with the chunk's map) is never reused: superseded many times over, it
    /// still names the extents it named, and is not the chunk's map again.
    /// </summary>
    [TestMethod]
    public async Task ChunkAt_MapKeptByItsCaller_IsNeverReused()
    {
        var (engine, _) = await TestDevices.FormatAsync(TouchedMemory());
        var (pool, image, model) = await CreateImageAsync(engine);
        var meta = pool.FindImage("c", "v");
        var buffers = Enumerable.Range(0, Depth).Select(_ => new byte[Block]).ToArray();
        var rngs = Enumerable.Range(0, Depth).Select(i => new Random(400 + i)).ToArray();
        for (long at = 0; at < ImageSize; at += Block)
            await image.WriteAsync(at, model.AsMemory((int)at, Block));
        await RunAsync(image, model, buffers, rngs, WritesPerRun, durable: true);
        var kept = new ChunkMap?[Depth];
        var named = new Replica[Depth][];
        for (int i = 0; i < Depth; i++)
        {
            kept[i] = pool.Meta.ChunkAt(meta, i);
            named[i] = [.. kept[i]!.Replicas];
        }
        long reused = pool.MapSpares.Reused;
        for (int round = 0; round < 4; round++)
        {
            for (int i = 0; i < Depth; i++)
                await image.WriteAsync((long)i * Block, buffers[i]);
            await RunAsync(image, model, buffers, rngs, WritesPerRun, durable: round % 2 == 0);
        }
        Assert.IsGreaterThan(0L, pool.MapSpares.Reused - reused, "the writes reused maps");
        for (int i = 0; i < Depth; i++)
        {
            CollectionAssert.AreEqual(named[i], kept[i]!.Replicas, $"the map of chunk {i} handed out still names its extents");
            Assert.AreNotSame(kept[i], pool.Meta.ChunkAt(meta, i), $"the map of chunk {i} handed out is not the chunk's map again");
        }
        await engine.DisposeAsync();
    }

    private static async Task<(Pool Pool, Image Image, byte[] Model)> CreateImageAsync(StorageEngine engine)
    {
        var pool = await engine.CreatePoolAsync("p", 2 * (40L << 20), 1, new PoolCreateOptions { WalBytes = 24L << 20, MinChunkSize = Block, MetadataBytes = 64 * 1024 });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", ImageSize, Block);
        return (pool, image, TestDevices.Pattern((int)ImageSize, 1));
    }

    /// <summary>
    /// <see cref="Depth"/> writers, each writing random blocks of its own (block index = its slot modulo
    /// the depth, so the model follows each block's last write), <paramref name="writes"/> in all.
    /// </summary>
    private static async Task RunAsync(Image image, byte[] model, byte[][] buffers, Random[] rngs, int writes, bool durable)
    {
        var workers = new Task[Depth];
        for (int slot = 0; slot < Depth; slot++)
            workers[slot] = WriterAsync(image, model, buffers[slot], rngs[slot], slot, writes / Depth, durable);
        await Task.WhenAll(workers);
    }

    private static async Task WriterAsync(Image image, byte[] model, byte[] buffer, Random rng, int slot, int writes, bool durable)
    {
        const int blocks = (int)(ImageSize / Block);
        for (int i = 0; i < writes; i++)
        {
            long at = (long)(rng.Next(blocks / Depth) * Depth + slot) * Block;
            rng.NextBytes(buffer);
            await image.WriteAsync(at, buffer, durable);
            buffer.CopyTo(model.AsSpan((int)at));
        }
    }
}
