using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class WalFormatTests
{
    private static readonly Guid Pool = Guid.NewGuid();

    private static (byte[] Wal, long End) Log(uint seed, int count, long start = 0, int size = 64 * 1024)
    {
        var wal = new byte[size];
        long pos = start;
        for (int i = 0; i < count; i++)
        {
            var payload = TestDevices.Pattern(10 + i, i);
            int len = WalFormat.EncodedLength(payload.Length);
            WalFormat.Encode(wal.AsSpan((int)pos), seed, (ulong)(i + 1), 7, 0, payload, len);
            pos += len;
        }
        return (wal, pos);
    }

    [TestMethod]
    public void Replay_IntactLog_ReturnsEveryRecordInOrder()
    {
        uint seed = WalFormat.Seed(Pool, 1);
        var (wal, end) = Log(seed, 20);
        var (records, tail, next) = WalFormat.Replay(wal, 0, seed, 1);
        Assert.AreEqual(20, records.Count);
        CollectionAssert.AreEqual(TestDevices.Pattern(29, 19), records[19].Payload);
        Assert.AreEqual(end, tail);
        Assert.AreEqual(21UL, next);
    }

    [TestMethod]
    public void Replay_TornRecord_StopsBeforeIt()
    {
        uint seed = WalFormat.Seed(Pool, 1);
        var (wal, _) = Log(seed, 20);
        int third = WalFormat.EncodedLength(10) + WalFormat.EncodedLength(11);
        wal[third + 30] ^= 1;
        var (records, tail, next) = WalFormat.Replay(wal, 0, seed, 1);
        Assert.AreEqual(2, records.Count);
        Assert.AreEqual(third, tail);
        Assert.AreEqual(3UL, next);
    }

    [TestMethod]
    public void Replay_OtherEpochOrSequenceGap_StopsThere()
    {
        uint seed = WalFormat.Seed(Pool, 1);
        var (wal, _) = Log(seed, 5);
        Assert.AreEqual(0, WalFormat.Replay(wal, 0, WalFormat.Seed(Pool, 2), 1).Records.Count, "a record of another epoch is not valid");
        Assert.AreEqual(0, WalFormat.Replay(wal, 0, seed, 2).Records.Count, "the first record must have the expected sequence");
    }

    [TestMethod]
    public void Replay_PadToEnd_WrapsToStart()
    {
        uint seed = WalFormat.Seed(Pool, 1);
        var wal = new byte[8192];
        WalFormat.Encode(wal.AsSpan(4096), seed, 1, 5, 0, [1, 2, 3], WalFormat.EncodedLength(3));
        WalFormat.Encode(wal.AsSpan(4096 + 32), seed, 2, WalFormat.PadType, 0, default, 4096 - 32);
        WalFormat.Encode(wal.AsSpan(0), seed, 3, 6, 0, [9], WalFormat.EncodedLength(1));
        var (records, tail, _) = WalFormat.Replay(wal, 4096, seed, 1);
        CollectionAssert.AreEqual(new ushort[] { 5, 6 }, records.Select(r => r.Type).ToArray());
        Assert.AreEqual(32L, tail);
    }
}

[TestClass]
public sealed class AllocatorAndPlacementTests
{
    [TestMethod]
    public void Allocator_FillFreeReuse_TracksSpaceExactly()
    {
        var a = new ExtentAllocator(64 * 4096);
        var got = Enumerable.Range(0, 16).Select(_ => a.Allocate(16384)).ToList();
        Assert.IsTrue(got.All(o => o >= 0));
        Assert.AreEqual(got.Count, got.Distinct().Count());
        Assert.AreEqual(-1L, a.Allocate(4096));
        Assert.AreEqual(0L, a.FreeBytes);
        a.Free(got[3], 16384);
        Assert.AreEqual(-1L, a.Allocate(32768), "no contiguous room for two units' worth");
        Assert.AreEqual(got[3], a.Allocate(16384));
        Assert.IsFalse(a.MarkUsed(got[0], 4096), "marking a used extent again is a conflict");
    }

    [TestMethod]
    public void PlacementV1_Rf2_ReplicasOnDistinctTargetsAndSpread()
    {
        var counts = new int[4];
        for (long c = 0; c < 4000; c++)
        {
            int t0 = PlacementV1.Instance.Target(7, c, 0, 4), t1 = PlacementV1.Instance.Target(7, c, 1, 4);
            Assert.AreNotEqual(t0, t1);
            counts[t0]++;
        }
        Assert.IsTrue(counts.All(n => n is > 800 and < 1200), string.Join(",", counts));
        Assert.AreEqual(PlacementV1.Instance.Target(3, 9, 0, 5), PlacementV1.Instance.Target(3, 9, 0, 5));
    }

