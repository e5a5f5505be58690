using System.Buffers.Binary;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// Regression tests for what fuzzing the on-disk decoders found (tests/Strata.Fuzz): bytes that
/// crashed a decoder with an untyped exception, or that a sum wrapping past long.MaxValue let through
/// to a huge allocation. Each must now be refused as corrupt metadata.
/// </summary>
[TestClass]
public sealed class DecoderBoundsTests
{
    private static readonly Guid PoolId = Guid.NewGuid();

    [TestMethod]
    public void HeaderCopies_CopyShorterThan4KiB_ReportedInvalid()
    {
        var copy = new TargetSuperblock { Generation = 1, TargetCount = 1, Capacity = 1 << 30 }.Encode().AsSpan(0, 4040).ToArray();

        Assert.IsNull(TargetSuperblock.Decode(copy, out var problem));
        Assert.AreEqual("copy is 4040 bytes, not 4096", problem);
        Assert.IsNull(ShardHeader.Decode(copy.AsSpan(0, 4), out problem));
        Assert.AreEqual("copy is 4 bytes, not 4096", problem);
    }

    [TestMethod]
    public void TargetSuperblock_ExtentCountAboveInt32Max_ReportedInvalid()
    {
        var copy = new TargetSuperblock { Generation = 1, TargetCount = 1, Capacity = 1 << 30 }.Encode();
        BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan(72), 0x8000_0000);
        HeaderCopies.Seal(copy);

