using System.Buffers.Binary;
using System.Text;
using Strata.Engine.Layout;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Fuzz;

/// <summary>
/// The seed corpus: small valid inputs made by the engine's own encoders (committed under
/// corpus/HARNESS/valid-*; `Strata.Fuzz seeds DIR` writes them again).
/// </summary>
public static class Seeds
{
    public static IEnumerable<(string Harness, string Name, byte[] Bytes)> All()
    {
        var engine = new Guid("0b8f0c9e-1d2a-4e3b-8c4d-5e6f7a8b9c0d");
        var target = new Guid("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d");
        var sb = new TargetSuperblock { Generation = 2, EngineId = engine, TargetId = target, TargetIndex = 0, TargetCount = 2, Capacity = 1L << 30 };
        yield return ("superblock", "valid-empty", sb.Encode());
        var used = sb.Clone(5, [new ShardExtent(StoreHarnesses.Pool, TargetSuperblock.ReservedBytes, 64L << 20), new ShardExtent(new Guid("c0ffee00-1234-4567-89ab-cdef01234567"), 80L << 20, 16L << 20)]);
        yield return ("superblock", "valid-two-extents", used.Encode());

        var h = PoolLayoutPlan.Plan("p1", StoreHarnesses.Pool, 256L << 20, 2, StoreHarnesses.BlockSize, PoolCreateOptions.Default, LayoutCatalog.Default)
            with { CreatedUnixMicros = 1_764_000_000_000_000 };
        yield return ("shard-header", "valid-new-pool", h.Encode());
        yield return ("shard-header", "valid-after-checkpoint", (h with { Generation = 9, ActiveCheckpoint = 1, CheckpointSeq = 42, WalHead = 4096, WalEpoch = 3, Label = "ünïcode-pool" }).Encode());

        var state = new PoolState();
        foreach (var r in SampleRecords())
            state.Apply(new WalRecord(state.LastSeq + 1, (ushort)r.Type, r.Flags, r.Payload));
        yield return ("checkpoint", "valid-empty-pool", Checkpoint.Encode(StoreHarnesses.Pool, 7, 0, PoolStateCodec.Serialize(new PoolState { Props = { ["label"] = "p1", ["rf"] = "1" } }), StoreHarnesses.BlockSize));
        yield return ("checkpoint", "valid-images", Checkpoint.Encode(StoreHarnesses.Pool, 7, 4096, PoolStateCodec.Serialize(state), StoreHarnesses.BlockSize));

        yield return ("block-table", "valid-32k-chunk", BlockExtent(7, 3, 32 * 1024));

        yield return ("wal", "valid-records", Log(SampleRecords()));
        yield return ("wal", "valid-pad-and-skippable", Log([MetaRecords.PoolSetProp("label", "p1"), new MetaRecord((MetaRecordType)999, [1, 2, 3], WalFormat.FlagSkippable)], pad: true));

        // v2 batches carry the durable mark in their headers, not as a record.
        var v2 = SampleRecords().Where(r => r.Type != MetaRecordType.DurableThrough).ToList();
        yield return ("wal-v2", "valid-records", LogV2([v2[..4], v2[4..]]));
        yield return ("wal-v2", "valid-skippable-voided-wrap", LogV2([[MetaRecords.PoolSetProp("label", "p1"), new MetaRecord((MetaRecordType)999, [1, 2, 3], WalFormat.FlagSkippable)], [MetaRecords.ContainerCreate(1, "c1", 1)]], voidLast: true, wrap: true));

        yield return ("nbd-handshake", "valid-go", Concat(ClientFlags(), Option(OptStructuredReply, []), Option(OptList, []),
            Option(OptInfo, InfoData(NbdHarnesses.ExportName, InfoName, InfoBlockSize)), Option(OptGo, InfoData(NbdHarnesses.ExportName, InfoDescription))));
        yield return ("nbd-handshake", "valid-export-name", Concat(ClientFlags(), Option(OptStartTls, []), Option(OptExportName, Encoding.UTF8.GetBytes(NbdHarnesses.ExportName))));
        yield return ("nbd-handshake", "valid-meta-context", Concat(ClientFlags(), Option(OptStructuredReply, []),
            Option(OptListMetaContext, MetaData(NbdHarnesses.ExportName)), Option(OptListMetaContext, MetaData(NbdHarnesses.ExportName, "base:", "qemu:dirty-bitmap:x")),
            Option(OptSetMetaContext, MetaData(NbdHarnesses.ExportName, "base:allocation", "x-unknown:leaf")), Option(OptGo, InfoData(NbdHarnesses.ExportName))));
        yield return ("nbd-handshake", "valid-abort", Concat(ClientFlags(), Option(OptAbort, [])));

        yield return ("nbd-request", "valid-simple", Concat(Export(1L << 30, 0),
            Request(CmdWrite, CmdFlagFua, 1, 4096, 512), new byte[512],
            Request(CmdRead, 0, 2, 0, 4096), Request(CmdFlush, 0, 3, 0, 0), Request(CmdTrim, 0, 4, 8192, 4096),
            Request(CmdWriteZeroes, CmdFlagNoHole, 5, 65536, 1 << 20), Request(CmdDisc, 0, 6, 0, 0)));
        yield return ("nbd-request", "valid-block-status", Concat(Export(1L << 30, 6),
            Request(CmdBlockStatus, 0, 1, 0, 1 << 20), Request(CmdBlockStatus, CmdFlagReqOne, 2, 4095, 3),
            Request(CmdWriteZeroes, CmdFlagFastZero, 3, 8192, 1 << 20), Request(CmdWriteZeroes, CmdFlagFastZero | CmdFlagNoHole, 4, 0, 4096),
            Request(CmdBlockStatus, 0, 5, 1L << 30, 1), Request(CmdBlockStatus, 0, 6, 0, 0), Request(CmdBlockStatus, CmdFlagDf, 7, 0, 512)));
        yield return ("nbd-request", "valid-structured-refusals", Concat(Export(1L << 20, 3),
            Request(CmdRead, 0, 1, 1L << 20, 1), Request(CmdWrite, 0, 2, 0, 8), new byte[8], Request(CmdBlockStatus, 0, 3, 0, 512),
            Request(CmdRead, CmdFlagDf, 4, 0, 512), Request(CmdRead, 0, 5, 0, 64 << 20)));
    }

