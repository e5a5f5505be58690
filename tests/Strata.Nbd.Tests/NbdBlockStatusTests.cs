using Strata.Engine.Device;
using Strata.Engine.Pools;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// The NBD features real clients use, from the wire: base:allocation (NBD_OPT_SET_META_CONTEXT,
/// NBD_CMD_BLOCK_STATUS), NBD_CMD_FLAG_FAST_ZERO, and CAN_MULTI_CONN's promise that a FLUSH on one
/// connection makes writes answered on another durable. The real clients (qemu-img map, nbdinfo
/// --map, nbdcopy, qemu-img convert) are in NbdClientTests.
/// </summary>
[TestClass]
public sealed class NbdBlockStatusTests
{
    private const int Chunk = 64 << 10;
    private const uint Hole = 3; // NBD_STATE_HOLE | NBD_STATE_ZERO
    private const uint Data = 0;

    private static List<(uint, uint)> Extents(params (long Length, uint Flags)[] e) => e.Select(x => ((uint)x.Length, x.Flags)).ToList();

    [TestMethod]
    public async Task BlockStatus_WritesAtChunkEdgesAndTrims_HolesExactlyWhereUnmapped()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk);
        using var c = await nbd.OpenAsync(metaContext: "base:allocation");
        const long size = InProcessNbd.ImageSize;
        var (context, fresh) = await c.BlockStatusAsync(0, (uint)size);
        Assert.AreEqual(1u, context, "the id SET_META_CONTEXT gave base:allocation");
        CollectionAssert.AreEqual(Extents((size, Hole)), fresh, "a new image is one hole");

        // Two bytes across the edge of chunks 0 and 1 map both; one byte maps chunk 5.
        await c.WriteAsync(Chunk - 1, [1, 2]);
        await c.WriteAsync(5 * Chunk, [3]);
        CollectionAssert.AreEqual(Extents((2 * Chunk, Data), (3 * Chunk, Hole), (Chunk, Data), (size - 6 * Chunk, Hole)),
            (await c.BlockStatusAsync(0, (uint)size)).Extents);

        // A trim from the middle of chunk 0 over chunk 1: chunk 0 is zeroed in place (still data), chunk 1 unmapped.
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdTrim, Chunk / 2, 2 * Chunk)).Error);
        CollectionAssert.AreEqual(Extents((Chunk, Data), (4 * Chunk, Hole), (Chunk, Data), (size - 6 * Chunk, Hole)),
            (await c.BlockStatusAsync(0, (uint)size)).Extents);
        CollectionAssert.AreEqual(new byte[2 * Chunk], await c.ReadAsync(Chunk / 2, 2 * Chunk), "trimmed bytes read back as zeroes");

        // An unaligned question is answered for exactly the bytes asked about.
        CollectionAssert.AreEqual(Extents((Chunk / 2 - 7, Data), (Chunk / 2 + 7, Hole)), (await c.BlockStatusAsync(Chunk / 2 + 7, Chunk)).Extents);
        // REQ_ONE: one descriptor, never longer than asked.
        CollectionAssert.AreEqual(Extents((Chunk, Data)), (await c.BlockStatusAsync(0, (uint)size, FlagReqOne)).Extents);
        CollectionAssert.AreEqual(Extents((100, Hole)), (await c.BlockStatusAsync(Chunk, 100, FlagReqOne)).Extents);

        // WRITE_ZEROES that may punch a hole does; with NO_HOLE the chunk stays data.
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWriteZeroes, 5 * Chunk, Chunk)).Error);
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWriteZeroes, 7 * Chunk, Chunk, flags: FlagNoHole)).Error);
        CollectionAssert.AreEqual(Extents((Chunk, Data), (6 * Chunk, Hole), (Chunk, Data), (size - 8 * Chunk, Hole)),
            (await c.BlockStatusAsync(0, (uint)size)).Extents);

        // Past the end and empty questions are refused; the connection stays usable.
        var past = await c.RoundTripAsync(CmdBlockStatus, (ulong)size, 1);
        Assert.AreEqual(EInval, past.Error);
        StringAssert.Contains(past.Message, "past the end");
        Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdBlockStatus, 0, 0)).Error);
        CollectionAssert.AreEqual(Extents((Chunk, Data)), (await c.BlockStatusAsync(0, Chunk)).Extents);
    }

    [TestMethod]
    public async Task BlockStatus_ManyRuns_ReplyStopsEarlyAndClientContinues()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: 4096);
        using var c = await nbd.OpenAsync(metaContext: "base:allocation");
        // Every other chunk mapped: 1024 runs in the first 4 MiB, more than one reply carries.
        for (int i = 0; i < 512; i++)
            await c.WriteAsync((ulong)i * 8192, [1]);
        var map = new List<(ulong Offset, long Length, uint Flags)>();
        int replies = 0;
        for (ulong at = 0; at < InProcessNbd.ImageSize; replies++)
        {
            var (_, extents) = await c.BlockStatusAsync(at, (uint)(InProcessNbd.ImageSize - (long)at));
            Assert.IsLessThanOrEqualTo(128, extents.Count);
            foreach (var (length, flags) in extents)
            {
                // Runs split only by a reply's end are one run.
                if (map.Count > 0 && map[^1].Flags == flags)
                    map[^1] = map[^1] with { Length = map[^1].Length + length };
                else
                    map.Add((at, length, flags));
                at += length;
            }
        }
        Assert.IsGreaterThanOrEqualTo(8, replies, "1,024 runs take several replies");
        Assert.AreEqual(1024, map.Count);
        for (int i = 0; i < 1023; i++)
            Assert.AreEqual(((ulong)i * 4096, 4096L, i % 2 == 0 ? Data : Hole), map[i]);
        Assert.AreEqual((1023UL * 4096, (4L << 20) + 4096, Hole), map[1023]);
    }

    [TestMethod]
    public async Task MetaContext_Negotiation_OnlyTheSelectedExportAnswersBlockStatus()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        await nbd.Pool.CreateImageAsync("c", "img2", 1 << 20, 4096);
        using (var c = await nbd.ConnectAsync())
        {
            await c.ReadGreetingAsync();
            await c.SendClientFlagsAsync(3);
            var early = await c.MetaContextAsync(OptSetMeta, InProcessNbd.Export, "base:allocation");
            Assert.AreEqual(ErrInvalid, early.Single().Type, "structured replies come first");
            StringAssert.Contains(early[0].Text, "NBD_OPT_STRUCTURED_REPLY");
            await c.SendOptionAsync(OptStructured, []);
            Assert.AreEqual(RepAck, (await c.ReadOptionReplyAsync()).Type);

            foreach (var queries in new[] { Array.Empty<string>(), ["base:"], ["x-other:thing", "base:allocation"] })
            {
                var list = await c.MetaContextAsync(OptListMeta, InProcessNbd.Export, queries);
                Assert.HasCount(2, list, string.Join(",", queries));
                Assert.AreEqual(RepMetaContext, list[0].Type);
                CollectionAssert.AreEqual("\0\0\0\0base:allocation"u8.ToArray(), list[0].Data, "LIST's context id is 0");
                Assert.AreEqual(RepAck, list[1].Type);
            }
            Assert.AreEqual(RepAck, (await c.MetaContextAsync(OptListMeta, InProcessNbd.Export, "qemu:dirty-bitmap:b")).Single().Type, "other namespaces are ignored");
            var unknown = await c.MetaContextAsync(OptSetMeta, "p/c/missing", "base:allocation");
            Assert.AreEqual(ErrUnknown, unknown.Single().Type);
            var noColon = await c.MetaContextAsync(OptSetMeta, InProcessNbd.Export, "allocation");
            Assert.AreEqual(ErrInvalid, noColon.Single().Type);
            StringAssert.Contains(noColon[0].Text, "no namespace");

            var set = await c.MetaContextAsync(OptSetMeta, InProcessNbd.Export, "base:allocation");
            Assert.AreEqual(RepMetaContext, set[0].Type);
            CollectionAssert.AreEqual("\0\0\0\u0001base:allocation"u8.ToArray(), set[0].Data);
            // A later SET replaces the selection: selecting nothing means no BLOCK_STATUS.
            Assert.AreEqual(RepAck, (await c.MetaContextAsync(OptSetMeta, InProcessNbd.Export, "base:")).Single().Type);
            Assert.AreEqual(RepAck, (await c.GoAsync(OptGo, InProcessNbd.Export)).Final);
            var refused = await c.RoundTripAsync(CmdBlockStatus, 0, 4096);
            Assert.AreEqual(EInval, refused.Error);
            StringAssert.Contains(refused.Message, "BLOCK_STATUS needs the base:allocation metadata context");
        }
        // Selected for one export, then GO to another: no context on the export opened.
        using (var c = await nbd.ConnectAsync())
        {
            await c.ReadGreetingAsync();
            await c.SendClientFlagsAsync(3);
            await c.SendOptionAsync(OptStructured, []);
            Assert.AreEqual(RepAck, (await c.ReadOptionReplyAsync()).Type);
            Assert.AreEqual(RepAck, (await c.MetaContextAsync(OptSetMeta, "p/c/img2", "base:allocation"))[^1].Type);
            Assert.AreEqual(RepAck, (await c.GoAsync(OptGo, InProcessNbd.Export)).Final);
            Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdBlockStatus, 0, 4096)).Error);
        }
        using (var c = await nbd.OpenAsync("p/c/img2", metaContext: "base:allocation"))
            CollectionAssert.AreEqual(Extents((1 << 20, Hole)), (await c.BlockStatusAsync(0, 1 << 20)).Extents);
    }

    [TestMethod]
    public async Task FastZero_NoHoleRefusedAtOnce_HoleAllowedTrims()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk);
        using var c = await nbd.OpenAsync(metaContext: "base:allocation");
        Assert.AreEqual(2048, c.TransmissionFlags & 2048, "NBD_FLAG_SEND_FAST_ZERO");
        var data = Enumerable.Range(0, 3 * Chunk).Select(i => (byte)(i * 7 + 1)).ToArray();
        await c.WriteAsync(0, data);

        var slow = await c.RoundTripAsync(CmdWriteZeroes, 0, Chunk, flags: (ushort)(FlagNoHole | FlagFastZero));
        Assert.AreEqual(ENotSup, slow.Error);
        StringAssert.Contains(slow.Message, "FAST_ZERO");
        CollectionAssert.AreEqual(data, await c.ReadAsync(0, 3 * Chunk), "a refused fast zero writes nothing");

        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWriteZeroes, 100, 2 * Chunk, flags: FlagFastZero)).Error);
        var expected = (byte[])data.Clone();
        expected.AsSpan(100, 2 * Chunk).Clear();
        CollectionAssert.AreEqual(expected, await c.ReadAsync(0, 3 * Chunk));
        // Chunk 1 became a hole; chunks 0 and 2 were zeroed in part and hold data.
        CollectionAssert.AreEqual(Extents((Chunk, Data), (Chunk, Hole), (Chunk, Data)), (await c.BlockStatusAsync(0, 3 * Chunk)).Extents);
    }

    /// <summary>
    /// CAN_MULTI_CONN: a writeback write answered on one connection is made durable by a FLUSH on
    /// another. "Durable" is checked as a power cut sees it: the devices' bytes without the writes
    /// since their last flush command are opened by a second engine. The flush timer is an hour away, so only the FLUSH can have made it durable.
    /// </summary>
    [TestMethod]
    public async Task MultiConn_FlushOnOtherConnection_MakesWritebackWriteDurable()
    {
        await using var nbd = await InProcessNbd.StartAsync(engineOptions: new StorageEngineOptions { WritebackFlushInterval = TimeSpan.FromHours(1) });
        using var a = await nbd.OpenAsync();
        using var b = await nbd.OpenAsync();
        var data = Enumerable.Range(0, 3 * 4096).Select(i => (byte)(i % 251 + 1)).ToArray();
        await a.WriteAsync(8192, data);
        CollectionAssert.AreEqual(data, await b.ReadAsync(8192, data.Length), "visible on the other connection once answered");
        CollectionAssert.AreEqual(new byte[data.Length], await ReadAfterCrashAsync(nbd, 8192, data.Length), "a writeback write is not durable before a flush");

        Assert.AreEqual(0u, (await b.RoundTripAsync(CmdFlush, 0, 0)).Error);
        CollectionAssert.AreEqual(data, await ReadAfterCrashAsync(nbd, 8192, data.Length), "durable after a FLUSH on another connection");
    }

    /// <summary>What a power cut now would leave (GatedMemoryBlockDevice.CrashImage), opened read-only by another engine.</summary>
    private static async Task<byte[]> ReadAfterCrashAsync(InProcessNbd nbd, long offset, int length)
    {
        var copies = new List<MemoryBlockDevice>();
        foreach (var d in nbd.Devices)
        {
            var copy = new MemoryBlockDevice(d.Name, d.Geometry.Capacity);
            copy.WriteBytes(0, d.CrashImage());
            copies.Add(copy);
        }
        var engine = await StorageEngine.OpenAsync(copies.ToArray(), new StorageEngineOptions { ReadOnly = true });
        try
        {
            var image = (await engine.OpenPoolAsync("p")).OpenImage("c", "img");
            var back = new byte[length];
            await image.ReadAsync(offset, back);
            return back;
        }
        finally
        {
            await engine.DisposeAsync();
            foreach (var d in copies)
                await d.DisposeAsync();
        }
    }
}
