using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// One flush per commit round covers a chunk's data write and its log record, so a
/// crash can keep the record and lose the data. Replay verifies the chunk-map records
/// past the last DurableThrough mark and drops those whose data did not verify;
/// records at or below the mark are trusted (docs/format.md, "Durability").
/// </summary>
[TestClass]
public sealed class TailReplayTests
{
    private const int ChunkSize = 4096;

    private sealed record Setup(CrashDisk[] Disks, CrashSwitch Power, Pool Pool, Image Image);

    private static async Task<Setup> CreateAsync(int targets, int rf)
    {
        var power = new CrashSwitch();
        var disks = Enumerable.Range(0, targets).Select(i => new CrashDisk($"crash{i}", 4L * 1024 * 1024, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks);
        var pool = await engine.CreatePoolAsync("tank", targets * 1024L * 1024, rf, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 16 * ChunkSize, ChunkSize);
        return new Setup(disks, power, pool, image);
    }

    /// <summary>Byte ranges [start, end) of one disk's log and data area.</summary>
    private static ((long, long) Wal, (long, long) Data) Regions(Pool pool, int target)
    {
        var s = pool.Shards[target];
        return ((s.WalStart, s.WalStart + s.Header.WalLength), (s.Base + s.Header.DataOffset, s.Base + s.Header.DataOffset + s.Header.DataLength));
    }

    private static bool In((long Start, long End) r, long offset) => offset >= r.Start && offset < r.End;

    [TestMethod]
    [DataRow(1, 1, "Lost", DisplayName = "data write lost")]
    [DataRow(1, 1, "Torn", DisplayName = "data write torn")]
    [DataRow(2, 2, "Lost", DisplayName = "rf 2, one replica lost")]
    public async Task Replay_LogRecordDurableDataNot_ChunkKeepsPreviousContentsAndDropReported(int targets, int rf, string fate)
    {
        var dataFate = Enum.Parse<PendingFate>(fate);
        var (disks, power, pool, image) = await CreateAsync(targets, rf);
        var acked = TestDevices.Pattern(ChunkSize, 1);
        await image.WriteAsync(ChunkSize, acked);

        // The power fails at the commit's flush: the data write and the log batch are both pending.
        power.CrashAtFlush = true;
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 2)).AsTask());
        var next = new CrashSwitch();
        disks = disks.Select((d, t) =>
        {
            var (wal, data) = Regions(pool, t);
            return d.AfterCrash(next, (_, offset, _) =>
                In(wal, offset) ? PendingFate.Kept
                : In(data, offset) && t == targets - 1 ? dataFate
                : PendingFate.Kept);
        }).ToArray();

        var (engine, ras) = await TestDevices.OpenAsync(disks);
        var reopened = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(1, reopened.DroppedTailRecords);
        var dropped = ras.WithId(RasIds.LogTailWriteDropped).Single();
        Assert.AreEqual("tank", dropped.Pool);
        StringAssert.Contains(dropped.Message, "1 chunk write(s) in the log tail were dropped");
        StringAssert.Contains(dropped.Message, $"image 'v' offset {ChunkSize}");
        var back = new byte[ChunkSize];
        await reopened.OpenImage("c", "v").ReadAsync(ChunkSize, back);
        CollectionAssert.AreEqual(acked, back, "the chunk must read as the last acknowledged write");
        Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable),
            string.Join("; ", ras.Events.Select(e => e.Message)));

        // The open's checkpoint settled it: the next open replays no tail and drops nothing.
        await reopened.OpenImage("c", "v").WriteAsync(0, TestDevices.Pattern(100, 3));
        await engine.DisposeAsync();
        var (engine2, ras2) = await TestDevices.OpenAsync(disks);
        var again = await engine2.OpenPoolAsync("tank");
        Assert.AreEqual(0, again.DroppedTailRecords);
        await again.OpenImage("c", "v").ReadAsync(ChunkSize, back);
        CollectionAssert.AreEqual(acked, back);
        Assert.IsFalse(ras2.WithId(RasIds.LogTailWriteDropped).Any());
    }

    [TestMethod]
    public async Task Replay_LogRecordAndDataDurable_WriteKept()
    {
        var (disks, power, pool, image) = await CreateAsync(1, 1);
        await image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 1));
        power.CrashAtFlush = true;
        var data = TestDevices.Pattern(ChunkSize, 2);
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => image.WriteAsync(ChunkSize, data).AsTask());
        disks = disks.Select(d => d.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Kept)).ToArray();

        var (engine, ras) = await TestDevices.OpenAsync(disks);
        var reopened = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(0, reopened.DroppedTailRecords);
        var back = new byte[ChunkSize];
        await reopened.OpenImage("c", "v").ReadAsync(ChunkSize, back);
        CollectionAssert.AreEqual(data, back, "a record whose data verifies is replayed");
        Assert.IsFalse(ras.WithId(RasIds.LogTailWriteDropped).Any());
    }

    [TestMethod]
    public async Task Replay_CorruptRecordAtOrBelowDurableMark_KeptAndReadFailsWithIntegrityError()
    {
        var (disks, power, pool, image) = await CreateAsync(1, 1);
        var a = TestDevices.Pattern(ChunkSize, 1);
        await image.WriteAsync(0, a);
        await image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 2));
        // The last commit round's batch marks the earlier rounds durable; nothing marks its own record.
        await image.WriteAsync(2 * ChunkSize, TestDevices.Pattern(ChunkSize, 3));
        var trusted = TestHelpers.ReplicaLocations(pool, image, 1).Single();
        var tail = TestHelpers.ReplicaLocations(pool, image, 2).Single();
        var shard = pool.Shards[0];
        var wal = new byte[shard.Header.WalLength];
        disks[0].ReadBytes(shard.WalStart, wal);
        // As replay reads it, in the log's framing (v1 marks are records, v2 marks are in batch headers).
        var (records, _, _, mark) = PoolOpener.ReadLog(wal, shard.Header, pool.Id);
        var chunkMaps = records.Where(r => r.Type == (ushort)MetaRecordType.ChunkMap).ToList();
        Assert.AreEqual(3, chunkMaps.Count);
        Assert.IsTrue(mark >= chunkMaps[1].Seq && mark < chunkMaps[2].Seq,
            $"highest mark {mark}, chunk-map records at [{string.Join(",", chunkMaps.Select(r => r.Seq))}]");

        power.CutPower();
        disks = disks.Select(d => d.AfterCrash(new CrashSwitch(), (_, _, _) => PendingFate.Kept)).ToArray();
        TestHelpers.FlipByte(disks[0], trusted.Offset + 10);
        TestHelpers.FlipByte(disks[0], tail.Offset + 10);

        // A read-only open applies the same rule and writes nothing.
        string before = TestHelpers.Sha256(disks);
        var (roEngine, _) = await TestDevices.OpenAsync(disks, readOnly: true);
        Assert.AreEqual(1, (await roEngine.OpenPoolAsync("tank")).DroppedTailRecords);
        Assert.AreEqual(before, TestHelpers.Sha256(disks));

        var (engine, ras) = await TestDevices.OpenAsync(disks);
        var reopened = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(1, reopened.DroppedTailRecords, "only the record past the mark is checked and dropped");
        var img = reopened.OpenImage("c", "v");
        var back = new byte[ChunkSize];
        await img.ReadAsync(2 * ChunkSize, back);
        CollectionAssert.AreEqual(new byte[ChunkSize], back, "the dropped write's chunk keeps its previous (unwritten) contents");
        // The trusted record stays: its bad data is corruption, reported by the read, never silently reverted.
        var e = await Assert.ThrowsExactlyAsync<DataIntegrityException>(() => img.ReadAsync(ChunkSize, back).AsTask());
        StringAssert.Contains(e.Message, $"pool 'tank', image 'v' at offset {ChunkSize}");
        Assert.IsTrue(ras.WithId(RasIds.DataUnrecoverable).Any());
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(a, back);
    }
}
