using System.Buffers.Binary;
using System.IO.Compression;
using Strata.Engine.Device;
using Strata.Engine.Pools;

namespace Strata.Store.Tests;

/// <summary>
/// Golden images under tests/Fixtures/: gzip of a 16-byte header ("STRFIX01", u32
/// target count, u32 MiB per target) followed by each target's raw bytes. Written
/// by <see cref="FixtureTests.Fixtures_Regenerate_WhenAsked"/> with
/// STRATA_WRITE_FIXTURES=1; never regenerate a shipped layout's image.
/// </summary>
internal static class GoldenFixtures
{
    public const string Layout1 = "layout1-pool.img.gz";
    public const string Future = "future-layout99.img.gz";
    public const string Layout2 = "layout2-pool.img.gz";
    public const string Layout3 = "layout3-pool.img.gz";
    public const string Layout4 = "layout4-pool.img.gz";
    public const string Layout5 = "layout5-pool.img.gz";
    public const int Targets = 2;
    public const long TargetBytes = 4L * 1024 * 1024;
    public const ulong FutureIncompatBit = 1UL << 40;

    /// <summary>Compressible, position-dependent content (so a misplaced chunk shows).</summary>
    public static byte[] Content(int length, int seed)
    {
        var b = new byte[length];
        for (int i = 0; i < length; i++)
            b[i] = (byte)((i / 97 * 31 + seed * 7 + i % 13) & 0xFF);
        return b;
    }

    /// <summary>Builds the layout-1 pool the fixture holds; leaves the last records in the WAL (not checkpointed) so opening replays them.</summary>
    public static async Task<MemoryBlockDevice[]> BuildLayout1Async()
    {
        var devs = Enumerable.Range(0, Targets).Select(i => new MemoryBlockDevice($"golden{i}", TargetBytes)).ToArray();
        var engine = await StorageEngine.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("golden", 2L * 1024 * 1024, 2, new PoolCreateOptions { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024, LayoutVersion = 1 });
        await pool.CreateContainerAsync("alpha");
        await pool.CreateContainerAsync("beta");
        await pool.SetContainerPropertyAsync("alpha", "user.owner", "ops");
        var d0 = await pool.CreateImageAsync("alpha", "disk0", 200_000, 16384);
        await d0.WriteAsync(0, Content(70_000, 1));
        await d0.WriteAsync(150_000, Content(10_000, 2));
        var d1 = await pool.CreateImageAsync("alpha", "disk1", 65536, 4096);
        await d1.WriteAsync(0, Content(65536, 3));
        await d1.TrimAsync(8192, 8192);
        await pool.CreateImageAsync("beta", "empty", 1L << 30, 65536);
        await d1.SetPropertyAsync("user.role", "boot");
        await pool.CloseAsync(checkpoint: false);
        return devs;
    }

    /// <summary>
    /// The layout-2 fixture: the layout-1 pool upgraded (so it carries the upgrade job's
    /// records and state), then a container created at layout 2 with compression on, a
    /// changed v2 pool property and one more write, left in the log.
    /// </summary>
    public static async Task<MemoryBlockDevice[]> BuildLayout2Async()
    {
        var devs = await BuildLayout1Async();
        var engine = await StorageEngine.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        await pool.UpgradeAsync(2, dryRun: false);
        await pool.WaitForUpgradeAsync();
        await pool.CreateContainerAsync("gamma");
        await pool.SetContainerPropertyAsync("gamma", "compression", "on");
        await pool.SetPropertyAsync("scrub", "lazy");
        var g = await pool.CreateImageAsync("gamma", "disk2", 40_000, 8192);
        await g.WriteAsync(123, Content(30_000, 4));
        await pool.CloseAsync(checkpoint: false);
        return devs;
    }

    /// <summary>
    /// The layout-3 fixture: the layout-2 pool upgraded to 3 (the action rewrote every chunk above
    /// 4 KiB with its block table), then a container and an image of 64 KiB chunks written at layout
    /// 3, partly overwritten, left in the log (ChunkMapBlocks records to replay).
    /// </summary>
    public static async Task<MemoryBlockDevice[]> BuildLayout3Async()
    {
        var devs = await BuildLayout2Async();
        var engine = await StorageEngine.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        await pool.UpgradeAsync(3, dryRun: false);
        await pool.WaitForUpgradeAsync();
        await pool.CreateContainerAsync("delta");
        var d = await pool.CreateImageAsync("delta", "disk3", 300_000, 65536);
        await d.WriteAsync(0, Content(300_000, 5));
        await d.WriteAsync(70_000, Content(5_000, 6));
        await pool.CloseAsync(checkpoint: false);
        return devs;
    }

