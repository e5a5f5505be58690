using System.Buffers.Binary;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// WAL v2 framing (docs/format.md, "WAL v2"): checksummed batches of compact records, replayed
/// batch by batch; a batch is whole or absent. Includes the bounds the fuzz harness (wal-v2) checks.
/// </summary>
[TestClass]
public sealed class WalFormatV2Tests
{
    private static readonly Guid PoolId = Guid.NewGuid();
    private static readonly uint Seed = WalFormatV2.Seed(PoolId, 3);
    private const int Block = 512;

    private static MetaRecord Write4K(long chunk, int rf) =>
        MetaRecords.ChunkMap(7, chunk, Enumerable.Range(0, rf).Select(r => new Replica((ushort)r, chunk * 4096, 0xC0FFEE)).ToArray());

    /// <summary>Lays batches out one after the other, each padded to whole blocks, as PoolLog writes them.</summary>
    private static byte[] Log(int length, ulong firstSeq, params MetaRecord[][] batches)
    {
        var wal = new byte[length];
        int at = 0;
        ulong seq = firstSeq;
        foreach (var records in batches)
        {
            int body = records.Sum(r => WalFormatV2.RecordLength(r.Payload.Length));
            int span = (int)DeviceIo.AlignUp(WalFormatV2.HeaderSize + body, Block);
            int pos = at + WalFormatV2.HeaderSize;
            foreach (var r in records)
                pos += WalFormatV2.EncodeRecord(wal.AsSpan(pos), (ushort)r.Type, r.Flags, r.Payload);
            WalFormatV2.Seal(wal.AsSpan(at, span), Seed, seq, seq - 1, span, body);
            seq += 1 + (ulong)records.Length;
            at += span;
        }
        return wal;
    }

    [TestMethod]
    public void Replay_TwoBatches_RecordsInOrderWithImplicitSequencesAndHighestMark()
    {
        var wal = Log(8 * Block, 11, [Write4K(0, 1), Write4K(1, 2)], [MetaRecords.PoolSetProp("user.x", "y")]);

        var (records, tail, next, durable) = WalFormatV2.Replay(wal, 0, Seed, 11, 10);

        // Batch 11 holds records 12 and 13; batch 14 holds 15.
        CollectionAssert.AreEqual(new ulong[] { 12, 13, 15 }, records.Select(r => r.Seq).ToArray());
        CollectionAssert.AreEqual(Write4K(1, 2).Payload, records[1].Payload);
        Assert.AreEqual((ushort)MetaRecordType.PoolSetProp, records[2].Type);
        Assert.AreEqual((2L * Block, 16UL, 13UL), (tail, next, durable));
    }

    [TestMethod]
    public void Replay_OneSectorOfABatchLost_WholeBatchGoneEarlierBatchKept()
    {
        var many = Enumerable.Range(0, 40).Select(c => Write4K(c, 1)).ToArray();
        var wal = Log(16 * Block, 1, [Write4K(100, 1)], many);
        var (all, _, _, _) = WalFormatV2.Replay(wal, 0, Seed, 1, 0);
        Assert.HasCount(41, all);
        // The second batch spans three blocks; a crash tears it (its last block never reached the media).
        Array.Clear(wal, 3 * Block, Block);

        var (records, tail, next, _) = WalFormatV2.Replay(wal, 0, Seed, 1, 0);

        Assert.HasCount(1, records, "v1 would keep the torn batch's intact prefix; v2 keeps none of it");
        Assert.AreEqual((Block * 1L, 3UL), (tail, next));
    }

    [TestMethod]
    public void Void_RecordBecomesPad_LaterRecordsKeepTheirSequences()
    {
        var wal = Log(4 * Block, 1, [Write4K(0, 1), Write4K(1, 1), Write4K(2, 1)]);
        int second = WalFormatV2.HeaderSize + WalFormatV2.RecordLength(Write4K(0, 1).Payload.Length);

        WalFormatV2.Void(wal.AsSpan(0, Block), second, WalFormatV2.RecordLength(Write4K(1, 1).Payload.Length), Seed);

        var (records, _, next, _) = WalFormatV2.Replay(wal, 0, Seed, 1, 0);
        CollectionAssert.AreEqual(new ulong[] { 2, 4 }, records.Select(r => r.Seq).ToArray());
        CollectionAssert.AreEqual(Write4K(2, 1).Payload, records[1].Payload);
        Assert.AreEqual(5UL, next);
    }

    [TestMethod]
    public void Replay_EmptyBatchSpanningToTheEnd_ContinuesAtZero()
    {
        var wal = new byte[8 * Block];
        // Batch 5 at block 6 cannot fit the 2 blocks left; an empty batch fills them, batch 6 starts at 0.
        WalFormatV2.Seal(wal.AsSpan(6 * Block), Seed, 5, 4, 2 * Block, 0);
        var first = Log(Block, 6, [Write4K(3, 1)]);
        first.CopyTo(wal, 0);

        var (records, tail, next, _) = WalFormatV2.Replay(wal, 6 * Block, Seed, 5, 0);

        Assert.AreEqual((1, 7UL), (records.Count, records[0].Seq));
        Assert.AreEqual((Block * 1L, 8UL), (tail, next));
    }

