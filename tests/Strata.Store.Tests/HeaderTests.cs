using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class HeaderTests
{
    private static async Task<Engine.Device.MemoryBlockDevice[]> PoolAsync(int targets = 2)
    {
        var devs = TestDevices.Memory(targets);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 65536, 4096);
        await img.WriteAsync(100, TestDevices.Pattern(5000, 3));
        await engine.DisposeAsync();
        return devs;
    }

    [TestMethod]
    public void ShardHeader_EncodeDecode_RoundTripsEveryField()
    {
        var h = new ShardHeader
        {
            LayoutVersion = 1, Compat = 2, RoCompat = 3, Incompat = 1, PoolId = Guid.NewGuid(), TargetId = Guid.NewGuid(), TargetIndex = 2,
            TargetCount = 3, Generation = 77, ShardLength = 1 << 24, WalOffset = 8192, WalLength = 1 << 20, Checkpoint0Offset = 1 << 21,
            Checkpoint1Offset = 3 << 20, CheckpointLength = 1 << 20, DataOffset = 1 << 22, DataLength = 1 << 23, ActiveCheckpoint = 1,
            MinChunkSize = 4096, CheckpointSeq = 1234, WalHead = 8192, CreatedUnixMicros = 99, WalEpoch = 5, Label = "tank-1",
        };
        var back = ShardHeader.Decode(h.Encode(), out var problem);
        Assert.IsNull(problem);
        Assert.AreEqual(h, back);
    }

    [TestMethod]
    public void ShardHeader_FlippedByte_RejectedForBadCrc()
    {
        var b = new ShardHeader { Label = "x", LayoutVersion = 1 }.Encode();
        b[200] ^= 1;
        Assert.IsNull(ShardHeader.Decode(b, out var problem));
        Assert.AreEqual("bad CRC32C", problem);
    }

    [TestMethod]
    public void Crc32C_KnownVector_MatchesCastagnoli()
    {
        Assert.AreEqual(0xE3069283u, Crc32C.Compute("123456789"u8));
        Assert.AreEqual(Crc32C.Compute("123456789"u8), Crc32C.Compute("6789"u8, Crc32C.Compute("12345"u8)));
    }

    /// <summary>
    /// The striped computation (three chains joined by shifts) against a bit-at-a-time CRC32C:
    /// every length up to past two stripe triples, from unaligned starts, with a running value,
    /// and the lengths the store uses.
    /// </summary>
    [TestMethod]
    public void Crc32C_AnyLengthAndStart_MatchesBitwiseReference()
    {
        var rng = new Random(17);
        var data = new byte[140_000];
        rng.NextBytes(data);
        var lengths = Enumerable.Range(0, 4200).Concat([4095, 4096, 4097, 8160, 8192, 12288, 65536, 131072, 131072 + 13]);
        foreach (int length in lengths)
        {
            int start = rng.Next(0, 8);
            uint previous = length % 3 == 0 ? 0 : (uint)rng.Next();
            var span = data.AsSpan(start, length);
            Assert.AreEqual(Reference(span, previous), Crc32C.Compute(span, previous), $"length {length} at {start}, previous 0x{previous:x8}");
        }

        static uint Reference(ReadOnlySpan<byte> data, uint previous)
        {
            uint crc = ~previous;
            foreach (byte b in data)
            {
                crc ^= b;
                for (int k = 0; k < 8; k++)
                    crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
            }
            return ~crc;
        }
    }

    [TestMethod]
    public async Task OpenPool_NewestHeaderCopyCorrupt_UsesOtherCopyAndReportsIt()
    {
        var devs = await PoolAsync();
        int copy = await TestHelpers.NewestShardHeaderCopyAsync(devs[1]);
        long at = await TestHelpers.ShardOffsetAsync(devs[1]);
        TestHelpers.FlipByte(devs[1], at + copy * 4096 + 100);
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        var pool = await engine.OpenPoolAsync("tank");
        var ev = ras.WithId(RasIds.HeaderCopyBad).Single();
        Assert.AreEqual(1, ev.Target);
        StringAssert.Contains(ev.Message, $"copy {(copy == 0 ? "A" : "B")} on target 1 is invalid (bad CRC32C)");
        var back = new byte[5000];
        await pool.OpenImage("c", "v").ReadAsync(100, back);
        CollectionAssert.AreEqual(TestDevices.Pattern(5000, 3), back);
    }

    [TestMethod]
    public async Task OpenPool_BothHeaderCopiesCorrupt_RefusedNamingTargetAndCopies()
    {
        var devs = await PoolAsync();
        long at = await TestHelpers.ShardOffsetAsync(devs[0]);
        TestHelpers.FlipByte(devs[0], at + 100);
        TestHelpers.FlipByte(devs[0], at + 4096);
        string before = TestHelpers.Sha256(devs);
        var (engine, _) = await TestDevices.OpenAsync(devs);
        var e = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(() => engine.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "shard on target 0");
        StringAssert.Contains(e.Message, "both header copies are invalid (copy A: bad CRC32C; copy B: bad magic)");
        Assert.AreEqual(before, TestHelpers.Sha256(devs));
    }

    [TestMethod]
    public async Task OpenEngine_OneSuperblockCopyCorrupt_UsesOtherAndReportsIt()
    {
        var devs = await PoolAsync();
        TestHelpers.FlipByte(devs[0], 4096 + 10);
        TestHelpers.FlipByte(devs[0], 10);
        var e0 = await Assert.ThrowsExactlyAsync<CorruptMetadataException>(async () => await TestDevices.OpenAsync(devs));
        StringAssert.Contains(e0.Message, "'mem0' is not a Strata target");
        TestHelpers.FlipByte(devs[0], 10);
        var (engine, ras) = await TestDevices.OpenAsync(devs);
        Assert.AreEqual(1, ras.WithId(RasIds.HeaderCopyBad).Count());
        Assert.AreEqual("tank", engine.ListPools().Single().Label);
    }

    [TestMethod]
    public async Task ShardHeaders_SurviveManyCheckpoints_AlternatingCopies()
    {
        var devs = TestDevices.Memory(1);
        var (engine, _) = await TestDevices.FormatAsync(devs);
        var pool = await engine.CreatePoolAsync("tank", 2L * 1024 * 1024, 1, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 1 << 20, 4096);
        for (int i = 0; i < 600; i++)
            await img.WriteAsync(i % 256 * 4096L, TestDevices.Pattern(4096, i));
        Assert.IsTrue(pool.Shards[0].Header.Generation > 6, $"generation {pool.Shards[0].Header.Generation}: the log should have wrapped and checkpointed");
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        var img2 = (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v");
        for (int i = 600 - 256; i < 600; i++)
        {
            var b = new byte[4096];
            await img2.ReadAsync(i % 256 * 4096L, b);
            CollectionAssert.AreEqual(TestDevices.Pattern(4096, i), b);
        }
    }
}
