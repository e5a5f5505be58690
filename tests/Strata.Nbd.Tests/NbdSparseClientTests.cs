using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;

namespace Strata.Nbd.Tests;

/// <summary>
/// base:allocation, FAST_ZERO and CAN_MULTI_CONN with the clients that use them, against the real
/// daemon: qemu-img map and nbdinfo --map see Strata's holes, nbdcopy and qemu-img convert skip them
/// (the engine's read counter shows how much they read), and nbdcopy's multi-connection copy into an
/// image lands whole.
/// </summary>
[TestClass]
public sealed class NbdSparseClientTests
{
    private const int Chunk = 64 << 10; // NbdDaemon.CreateImageAsync's default chunk size
    private static NbdDaemon _d = null!;

    [ClassInitialize]
    public static async Task StartAsync(TestContext _) => _d = await NbdDaemon.StartAsync("nbd-sparse");

    [ClassCleanup]
    public static async Task StopAsync() => await _d.DisposeAsync();

    private static string TempFile(string name) => Path.Combine(_d.Dir, name);

    /// <summary>Image bytes the engine has read so far (strata_io_bytes_total, op="read", over every label set).</summary>
    private static async Task<double> BytesReadAsync()
    {
        using var http = _d.Engine.Http();
        string text = await http.GetStringAsync("metrics");
        double sum = 0;
        foreach (var line in text.Split('\n'))
            if (line.StartsWith("strata_io_bytes_total{", StringComparison.Ordinal) && line.Contains("op=\"read\"", StringComparison.Ordinal))
                sum += double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        return sum;
    }

    /// <summary>(start, length, data) runs, adjacent runs of the same kind merged.</summary>
    private static List<(long Start, long Length, bool Data)> Merge(IEnumerable<(long Start, long Length, bool Data)> runs)
    {
        var merged = new List<(long Start, long Length, bool Data)>();
        foreach (var r in runs)
        {
            if (merged.Count > 0 && merged[^1].Data == r.Data && merged[^1].Start + merged[^1].Length == r.Start)
                merged[^1] = merged[^1] with { Length = merged[^1].Length + r.Length };
            else
                merged.Add(r);
        }
        return merged;
    }

    [TestMethod]
    public async Task QemuImgMapAndNbdInfoMap_ChunkEdgeWritesAndTrims_HolesWhereUnmapped()
    {
        await _d.CreateImageAsync("map", "8M");
        await Tools.OkAsync("qemu-io", "-f", "raw",
            "-c", $"write -P 0x11 {Chunk - 1} 2",          // chunks 0 and 1
            "-c", $"write -P 0x22 {5 * Chunk} 1",          // chunk 5
            "-c", $"write -P 0x33 {16 * Chunk} {2 * Chunk}", // chunks 16 and 17
            "-c", $"discard {16 * Chunk} {Chunk}",         // chunk 16 whole: unmapped
            "-c", $"discard 0 {Chunk / 2}",                 // half of chunk 0: zeroed, still data
            _d.UnixUri("map"));
        var expected = new List<(long, long, bool)>
        {
            (0, 2 * Chunk, true), (2 * Chunk, 3 * Chunk, false), (5 * Chunk, Chunk, true),
            (6 * Chunk, 11 * Chunk, false), (17 * Chunk, Chunk, true), (18 * Chunk, (8 << 20) - 18 * Chunk, false),
        };

        string map = await Tools.OkAsync("qemu-img", "map", "--output=json", "-f", "raw", _d.TcpUri("map"));
        using (var json = JsonDocument.Parse(map))
        {
            var runs = json.RootElement.EnumerateArray().Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("data").GetBoolean()));
            CollectionAssert.AreEqual(expected, Merge(runs), map);
            Assert.IsTrue(json.RootElement.EnumerateArray().Where(e => !e.GetProperty("data").GetBoolean()).All(e => e.GetProperty("zero").GetBoolean()), "holes read as zeroes");
        }

        string info = await Tools.OkAsync("nbdinfo", "--map", "--json", _d.UnixUri("map"));
        using (var json = JsonDocument.Parse(info))
        {
            var runs = json.RootElement.EnumerateArray().Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt32() == 0)).ToList();
            CollectionAssert.AreEqual(expected, Merge(runs), info);
            Assert.IsTrue(json.RootElement.EnumerateArray().All(e => e.GetProperty("type").GetInt32() is 0 or 3), "data, or hole+zero");
        }
    }

    [TestMethod]
    public async Task NbdCopyAndQemuImgConvert_HalfEmptyImage_ReadOnlyTheData()
    {
        const int size = 32 << 20;
        await _d.CreateImageAsync("sparse", "32M");
        // 4 MiB of data in four 1 MiB pieces, the rest never written.
        var src = new byte[size];
        var rng = new Random(505);
        foreach (int at in new[] { 0, 9 << 20, 17 << 20, 31 << 20 })
            rng.NextBytes(src.AsSpan(at, 1 << 20));
        File.WriteAllBytes(TempFile("sparse.raw"), src);
        await Tools.OkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", TempFile("sparse.raw"), _d.UnixUri("sparse"));

        foreach (var (tool, args) in new[]
        {
            ("nbdcopy", new[] { _d.UnixUri("sparse"), TempFile("sparse.nbdcopy") }),
            ("qemu-img", new[] { "convert", "-f", "raw", "-O", "raw", _d.TcpUri("sparse"), TempFile("sparse.qemu-img") }),
        })
        {
            double before = await BytesReadAsync();
            await Tools.OkAsync(tool, args);
            double read = await BytesReadAsync() - before;
            string outFile = args[^1];
            CollectionAssert.AreEqual(SHA256.HashData(src), SHA256.HashData(File.ReadAllBytes(outFile)), $"{tool} copied the bytes");
            // Without block status both read all 32 MiB.
            Assert.IsTrue(read >= 4 << 20 && read <= 6 << 20, $"{tool} read {read} bytes of a 32 MiB image holding 4 MiB");
        }
    }

    [TestMethod]
    public async Task NbdCopy_IntoImageOverFourConnections_AllLandAndHolesStayHoles()
    {
        await _d.CreateImageAsync("multiconn", "24M");
        var src = new byte[24 << 20];
        new Random(506).NextBytes(src.AsSpan(0, 6 << 20));
        new Random(507).NextBytes(src.AsSpan(18 << 20, 6 << 20));
        File.WriteAllBytes(TempFile("multiconn.raw"), src);
        // nbdcopy opens 4 connections only when CAN_MULTI_CONN is advertised, and flushes through one of them.
        await Tools.OkAsync("nbdcopy", "--connections=4", "--flush", TempFile("multiconn.raw"), _d.UnixUri("multiconn"));
        await Tools.OkAsync("nbdcopy", _d.TcpUri("multiconn"), TempFile("multiconn.out"));
        CollectionAssert.AreEqual(SHA256.HashData(src), SHA256.HashData(File.ReadAllBytes(TempFile("multiconn.out"))));
        // The zeroes in the middle were zeroed (NBD_CMD_WRITE_ZEROES, FAST_ZERO first), not written: still a hole.
        string map = await Tools.OkAsync("nbdinfo", "--map", "--json", _d.UnixUri("multiconn"));
        using var json = JsonDocument.Parse(map);
        var holes = json.RootElement.EnumerateArray().Where(e => e.GetProperty("type").GetInt32() == 3)
            .Sum(e => e.GetProperty("length").GetInt64());
        Assert.AreEqual(12L << 20, holes, map);
    }
}