    [TestMethod]
    public void Replay_V1RecordsOrOtherEpoch_NothingDecoded()
    {
        var v1 = new byte[4 * Block];
        var mark = MetaRecords.DurableThrough(0);
        WalFormat.Encode(v1, WalFormat.Seed(PoolId, 3), 1, (ushort)mark.Type, 0, mark.Payload, WalFormat.EncodedLength(8));
        Assert.IsEmpty(WalFormatV2.Replay(v1, 0, Seed, 1, 0).Records);
        Assert.AreEqual(1UL, WalFormatV2.Replay(v1, 0, Seed, 1, 0).NextSeq);

        var v2 = Log(4 * Block, 1, [Write4K(0, 1)]);
        Assert.AreEqual(3UL, WalFormatV2.Replay(v2, 0, Seed, 1, 0).NextSeq);
        Assert.AreEqual(1UL, WalFormatV2.Replay(v2, 0, WalFormatV2.Seed(PoolId, 4), 1, 0).NextSeq, "another epoch's seed");
        Assert.AreEqual(1UL, WalFormatV2.Replay(v2, 0, WalFormat.Seed(PoolId, 3), 1, 0).NextSeq, "the v1 seed of the same epoch");
    }

    [TestMethod]
    public void Batch_SpanPastTheLogOrBodyPastTheSpan_EndsReplay()
    {
        var wal = Log(2 * Block, 1, [Write4K(0, 1)]);
        var records = new List<WalRecord>();
        Assert.IsTrue(WalFormatV2.TryDecodeBatch(wal, 0, Seed, 1, records, out _, out _, out _));
        foreach (var (span, body) in new[] { (uint.MaxValue - 7, 30u), (4u * Block, 30u), (Block * 1u, Block - 31u), (24u, 0u) })
        {
            var bad = (byte[])wal.Clone();
            BinaryPrimitives.WriteUInt32LittleEndian(bad.AsSpan(24), span);
            BinaryPrimitives.WriteUInt32LittleEndian(bad.AsSpan(28), body);
            // Made right only where the CRC's range lies inside the log; either way it must not decode.
            if (body <= bad.Length - WalFormatV2.HeaderSize)
                BinaryPrimitives.WriteUInt32LittleEndian(bad.AsSpan(4), Crc32C.Compute(bad.AsSpan(8, WalFormatV2.HeaderSize - 8 + (int)body), Seed));

            Assert.IsFalse(WalFormatV2.TryDecodeBatch(bad, 0, Seed, 1, records, out int s, out _, out _), $"span {span} body {body}");
            Assert.AreEqual(0, s);
        }
        Assert.IsFalse(WalFormatV2.TryDecodeBatch(wal, long.MaxValue - 4, Seed, 1, records, out _, out _, out _));
    }

    [TestMethod]
    public void Batch_CrcRightBodyNotRecords_RefusedAsCorrupt()
    {
        var wal = Log(2 * Block, 1, [Write4K(0, 1)]);
        // The record's length: four continuation bytes (more than a payload length takes), CRC made right.
        wal.AsSpan(WalFormatV2.HeaderSize + 2, 4).Fill(0xFF);
        WalFormatV2.Seal(wal.AsSpan(0, Block), Seed, 1, 0, Block, WalFormatV2.RecordLength(Write4K(0, 1).Payload.Length));

        var e = Assert.ThrowsExactly<CorruptMetadataException>(() => WalFormatV2.Replay(wal, 0, Seed, 1, 0));
        StringAssert.StartsWith(e.Message, "WAL batch 1 passes its CRC32C but its body does not frame into records");
    }

    [TestMethod]
    public void RecordLength_4KiBClientWrite_AboutHalfOfV1()
    {
        // What one 4 KiB write logs (ChunkMap of one chunk): v1 frames it in 56 bytes at rf 1 and 72 at
        // rf 2 (24-byte header, padding to 8); v2 in 30 and 44 (docs/format.md, "WAL v2").
        Assert.AreEqual((56, 72), (WalFormat.EncodedLength(Write4K(0, 1).Payload.Length), WalFormat.EncodedLength(Write4K(0, 2).Payload.Length)));
        Assert.AreEqual((30, 44), (WalFormatV2.RecordLength(Write4K(0, 1).Payload.Length), WalFormatV2.RecordLength(Write4K(0, 2).Payload.Length)));
        // The largest payload still frames (3 length bytes); types and flags outside the format are refused.
        Assert.AreEqual(2 + 3 + WalFormat.MaxPayload, WalFormatV2.RecordLength(WalFormat.MaxPayload));
        var buf = new byte[WalFormat.MaxPayload + 8];
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => WalFormatV2.EncodeRecord(buf, 0x8000, 0, default));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => WalFormatV2.EncodeRecord(buf, 1, 2, default));
        Assert.AreEqual(WalFormat.MaxPayload + 5, WalFormatV2.EncodeRecord(buf, 1, WalFormat.FlagSkippable, new byte[WalFormat.MaxPayload]));
    }
    [TestMethod]
    public void CommittedLogImage_DecodesToTheSameRecords()
    {
        // tests/Strata.Fuzz/corpus/wal-v2/valid-records: two batches written by the encoder when the
        // format shipped. A change to the framing that breaks reading it fails here, not in the field.
        var wal = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "corpus", "wal-v2", "valid-records"));
        var seed = WalFormatV2.Seed(new Guid("5d1b8a3c-0f4e-4b6a-9c2d-7e8f90a1b2c3"), 0);

        var (records, tail, next, durable) = WalFormatV2.Replay(wal, 0, seed, 1, 0);

        Assert.AreEqual((1024, 0L, 20UL, 5UL), (wal.Length, tail, next, durable));
        CollectionAssert.AreEqual(new ulong[] { 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19 }, records.Select(r => r.Seq).ToArray());
        CollectionAssert.AreEqual(new ushort[] { 1, 1, 2, 5, 8, 8, 10, 4, 6, 9, 11, 32, 33, 34, 35, 5, 7 }, records.Select(r => r.Type).ToArray());
        CollectionAssert.AreEqual(MetaRecords.ChunkMap(1, 0, [new Replica(0, 0, 0x1234), new Replica(1, 131072, 0x1234)]).Payload, records[4].Payload);
    }
}