    /// <summary>A pool's life in records, as the engine proposes them.</summary>
    private static List<MetaRecord> SampleRecords() =>
    [
        MetaRecords.PoolSetProp("label", "p1"),
        MetaRecords.PoolSetProp("rf", "2"),
        MetaRecords.ContainerCreate(1, "c1", 1),
        MetaRecords.ImageCreate(1, 1, "img", 1L << 20, 128 * 1024),
        MetaRecords.DurableThrough(4),
        MetaRecords.ChunkMap(1, 0, [new Replica(0, 0, 0x1234), new Replica(1, 131072, 0x1234)]),
        MetaRecords.ChunkMap(1, 3, [new Replica(1, 262144, 0x5678)]),
        MetaRecords.ImageSetProp(1, "description", "test"),
        MetaRecords.ContainerSetProp(1, "label", "c2"),
        MetaRecords.ImageResize(1, 2L << 20),
        MetaRecords.ChunkUnmap(1, 3),
        MetaRecords.ChunkUnmapRange(1, 8, 4),
        MetaRecords.UpgradeJobBegin(1, 1, 2),
        MetaRecords.UpgradeJobCursor(1, 0, 5),
        MetaRecords.UpgradeJobEnd(1, UpgradeJobState.Completed, "done"),
        MetaRecords.LayoutSet(2, 1, 0, 1),
        MetaRecords.ImageCreate(2, 1, "gone", 4096, 65536),
        MetaRecords.ImageRemove(2),
    ];

    /// <summary>Records framed as the log writes them, from sequence 1, for the seeds' pool and epoch 0.</summary>
    private static byte[] Log(List<MetaRecord> records, bool pad = false)
    {
        uint seed = WalFormat.Seed(StoreHarnesses.Pool, 0);
        var wal = new List<byte>();
        ulong seq = 1;
        foreach (var r in records)
        {
            var b = new byte[WalFormat.EncodedLength(r.Payload.Length)];
            WalFormat.Encode(b, seed, seq++, (ushort)r.Type, r.Flags, r.Payload, b.Length);
            wal.AddRange(b);
        }
        if (pad)
        {
            int rest = (int)(DeviceIo.AlignUp(wal.Count, StoreHarnesses.BlockSize) - wal.Count);
            var b = new byte[rest];
            WalFormat.Encode(b, seed, seq, WalFormat.PadType, 0, new byte[rest - WalFormat.HeaderSize], rest);
            wal.AddRange(b);
        }
        return wal.ToArray();
    }