    /// <summary>
    /// The layout-4 fixture: the layout-3 pool upgraded to 4 (placement_v2 moved the chunks whose
    /// targets changed), then an image of 16 KiB chunks written at layout 4, partly trimmed, left in
    /// the log (chunk maps placed by placement v2 to replay).
    /// </summary>
    public static async Task<MemoryBlockDevice[]> BuildLayout4Async()
    {
        var devs = await BuildLayout3Async();
        var engine = await StorageEngine.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        await pool.UpgradeAsync(4, dryRun: false);
        await pool.WaitForUpgradeAsync();
        await pool.CreateContainerAsync("epsilon");
        var d = await pool.CreateImageAsync("epsilon", "disk4", 160_000, 16384);
        await d.WriteAsync(0, Content(160_000, 7));
        await d.TrimAsync(32768, 16384);
        await pool.CloseAsync(checkpoint: false);
        return devs;
    }

    /// <summary>
    /// The layout-5 fixture: the layout-4 pool upgraded to 5 (every shard's log restarted in WAL v2),
    /// then an image written at layout 5 and a property set, left in the log as WAL v2 batches.
    /// </summary>
    public static async Task<MemoryBlockDevice[]> BuildLayout5Async()
    {
        var devs = await BuildLayout4Async();
        var engine = await StorageEngine.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("golden");
        await pool.UpgradeAsync(5, dryRun: false);
        await pool.WaitForUpgradeAsync();
        await pool.CreateContainerAsync("zeta");
        var d = await pool.CreateImageAsync("zeta", "disk5", 100_000, 8192);
        await d.WriteAsync(5_000, Content(90_000, 8));
        await d.SetPropertyAsync("user.role", "wal-v2");
        await pool.CloseAsync(checkpoint: false);
        return devs;
    }

    /// <summary>Checks the layout-5 fixture's pool: its log is WAL v2 and everything of layouts 1 to 4 reads back.</summary>
    public static async Task VerifyLayout5Async(Pool pool)
    {
        Assert.AreEqual(5u, pool.LayoutVersion);
        Assert.AreEqual(Engine.Store.WalFormatV2.Format, pool.Log.Format);
        Assert.AreEqual("5", pool.GetContainerProperty("zeta", "layout_version"));
        var img = pool.OpenImage("zeta", "disk5");
        var b = new byte[100_000];
        await img.ReadAsync(0, b);
        var e = new byte[100_000];
        Content(90_000, 8).CopyTo(e, 5_000);
        CollectionAssert.AreEqual(e, b);
        Assert.AreEqual("wal-v2", img.GetProperty("user.role"));
        await VerifyLayout4Async(pool, layout: 5);
    }

    /// <summary>Checks the layout-4 fixture's pool: every replica where placement v2 puts it, and everything of layouts 1 to 3.</summary>
    public static async Task VerifyLayout4Async(Pool pool, uint layout = 4)
    {
        Assert.AreEqual(layout, pool.LayoutVersion);
        Assert.AreEqual("4", pool.GetContainerProperty("epsilon", "layout_version"));
        var b = new byte[160_000];
        await pool.OpenImage("epsilon", "disk4").ReadAsync(0, b);
        var e = Content(160_000, 7);
        Array.Clear(e, 32768, 16384);
        CollectionAssert.AreEqual(e, b);
        Assert.AreEqual(0, MigrationKit.Misplaced(pool, Engine.Store.PlacementV2.Instance), "every replica on the target placement v2 names");
        await VerifyLayout3Async(pool, layout);
    }

    /// <summary>Checks the layout-3 fixture's pool: every chunk above 4 KiB has its table, and everything of layouts 1 and 2 reads back.</summary>
    public static async Task VerifyLayout3Async(Pool pool, uint layout = 3)
    {
        Assert.AreEqual(layout, pool.LayoutVersion);
        Assert.AreEqual("3", pool.GetContainerProperty("delta", "layout_version"));
        var b = new byte[300_000];
        await pool.OpenImage("delta", "disk3").ReadAsync(0, b);
        var e = Content(300_000, 5);
        Content(5_000, 6).CopyTo(e, 70_000);
        CollectionAssert.AreEqual(e, b);
        Assert.AreEqual(0, BlockChecksumUpgradeTests.WithoutTable(pool), "every chunk above 4 KiB has its block table");
        await VerifyLayout2Async(pool, layout);
    }