    [TestMethod]
    public void Placements_LayoutsBeforePlacementV2_TakeV1AndItsTargetsMatchPerReplica()
    {
        for (uint layout = 1; layout < Placements.PlacementV2Layout; layout++)
            Assert.AreEqual(1, Placements.For(layout).Version, $"layout {layout}");
        var v1 = Placements.For(1);
        Span<int> targets = stackalloc int[3];
        for (long c = 0; c < 500; c++)
        {
            v1.Targets(11, c, 5, targets);
            for (int r = 0; r < targets.Length; r++)
                Assert.AreEqual(v1.Target(11, c, r, 5), targets[r], $"chunk {c} replica {r}");
            Assert.AreEqual(3, new HashSet<int>(targets.ToArray()).Count, $"chunk {c}: replicas on distinct targets");
        }
    }

    [TestMethod]
    public void ChunkChecksum_ReplicaWithOneByteFlipped_MismatchNamesThatReplica()
    {
        var chunk = new byte[16384];
        new Random(5).NextBytes(chunk);
        uint crc = ChunkChecksum.Of(chunk);
        var good = new Replica(0, 4096, crc);
        var bad = new Replica(1, 8192, crc);
        Assert.IsTrue(ChunkChecksum.Verify(good, chunk.Length, 0, chunk).Ok);
        chunk[12345] ^= 0x10;
        var verdict = ChunkChecksum.Verify(bad, chunk.Length, 0, chunk);
        Assert.IsFalse(verdict.Ok);
        Assert.AreEqual(bad, verdict.Replica);
        Assert.AreNotEqual(verdict.Expected, verdict.Actual);
    }

    [TestMethod]
    public void ChunkChecksum_PartOfChunk_WholeChunkMustBeReadAndPartAloneIsRefused()
    {
        Assert.AreEqual((0, 65536), ChunkChecksum.VerifiedRange(false, 65536, 4096, 4096));
        var e = Assert.ThrowsExactly<ArgumentException>(() => ChunkChecksum.Verify(new Replica(0, 0, 0), 65536, 4096, new byte[4096]));
        StringAssert.Contains(e.Message, "covers the whole chunk");
    }

    [TestMethod]
    public void Placements_PlacementV2LayoutAndLater_TakeV2()
    {
        Assert.AreSame(PlacementV2.Instance, Placements.For(Placements.PlacementV2Layout));
        Assert.AreSame(PlacementV2.Instance, Placements.For(Placements.PlacementV2Layout + 1));
        Assert.AreEqual(2, Placements.For(Placements.PlacementV2Layout).Version);
    }
}

[TestClass]
public sealed class PoolStateCodecTests
{
    [TestMethod]
    public void Checkpoint_RoundTrip_RestoresStateIncludingMovesAndUpgradeJob()
    {
        var s = new PoolState();
        s.Props["label"] = "tank";
        s.Props["rf"] = "2";
        ulong seq = 1;
        void Apply(MetaRecord r) => s.Apply(new WalRecord(seq++, (ushort)r.Type, r.Flags, r.Payload));
        Apply(MetaRecords.ContainerCreate(1, "c", 1));
        Apply(MetaRecords.ContainerSetProp(1, "user.a", "b"));
        Apply(MetaRecords.ImageCreate(1, 1, "v", 1 << 20, 65536));
        Apply(MetaRecords.ChunkMap(1, 3, [new Replica(0, 65536, 0xAABBCCDD), new Replica(1, 0, 0xAABBCCDD)]));
        Apply(new MetaRecord(MetaRecordType.ChunkMoveBegin, new MetaWriter().U32(1).I64(3).Byte(1).U16(2).I64(131072).U32(0xAABBCCDD).ToArray()));
        Apply(new MetaRecord(MetaRecordType.UpgradeJobBegin, new MetaWriter().U64(9).U32(1).U32(4).ToArray()));
        Apply(new MetaRecord(MetaRecordType.UpgradeJobCursor, new MetaWriter().U64(9).U32(2).U64(12345).ToArray()));
        var back = PoolStateCodec.Deserialize(PoolStateCodec.Serialize(s), s.LastSeq);
        CollectionAssert.AreEqual(PoolStateCodec.Serialize(s), PoolStateCodec.Serialize(back));
        var map = back.Images[1].Chunks[3];
        Assert.AreEqual(2, map.Replicas.Length);
        Assert.AreEqual(131072L, map.Moving!.Single().Offset);
        Assert.AreEqual(new UpgradeJobMeta(9, 1, 4, UpgradeJobState.InProgress, 2, 12345), back.UpgradeJob);
        Assert.AreEqual("b", back.Containers[1].Props["user.a"]);
    }