    /// <summary>Batches framed as a WAL v2 log writes them (one block each), from sequence 1, for the seeds' pool and epoch 0.</summary>
    private static byte[] LogV2(List<MetaRecord>[] batches, bool voidLast = false, bool wrap = false)
    {
        uint seed = WalFormatV2.Seed(StoreHarnesses.Pool, 0);
        var wal = new List<byte>();
        ulong seq = 1;
        foreach (var records in batches)
        {
            var b = new byte[StoreHarnesses.BlockSize];
            int pos = WalFormatV2.HeaderSize, last = pos;
            foreach (var r in records)
            {
                last = pos;
                pos += WalFormatV2.EncodeRecord(b.AsSpan(pos), (ushort)r.Type, r.Flags, r.Payload);
            }
            WalFormatV2.Seal(b, seed, seq, seq - 1, b.Length, pos - WalFormatV2.HeaderSize);
            if (voidLast)
                WalFormatV2.Void(b, last, pos - last, seed);
            seq += 1 + (ulong)records.Count;
            wal.AddRange(b);
        }
        if (wrap)
        {
            // An empty batch whose span reaches the end of the log: replay goes on at 0 (and stops there at sequence 1).
            var b = new byte[2 * StoreHarnesses.BlockSize];
            WalFormatV2.Seal(b, seed, seq, seq - 1, b.Length, 0);
            wal.AddRange(b);
        }
        return wal.ToArray();
    }

    private static byte[] ClientFlags()
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, ClientFlagFixedNewstyle | ClientFlagNoZeroes);
        return b;
    }

    private static byte[] Option(uint option, byte[] data)
    {
        var b = new byte[OptionHeaderSize + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b, OptionHeaderSize);
        return b;
    }

    private static byte[] InfoData(string name, params ushort[] requests)
    {
        var n = Encoding.UTF8.GetBytes(name);
        var b = new byte[4 + n.Length + 2 + 2 * requests.Length];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)n.Length);
        n.CopyTo(b, 4);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + n.Length), (ushort)requests.Length);
        for (int i = 0; i < requests.Length; i++)
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6 + n.Length + 2 * i), requests[i]);
        return b;
    }

    /// <summary>The data of NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: name, then the queries.</summary>
    private static byte[] MetaData(string name, params string[] queries)
    {
        var parts = new List<byte[]>();
        var n = Encoding.UTF8.GetBytes(name);
        parts.Add(BigEndian((uint)n.Length));
        parts.Add(n);
        parts.Add(BigEndian((uint)queries.Length));
        foreach (var q in queries)
        {
            var b = Encoding.UTF8.GetBytes(q);
            parts.Add(BigEndian((uint)b.Length));
            parts.Add(b);
        }
        return Concat([.. parts]);
    }

    private static byte[] BigEndian(uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        return b;
    }

    private static byte[] Export(long size, byte mode)
    {
        var b = new byte[9];
        BinaryPrimitives.WriteInt64BigEndian(b, size);
        b[8] = mode;
        return b;
    }

    private static byte[] Request(ushort type, ushort flags, ulong cookie, ulong offset, uint length)
    {
        var b = new byte[RequestHeaderSize];
        new NbdRequestHeader(RequestMagic, flags, type, cookie, offset, length).Write(b);
        return b;
    }

    private static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>A block-checksummed extent as ChunkIo writes it: the table of the chunk's data, then the data.</summary>
    private static byte[] BlockExtent(uint image, long chunk, int chunkSize)
    {
        var extent = new byte[ChunkChecksum.TableSize + chunkSize];
        new Random(5).NextBytes(extent.AsSpan(ChunkChecksum.TableSize));
        ChunkChecksum.BuildTable(image, chunk, extent.AsSpan(ChunkChecksum.TableSize), extent.AsSpan(0, ChunkChecksum.TableSize));
        return extent;
    }
}
