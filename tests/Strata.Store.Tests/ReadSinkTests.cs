using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Reads handed to an IReadSink (the NBD server's large reads): every byte of the request arrives
/// exactly once, verified, from the device buffers the store read into; holes are reported as
/// holes; a chunk that does not verify is served from another replica and repaired, as a read into
/// a buffer is.
/// </summary>
[TestClass]
public sealed class ReadSinkTests
{
    private const int KiB = 1024, Chunk = 64 * KiB;

    /// <summary>Records the pieces and scribbles over the headroom it is given, as a sink writing a header there does.</summary>
    private sealed class RecordingSink : IReadSink
    {
        public readonly List<(int At, byte[] Data)> Pieces = [];
        public readonly List<(int At, int Length)> Holes = [];

        public ValueTask DataAsync(int at, Memory<byte> buffer, int headroom)
        {
            lock (this)
                Pieces.Add((at, buffer[headroom..].ToArray()));
            buffer.Span[..headroom].Fill(0xEE);
            return ValueTask.CompletedTask;
        }

        public ValueTask HoleAsync(int at, int length)
        {
            lock (this)
                Holes.Add((at, length));
            return ValueTask.CompletedTask;
        }

        /// <summary>The request's bytes, asserting that pieces and holes cover each byte exactly once.</summary>
        public byte[] Assemble(int length)
        {
            var data = new byte[length];
            var seen = new bool[length];
            foreach (var (at, bytes) in Pieces)
            {
                Cover(seen, at, bytes.Length);
                bytes.CopyTo(data, at);
            }
            foreach (var (at, n) in Holes)
                Cover(seen, at, n);
            Assert.IsTrue(seen.All(s => s), "every byte of the request was delivered");
            return data;
        }

        private static void Cover(bool[] seen, int at, int length)
        {
            for (int i = at; i < at + length; i++)
            {
                Assert.IsFalse(seen[i], $"byte {i} delivered twice");
                seen[i] = true;
            }
        }
    }

    public TestContext TestContext { get; set; } = null!;

    /// <summary>Memory targets, or buffered files (reads the page cache holds are served on the caller's thread: runs capped to that limit).</summary>
    private IBlockDevice[] Targets(bool files)
    {
        if (!files)
            return TestDevices.Memory(2);
        _dir = Directory.CreateTempSubdirectory("strata-readsink-").FullName;
        TestContext.WriteLine($"targets in {_dir}");
        _files = [.. Enumerable.Range(0, 2).Select(i =>
            (IBlockDevice)NativeBlockDevice.Open($"file:{Path.Combine(_dir, $"t{i}.img")}?create=1&size=16M&direct=0", new DeviceOptions { ArenaBytes = 0 }))];
        return _files;
    }

    private string? _dir;
    private IBlockDevice[]? _files;

    [TestCleanup]
    public void RemoveFiles()
    {
        foreach (var d in _files ?? [])
            d.Dispose();
        if (_dir != null)
            Directory.Delete(_dir, recursive: true);
    }

    [TestMethod]
    [DataRow(2u, false, DisplayName = "layout 2: one CRC per chunk")]
    [DataRow(3u, false, DisplayName = "layout 3: block tables in front of the chunks")]
    [DataRow(3u, true, DisplayName = "layout 3, buffered file targets: runs the caller's thread reads")]
    public async Task ReadToSink_AcrossChunksAndHoles_EveryByteOnceAsWrittenHolesReported(uint layout, bool files)
    {
        var devs = Targets(files);
        if (files)
            Assert.AreEqual(2048 * KiB, devs[0].Geometry.CachedReadLimit, "a buffered file serves cached reads on the caller's thread");
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        await using var _ = engine;
        var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 32 * Chunk, Chunk);
        var data = new byte[32 * Chunk];
        // Chunks 0-5 and 9-20 hold data (runs of adjacent extents on both targets), 6-8 and 21- are holes.
        foreach (var (from, to) in new[] { (0, 6), (9, 21) })
        {
            var part = TestDevices.Pattern((to - from) * Chunk, from + 1);
            part.CopyTo(data, from * Chunk);
            await image.WriteAsync((long)from * Chunk, part);
        }

        // Unaligned at both ends: partial first and last chunks.
        int offset = Chunk / 2 + 100, length = 22 * Chunk - 300;
        var sink = new RecordingSink();
        await image.ReadAsync(offset, length, sink);
        CollectionAssert.AreEqual(data.AsSpan(offset, length).ToArray(), sink.Assemble(length));
        var holes = sink.Holes.OrderBy(h => h.At).ToList();
        CollectionAssert.AreEqual(new[] { 6, 7, 8, 21, 22 }, holes.Select(h => (offset + h.At) / Chunk).ToArray(), "a hole for each unmapped chunk, nothing else");
        Assert.IsGreaterThan(1, sink.Pieces.Count, "data arrives chunk by chunk");
        Assert.AreEqual(0, ras.Events.Count, string.Join("; ", ras.Events.Select(e => e.Message)));

        // Within one chunk: one piece.
        var one = new RecordingSink();
        await image.ReadAsync(Chunk + 10, 1000, one);
        CollectionAssert.AreEqual(data.AsSpan(Chunk + 10, 1000).ToArray(), one.Assemble(1000));
        Assert.AreEqual(1, one.Pieces.Count);
    }

    [TestMethod]
    [DataRow(2u)]
    [DataRow(3u)]
    public async Task ReadToSink_OneReplicaCorrupt_GoodBytesFromTheOtherReplicaAndRepaired(uint layout)
    {
        var devs = TestDevices.Memory(3);
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 8L * 1024 * 1024, 2, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 8 * Chunk, Chunk);
        var data = TestDevices.Pattern(8 * Chunk, 9);
        await image.WriteAsync(0, data);
        var where = TestHelpers.ReplicaLocations(pool, image, 3);
        // The first replica is the one read; its chunk 3 no longer matches.
        TestHelpers.FlipByte(where[0].Device, where[0].Offset + (layout == 3 ? ChunkChecksum.TableSize : 0) + 5000);

        var sink = new RecordingSink();
        await image.ReadAsync(100, 8 * Chunk - 200, sink);
        CollectionAssert.AreEqual(data.AsSpan(100, 8 * Chunk - 200).ToArray(), sink.Assemble(8 * Chunk - 200));
        Assert.AreEqual(0, sink.Holes.Count);
        // Layout 3 names the 4 KiB block that failed (byte 5000 is in block 1), layout 2 the chunk.
        Assert.AreEqual(layout == 3 ? 3L * Chunk + 4096 : 3L * Chunk, ras.WithId(RasIds.DataChecksumMismatch).Single().Offset);
        Assert.AreEqual(where[0].Target, ras.WithId(RasIds.ReplicaRepaired).Single().Target);
        var back = new byte[8 * Chunk];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(data, back);
    }
}