    /// <summary>
    /// Checkpoints capture the state under its lock and encode it after releasing it, while writers
    /// go on: the payload must be the state at the capture, whatever changed since, and laid out as
    /// Serialize lays it out (images and chunks in id order, however they were applied).
    /// </summary>
    [TestMethod]
    public void Capture_StateChangesBeforeEncode_PayloadIsTheStateAtCapture_InIdOrder()
    {
        var s = new PoolState();
        s.Props["label"] = "tank";
        ulong seq = 1;
        var log = new List<MetaRecord>();
        void Apply(MetaRecord r)
        {
            log.Add(r);
            s.Apply(new WalRecord(seq++, (ushort)r.Type, r.Flags, r.Payload));
        }
        Apply(MetaRecords.ContainerCreate(1, "c", 1));
        Apply(MetaRecords.ImageCreate(2, 1, "second", 1 << 20, 4096));
        Apply(MetaRecords.ImageCreate(1, 1, "first", 1 << 20, 4096));
        foreach (long c in new long[] { 200, 3, 77, 0, 150 })
            Apply(MetaRecords.ChunkMap(2, c, [new Replica(0, c * 4096, (uint)c)]));
        for (long c = 0; c < 10; c++)
            Apply(MetaRecords.ChunkMap(1, c, [new Replica(0, (300 + c) * 4096, (uint)c)]));
        Apply(new MetaRecord(MetaRecordType.ChunkMoveBegin, new MetaWriter().U32(2).I64(77).Byte(1).U16(0).I64(999 * 4096).U32(77).ToArray()));

        var capture = PoolStateCodec.Capture(s);
        // Writers go on before the capture is encoded: new chunks, overwrites, unmaps.
        Apply(MetaRecords.ChunkMap(2, 5, [new Replica(0, 5000 * 4096, 5)]));
        Apply(MetaRecords.ChunkMap(1, 3, [new Replica(0, 6000 * 4096, 33)]));
        Apply(MetaRecords.ChunkUnmap(2, 200));
        var payload = capture.Encode();

        // The same records up to the capture, applied in another order of chunks, encode the same.
        var expect = new PoolState();
        expect.Props["label"] = "tank";
        ulong seq2 = 1;
        var before = log.Take(log.Count - 3).ToList();
        var maps = before.Where(r => r.Type == MetaRecordType.ChunkMap).Reverse();
        foreach (var r in before.Take(3).Concat(maps).Append(before[^1]))
            expect.Apply(new WalRecord(seq2++, (ushort)r.Type, r.Flags, r.Payload));
        CollectionAssert.AreEqual(PoolStateCodec.Serialize(expect), payload);

        var back = PoolStateCodec.Deserialize(payload, 1);
        CollectionAssert.AreEqual(new long[] { 0, 3, 77, 150, 200 }, back.Images[2].Chunks.Keys.ToArray());
        CollectionAssert.AreEqual(Enumerable.Range(0, 10).Select(c => (long)c).ToArray(), back.Images[1].Chunks.Keys.ToArray());
        Assert.AreEqual(300L * 4096 + 3 * 4096, back.Images[1].Chunks[3].Replicas[0].Offset);
        Assert.AreEqual(999L * 4096, back.Images[2].Chunks[77].Moving!.Single().Offset);
        Assert.AreEqual(15L * (9 + 15) + 15, capture.ChunkBytes, "15 chunks of one replica, one of them moving");
    }

    [TestMethod]
    public void Apply_UnknownRecordType_RefusedUnlessSkippable()
    {
        var s = new PoolState();
        Assert.ThrowsExactly<IncompatibleLayoutException>(() => s.Apply(new WalRecord(1, 200, 0, [])));
        s.Apply(new WalRecord(2, 201, WalFormat.FlagSkippable, []));
        Assert.AreEqual(2UL, s.LastSeq);
    }
}