    /// <summary>Checks the layout-2 fixture's pool: everything of layout 1 plus what layout 2 added.</summary>
    public static async Task VerifyLayout2Async(Pool pool, uint layout = 2)
    {
        Assert.AreEqual(layout, pool.LayoutVersion);
        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.AreEqual("lazy", pool.GetProperty("scrub"));
        Assert.AreEqual("lazy", pool.GetProperty("reclaim"));
        Assert.AreEqual("1", pool.GetContainerProperty("alpha", "layout_version"));
        Assert.AreEqual("2", pool.GetContainerProperty("gamma", "layout_version"));
        Assert.AreEqual("on", pool.GetContainerProperty("gamma", "compression"));
        var b = new byte[40_000];
        await pool.OpenImage("gamma", "disk2").ReadAsync(0, b);
        var e = new byte[40_000];
        Content(30_000, 4).CopyTo(e, 123);
        CollectionAssert.AreEqual(e, b);
        await VerifyLayout1Async(pool, layout);
    }

    /// <summary>Checks the layout-1 fixture's pool, as a user would see it.</summary>
    public static async Task VerifyLayout1Async(Pool pool, uint layout = 1)
    {
        Assert.AreEqual("golden", pool.Label);
        Assert.AreEqual(layout, pool.LayoutVersion);
        Assert.AreEqual("2", pool.GetProperty("rf"));
        CollectionAssert.IsSubsetOf(new[] { "alpha", "beta" }, pool.ListContainers().Select(c => c.Label).ToArray());
        Assert.AreEqual("ops", pool.GetContainerProperty("alpha", "user.owner"));
        var d0 = pool.OpenImage("alpha", "disk0");
        var back = new byte[200_000];
        await d0.ReadAsync(0, back);
        var expect = new byte[200_000];
        Content(70_000, 1).CopyTo(expect, 0);
        Content(10_000, 2).CopyTo(expect, 150_000);
        CollectionAssert.AreEqual(expect, back);
        var d1 = pool.OpenImage("alpha", "disk1");
        var b1 = new byte[65536];
        await d1.ReadAsync(0, b1);
        var e1 = Content(65536, 3);
        Array.Clear(e1, 8192, 8192);
        CollectionAssert.AreEqual(e1, b1);
        Assert.AreEqual("boot", d1.GetProperty("user.role"));
        var empty = pool.ListImages("beta").Single();
        Assert.AreEqual((1L << 30, 65536, 0L), (empty.Size, empty.ChunkSize, empty.MappedBytes));
    }

    public static void Save(string path, MemoryBlockDevice[] devs)
    {
        using var file = File.Create(path);
        using var gz = new GZipStream(file, CompressionLevel.SmallestSize);
        var header = new byte[16];
        "STRFIX01"u8.CopyTo(header);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), devs.Length);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(12), (int)(devs[0].Geometry.Capacity >> 20));
        gz.Write(header);
        foreach (var d in devs)
        {
            var bytes = new byte[d.Geometry.Capacity];
            d.ReadBytes(0, bytes);
            gz.Write(bytes);
        }
    }

    public static MemoryBlockDevice[] Load(string path)
    {
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        var header = new byte[16];
        gz.ReadExactly(header);
        if (!header.AsSpan(0, 8).SequenceEqual("STRFIX01"u8))
            throw new InvalidDataException($"{path} is not a Strata fixture");
        int count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(8));
        long size = (long)BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(12)) << 20;
        var devs = new MemoryBlockDevice[count];
        for (int i = 0; i < count; i++)
        {
            var bytes = new byte[size];
            gz.ReadExactly(bytes);
            devs[i] = new MemoryBlockDevice($"fixture{i}", size);
            devs[i].WriteBytes(0, bytes);
        }
        return devs;
    }

    /// <summary>The committed fixture folder (tests/Fixtures), found from the test binary's location.</summary>
    public static string SourceDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var p = Path.Combine(dir.FullName, "tests", "Fixtures");
            if (Directory.Exists(p))
                return p;
        }
        throw new DirectoryNotFoundException("tests/Fixtures not found above " + AppContext.BaseDirectory);
    }

    public static string PathOf(string name)
    {
        var copied = Path.Combine(AppContext.BaseDirectory, "Fixtures", name);
        return File.Exists(copied) ? copied : Path.Combine(SourceDirectory(), name);
    }
}