        // Read as a negative int, the count used to pass the bound and decode as no extents at all.
        Assert.IsNull(TargetSuperblock.Decode(copy, out var problem));
        Assert.AreEqual($"extent count {0x8000_0000} exceeds {TargetSuperblock.MaxExtents}", problem);
    }

    private static ShardHeader Planned() =>
        PoolLayoutPlan.Plan("p", PoolId, 64L << 20, 1, 512, PoolCreateOptions.Default, Engine.Layout.LayoutCatalog.Default);

    [TestMethod]
    public void ShardHeader_WalLengthWrappingTheRegionSum_ReportedDamaged()
    {
        var h = Planned();
        Assert.IsNull(h.CheckRegions(512));
        // WalOffset + WalLength wraps negative, so "checkpoint 0 starts after the log" used to hold,
        // and the opener then allocated a log buffer of WalLength bytes.
        var bad = h with { WalLength = long.MaxValue - 511 };

        Assert.AreEqual("regions overlap or extend past the shard", bad.CheckRegions(512));
    }

    [TestMethod]
    public void ShardHeader_LogLargerThanAnArray_ReportedDamaged()
    {
        var h = Planned();
        long wal = 4L << 30;
        var big = h with
        {
            WalLength = wal, Checkpoint0Offset = h.Checkpoint0Offset + wal, Checkpoint1Offset = h.Checkpoint1Offset + wal,
            DataOffset = h.DataOffset + wal, ShardLength = h.ShardLength + wal, WalHead = 0,
        };

        Assert.AreEqual($"the {wal}-byte log is larger than this engine can read", big.CheckRegions(512));
    }

    [TestMethod]
    public void CheckpointSlot_PayloadLengthWrappingTheSlotSum_RefusedAsCorrupt()
    {
        var h = Planned() with { CheckpointSeq = 3 };
        var slot = Checkpoint.Encode(PoolId, 3, 0, PoolStateCodec.Serialize(new PoolState { Props = { ["label"] = "p", ["rf"] = "1" } }), 512);
        Assert.IsTrue(PoolOpener.SlotPayloadLength(slot, h, PoolId) > 0);
        // HeaderSize + length wraps negative and used to pass "fits the slot"; the opener then sized a buffer by it.
        BinaryPrimitives.WriteInt64LittleEndian(slot.AsSpan(32), long.MaxValue - 10);
        BinaryPrimitives.WriteUInt32LittleEndian(slot.AsSpan(60), Crc32C.Compute(slot.AsSpan(0, 60)));

        var e = Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.SlotPayloadLength(slot, h, PoolId));
        Assert.AreEqual($"checkpoint slot 0: payload length {long.MaxValue - 10} does not fit the slot", e.Message);
    }

    [TestMethod]
    public void CheckpointSlot_ShorterThanItsHeader_RefusedAsCorrupt()
    {
        var h = Planned();

        var e = Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.SlotPayloadLength(new byte[10], h, PoolId));
        Assert.AreEqual("checkpoint slot 0: slot of 10 bytes is shorter than its 64-byte header", e.Message);
    }

    [TestMethod]
    public void WalRecord_PayloadLengthNearInt32Max_EndsReplay()
    {
        uint seed = WalFormat.Seed(PoolId, 0);
        var record = new byte[WalFormat.EncodedLength(5)];
        WalFormat.Encode(record, seed, 1, (ushort)MetaRecordType.PoolSetProp, 0, "12345"u8, record.Length);
        Assert.IsNotNull(WalFormat.TryDecode(record, 0, seed, 1, out _));
        // HeaderSize + payload length wraps negative and used to pass "fits the record"; slicing it then threw.
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(20), 0x7FFF_FFF0);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(4), Crc32C.Compute(record.AsSpan(8), seed));

        Assert.IsNull(WalFormat.TryDecode(record, 0, seed, 1, out int length));
        Assert.AreEqual(0, length);
        var (records, tail, next) = WalFormat.Replay(record, 0, seed, 1);
        Assert.AreEqual((0, 0L, 1UL), (records.Count, tail, next));
    }

    [TestMethod]
    [DataRow(0u)]
    [DataRow(3000u)]
    [DataRow(0x8000_0000u)]
    public void WalReplay_ImageWithChunkSizeNotAPowerOfTwo_RefusedAsCorrupt(uint chunkSize)
    {
        var state = new PoolState();
        var create = MetaRecords.ImageCreate(1, 0, "img", 1 << 20, (int)chunkSize);

        // Chunk size 0 used to be accepted, and the image's next resize divided by it.
        var e = Assert.ThrowsExactly<CorruptMetadataException>(() => state.Apply(new WalRecord(1, (ushort)create.Type, 0, create.Payload)));
        Assert.AreEqual($"image 1 has chunk size {chunkSize}, which is not a power of two", e.Message);
        Assert.IsEmpty(state.Images);
    }

    [TestMethod]
    public void CheckpointPayload_ImageWithChunkSizeZero_RefusedAsCorrupt()
    {
        var state = new PoolState();
        var create = MetaRecords.ImageCreate(4, 0, "img", 1 << 20, 65536);
        state.Apply(new WalRecord(1, (ushort)create.Type, 0, create.Payload));
        var payload = PoolStateCodec.Serialize(state);
        // The image's chunk size field: the last u32 before its (empty) property count and chunk count.
        int at = payload.AsSpan().IndexOf("img"u8) + 3 + 8;
        Assert.AreEqual(65536u, BinaryPrimitives.ReadUInt32LittleEndian(payload.AsSpan(at)));
        BinaryPrimitives.WriteUInt32LittleEndian(payload.AsSpan(at), 0);

        var e = Assert.ThrowsExactly<CorruptMetadataException>(() => PoolStateCodec.Deserialize(payload, 1));
        Assert.AreEqual("image 4 has chunk size 0, which is not a power of two", e.Message);
    }

    [TestMethod]
    public void ReplayedState_WithoutLabelOrWithBadNumbers_RefusedAsCorrupt()
    {
        PoolState State(params (string, string)[] props)
        {
            var s = new PoolState();
            foreach (var (k, v) in props)
                s.Props[k] = v;
            return s;
        }

        PoolOpener.CheckReplayed(State(("label", "p"), ("rf", "2")));
        // Opening used to throw KeyNotFoundException (no label or rf) or FormatException (rf, layout) later.
        Assert.AreEqual("the replayed metadata has no pool label",
            Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.CheckReplayed(State(("rf", "1")))).Message);
        Assert.AreEqual("the replayed metadata has replication factor '', which is not a positive number",
            Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.CheckReplayed(State(("label", "p")))).Message);
        Assert.AreEqual("the replayed metadata has replication factor 'two', which is not a positive number",
            Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.CheckReplayed(State(("label", "p"), ("rf", "two")))).Message);
        var bad = State(("label", "p"), ("rf", "1"));
        var c = MetaRecords.ContainerCreate(3, "c", 1);
        bad.Apply(new WalRecord(1, (ushort)c.Type, 0, c.Payload));
        var set = new MetaRecord(MetaRecordType.ContainerSetProp, new MetaWriter().U32(3).Str(ContainerMeta.CreatedLayoutProp).Str("x").ToArray());
        bad.Apply(new WalRecord(2, (ushort)set.Type, 0, set.Payload));
        Assert.AreEqual("container 3 has layout version 'x', which is not a number",
            Assert.ThrowsExactly<CorruptMetadataException>(() => PoolOpener.CheckReplayed(bad)).Message);
    }
}
