using System.Buffers.Binary;
using System.Text;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// The NBD server in process against a real engine on memory targets: handshake answers,
/// transmission semantics, pipelining, several connections, revocation, and that no path
/// leaks a payload buffer.
/// </summary>
[TestClass]
public sealed class NbdServerTests
{
    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    [TestMethod]
    public async Task Greeting_AdvertisesFixedNewstyleAndNoZeroes()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.ConnectAsync();
        Assert.AreEqual((ushort)3, await c.ReadGreetingAsync());
    }

    [TestMethod]
    public async Task OptList_ListsEveryImageOfEveryPool()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        await nbd.Pool.CreateContainerAsync("d");
        await nbd.Pool.CreateImageAsync("d", "disk-1", 1 << 20);
        await nbd.Pool.CreateImageAsync("c", "a.img", 1 << 20);
        using var c = await nbd.ConnectAsync();
        await c.ReadGreetingAsync();
        await c.SendClientFlagsAsync(1);
        CollectionAssert.AreEqual(new[] { "p/c/a.img", "p/c/img", "p/d/disk-1" }, await c.ListAsync());
        // LIST with data is invalid, and the connection stays usable.
        await c.SendOptionAsync(OptList, [1, 2, 3]);
        Assert.AreEqual(ErrInvalid, (await c.ReadOptionReplyAsync()).Type);
        Assert.HasCount(3, await c.ListAsync());
    }

    [TestMethod]
    public async Task OptInfo_RequestedItems_AnswersExportNameDescriptionAndBlockSize()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.ConnectAsync();
        await c.ReadGreetingAsync();
        await c.SendClientFlagsAsync(3);
        var info = await c.GoAsync(OptInfo, InProcessNbd.Export, 1, 2, 3);
        Assert.AreEqual(RepAck, info.Final);
        Assert.AreEqual((ulong)InProcessNbd.ImageSize, info.Size);
        Assert.AreEqual(InProcessNbd.Export, Encoding.UTF8.GetString(info.Infos[1]));
        StringAssert.Contains(Encoding.UTF8.GetString(info.Infos[2]), "4096-byte chunks");
        var bs = info.Infos[3];
        Assert.AreEqual(1u, BinaryPrimitives.ReadUInt32BigEndian(bs));
        Assert.AreEqual(4096u, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(4)));
        Assert.AreEqual(32u << 20, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(8)));
        // INFO does not enter transmission, nor hold the image open.
        Assert.IsEmpty(nbd.Pool.ListClients());
        var go = await c.GoAsync(OptGo, InProcessNbd.Export);
        Assert.AreEqual(RepAck, go.Final);
        Assert.HasCount(1, nbd.Pool.ListClients());
    }

    [TestMethod]
    public async Task OptGo_UnknownOrMalformedExport_ErrUnknownThenGoWorks()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.ConnectAsync();
        await c.ReadGreetingAsync();
        await c.SendClientFlagsAsync(3);
        foreach (var name in new[] { "", "p/c/nope", "nopool/c/img", "img", "p/c/img/extra" })
        {
            var go = await c.GoAsync(OptGo, name);
            Assert.AreEqual(ErrUnknown, go.Final, $"GO '{name}'");
            Assert.IsFalse(string.IsNullOrEmpty(go.Error), "the error carries a message for the user");
        }
        // A name length that overruns the option data is invalid.
        var bad = GoData("p/c/img");
        BinaryPrimitives.WriteUInt32BigEndian(bad, 500);
        await c.SendOptionAsync(OptGo, bad);
        Assert.AreEqual(ErrInvalid, (await c.ReadOptionReplyAsync()).Type);
        Assert.AreEqual(RepAck, (await c.GoAsync(OptGo, InProcessNbd.Export)).Final);
        Assert.AreEqual((ulong)InProcessNbd.ImageSize, c.Size);
    }

    [TestMethod]
    public async Task OptExportName_OldClient_GetsSizeFlagsAndZeroesUnlessNoZeroes()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        foreach (uint flags in new uint[] { 1, 3 })
        {
            using var c = await nbd.ConnectAsync();
            await c.ReadGreetingAsync();
            await c.SendClientFlagsAsync(flags);
            await c.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes(InProcessNbd.Export));
            var reply = await c.ReadExactAsync(10);
            Assert.AreEqual((ulong)InProcessNbd.ImageSize, BinaryPrimitives.ReadUInt64BigEndian(reply));
            if ((flags & 2) == 0)
                CollectionAssert.AreEqual(new byte[124], await c.ReadExactAsync(124));
            // Transmission starts right away, with simple replies.
            var data = Pattern(1000, (int)flags);
            await c.WriteAsync(7, data);
            CollectionAssert.AreEqual(data, await c.ReadAsync(7, 1000));
        }
        // An unknown name cannot be answered with an error: the server closes.
        using var d = await nbd.ConnectAsync();
        await d.ReadGreetingAsync();
        await d.SendClientFlagsAsync(1);
        await d.SendOptionAsync(OptExportName, Encoding.UTF8.GetBytes("p/c/missing"));
        Assert.IsTrue(await d.IsClosedByServerAsync());
    }

    [TestMethod]
    public async Task TransmissionFlags_WritablePool_HonestFlagsIncludingMultiConn()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.OpenAsync();
        // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_FAST_ZERO; not READ_ONLY, ROTATIONAL, DF, CACHE.
        Assert.AreEqual((ushort)(1 | 4 | 8 | 32 | 64 | 256 | 2048), c.TransmissionFlags);
    }

    [TestMethod]
    public async Task ReadOnlyPool_AdvertisesReadOnly_WritesFailEpermReadsWork()
    {
        await using var nbd = await InProcessNbd.StartAsync(readOnlyReopen: true);
        using var c = await nbd.OpenAsync();
        Assert.AreEqual((ushort)(1 | 2 | 4 | 256), c.TransmissionFlags);
        var w = await c.RoundTripAsync(CmdWrite, 0, 4096, new byte[4096]);
        Assert.AreEqual(EPerm, w.Error);
        Assert.AreEqual(EPerm, (await c.RoundTripAsync(CmdTrim, 0, 4096)).Error);
        Assert.AreEqual(EPerm, (await c.RoundTripAsync(CmdWriteZeroes, 0, 4096)).Error);
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdFlush, 0, 0)).Error);
        CollectionAssert.AreEqual(new byte[4096], await c.ReadAsync(0, 4096));
    }

    [TestMethod]
    public async Task SimpleAndStructuredReplies_ReadWriteAtOddOffsets_SameBytes()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        foreach (bool structured in new[] { false, true })
        {
            using var c = await nbd.OpenAsync(structured: structured);
            var data = Pattern(6789, structured ? 1 : 2);
            await c.WriteAsync(12345, data, FlagFua);
            CollectionAssert.AreEqual(data, await c.ReadAsync(12345, 6789));
            // The bytes around the write are untouched (zero), read across chunk boundaries.
            var around = await c.ReadAsync(12340, 6799);
            CollectionAssert.AreEqual(new byte[5], around[..5]);
            CollectionAssert.AreEqual(data, around[5..^5]);
            CollectionAssert.AreEqual(new byte[5], around[^5..]);
            // A zero-length read is answered (NONE chunk when structured) without data.
            var empty = await c.RoundTripAsync(CmdRead, 100, 0);
            Assert.AreEqual(0u, empty.Error);
            Assert.IsEmpty(empty.Data);
            Assert.AreEqual(0u, (await c.RoundTripAsync(CmdFlush, 0, 0)).Error);
        }
    }

    /// <summary>
    /// A write without FUA is writeback (answered without any device flush, visible at once on
    /// every connection); FLUSH makes it durable; a FUA write is durable when answered.
    /// </summary>
    [TestMethod]
    public async Task WriteWithoutFua_NoDeviceFlush_FlushAndFuaFlush()
    {
        await using var nbd = await InProcessNbd.StartAsync(engineOptions: new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan });
        using var c = await nbd.OpenAsync();
        using var other = await nbd.OpenAsync();
        int Flushes() => nbd.Devices.Sum(d => d.Flushes);
        int before = Flushes();
        var data = Pattern(3 * 4096 + 100, 7);
        for (int i = 0; i < 16; i++)
            await c.WriteAsync((ulong)i * 65536 + 10, data);
        Assert.AreEqual(before, Flushes(), "a write without FUA waited for a device flush");
        CollectionAssert.AreEqual(data, await other.ReadAsync(15 * 65536 + 10, data.Length), "another connection does not see the write");
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdFlush, 0, 0)).Error);
        int afterFlush = Flushes();
        Assert.IsTrue(afterFlush > before, "FLUSH did not flush the devices");
        // Nothing written since: a second FLUSH needs no device flush.
        Assert.AreEqual(0u, (await other.RoundTripAsync(CmdFlush, 0, 0)).Error);
        Assert.AreEqual(afterFlush, Flushes());
        await c.WriteAsync(1 << 20, data, FlagFua);
        Assert.IsTrue(Flushes() > afterFlush, "a FUA write was answered without a device flush");
        CollectionAssert.AreEqual(data, await c.ReadAsync(1 << 20, data.Length));
    }

    [TestMethod]
    public async Task WriteCacheOff_EveryWriteFlushedBeforeItsReply()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { WriteCache = false },
            engineOptions: new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan });
        using var c = await nbd.OpenAsync();
        int Flushes() => nbd.Devices.Sum(d => d.Flushes);
        var data = Pattern(5000, 9);
        for (int i = 0; i < 4; i++)
        {
            int before = Flushes();
            await c.WriteAsync((ulong)i * 65536, data);
            Assert.IsTrue(Flushes() > before, $"write {i} was answered before a device flush");
        }
    }

    [TestMethod]
    public async Task StructuredErrors_CarryCodeAndMessage()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.OpenAsync();
        var past = await c.RoundTripAsync(CmdRead, (ulong)InProcessNbd.ImageSize - 10, 20);
        Assert.AreEqual(EInval, past.Error);
        Assert.AreEqual((ushort)0x8001, past.ChunkType);
        Assert.AreEqual(1, past.ChunkFlags & 1);
        StringAssert.Contains(past.Message, "past the end");
        var big = await c.RoundTripAsync(CmdRead, 0, (32u << 20) + 1);
        Assert.AreEqual(EOverflow, big.Error, "structured replies: an oversized read is NBD_EOVERFLOW");
        var writePast = await c.RoundTripAsync(CmdWrite, (ulong)InProcessNbd.ImageSize - 1, 2, [1, 2]);
        Assert.AreEqual(ENoSpc, writePast.Error);
        var cache = await c.RoundTripAsync(CmdCache, 0, 4096);
        Assert.AreEqual(EInval, cache.Error);
        StringAssert.Contains(cache.Message, "CACHE");
        var flags = await c.RoundTripAsync(CmdRead, 0, 512, flags: FlagNoHole);
        Assert.AreEqual(EInval, flags.Error);
        CollectionAssert.AreEqual(new byte[512], await c.ReadAsync(0, 512), "the connection still works");
    }

    [TestMethod]
    public async Task WriteZeroes_WithoutNoHole_Unmaps_WithNoHole_StaysMapped_BothReadZero()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.OpenAsync();
        long Mapped() => nbd.Pool.ListImages("c").Single().MappedBytes;
        await c.WriteAsync(0, Pattern(64 << 10, 3));
        Assert.AreEqual(64L << 10, Mapped());
        // Unaligned on both ends: partial chunks are zeroed, whole chunks unmapped.
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWriteZeroes, 1000, 40000)).Error);
        var after = await c.ReadAsync(0, 64 << 10);
        CollectionAssert.AreEqual(new byte[40000], after[1000..41000]);
        CollectionAssert.AreEqual(Pattern(64 << 10, 3)[..1000], after[..1000]);
        Assert.AreEqual((64L << 10) - 9 * 4096, Mapped(), "chunks 1..9 lie wholly inside [1000, 41000) and are unmapped");

        await c.WriteAsync(0, Pattern(64 << 10, 4));
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdWriteZeroes, 4096, 8192, flags: (ushort)(FlagNoHole | FlagFua))).Error);
        CollectionAssert.AreEqual(new byte[8192], (await c.ReadAsync(4096, 8192)));
        Assert.AreEqual(64L << 10, Mapped(), "NO_HOLE keeps the range allocated");

        // Past the end: ENOSPC, as the spec asks for write zeroes.
        Assert.AreEqual(ENoSpc, (await c.RoundTripAsync(CmdWriteZeroes, (ulong)InProcessNbd.ImageSize, 1)).Error);
        Assert.AreEqual(0u, (await c.RoundTripAsync(CmdTrim, 0, 4096)).Error);
        Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdTrim, (ulong)InProcessNbd.ImageSize, 4096)).Error);
    }

    /// <summary>
    /// With ParallelPayloadBytes 4096 every write here (4096 to 4195 bytes) runs on the connection's worker
    /// thread (answered from there, or by the send loop when the socket is busy); with 0 none does.
    /// </summary>
    [TestMethod]
    [DataRow(256 << 10)]
    [DataRow(4096)]
    [DataRow(0)]
    public async Task Pipelined_200Requests_AllAnsweredByCookie_DataRight(int parallelPayloadBytes)
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { MaxInFlight = 16, ParallelPayloadBytes = parallelPayloadBytes });
        using var c = await nbd.OpenAsync();
        var rng = new Random(7);
        Console.WriteLine("seed 7");
        var expected = new Dictionary<ulong, byte[]>();
        var sent = new Dictionary<ulong, (ushort Type, int Index)>();
        var blocks = Enumerable.Range(0, 100).Select(i => Pattern(4096 + i, 100 + i)).ToArray();
        // 100 writes to disjoint places, then 100 reads of them, all sent before any reply is read
        // (more than MaxInFlight: the server must apply back-pressure, not fail).
        for (int i = 0; i < 100; i++)
            sent[await c.SendRequestAsync(CmdWrite, (ulong)(i * 65536 + rng.Next(1000)), (uint)blocks[i].Length, blocks[i])] = (CmdWrite, i);
        var writes = new List<NbdReply>();
        for (int i = 0; i < 100; i++)
            writes.Add(await c.ReadReplyAsync());
        Assert.IsTrue(writes.All(r => r.Error == 0));
        CollectionAssert.AreEquivalent(sent.Keys.ToList(), writes.Select(r => r.Cookie).ToList());
        var offsets = sent.ToDictionary(kv => kv.Value.Index, kv => kv.Key);
        rng = new Random(7);
        var readCookies = new Dictionary<ulong, int>();
        for (int i = 0; i < 100; i++)
            readCookies[await c.SendRequestAsync(CmdRead, (ulong)(i * 65536 + rng.Next(1000)), (uint)blocks[i].Length)] = i;
        for (int i = 0; i < 100; i++)
        {
            var r = await c.ReadReplyAsync();
            Assert.AreEqual(0u, r.Error);
            CollectionAssert.AreEqual(blocks[readCookies[r.Cookie]], r.Data, $"read {readCookies[r.Cookie]}");
        }
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
    }

    [TestMethod]
    public async Task MultiConn_WriteAckedOnOne_VisibleOnAnother()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var a = await nbd.OpenAsync();
        using var b = await nbd.OpenAsync(structured: false);
        Assert.HasCount(2, nbd.Pool.ListClients());
        for (int i = 0; i < 20; i++)
        {
            var data = Pattern(3000, i);
            await (i % 2 == 0 ? a : b).WriteAsync((ulong)(i * 5000), data);
            CollectionAssert.AreEqual(data, await (i % 2 == 0 ? b : a).ReadAsync((ulong)(i * 5000), 3000));
        }
    }

    [TestMethod]
    public async Task Disc_ClosesAndUnregisters()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var c = await nbd.OpenAsync();
        Assert.HasCount(1, nbd.Pool.ListClients());
        await c.WriteAsync(0, [1, 2, 3]);
        await c.DisconnectAsync();
        Assert.IsTrue(await c.IsClosedByServerAsync());
        await nbd.WaitNoConnectionsAsync();
        Assert.IsEmpty(nbd.Pool.ListClients());
    }

    /// <summary>
    /// Replies take two paths: a request that completes while the receive loop starts it (here a read
    /// of the memory device) is answered by the receive loop; one that completes later on another
    /// thread (a write held at the device's gate) goes through the send loop. Reads are answered while
    /// writes are held, and when the writes are released while more reads stream in, both paths share
    /// the socket: every request is answered exactly once, with the right data.
    /// </summary>
    /// <remarks>
    /// With ParallelPayloadBytes 4096 the writes are started by the connection's worker thread
    /// instead of the receive loop: held at the gate, they complete on the device's thread all the same.
    /// </remarks>
    [TestMethod]
    [DataRow(256 << 10)]
    [DataRow(4096)]
    public async Task Replies_InlineAndSendLoop_ShareTheSocket_EachAnsweredOnce(int parallelPayloadBytes)
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { ParallelPayloadBytes = parallelPayloadBytes });
        using var c = await nbd.OpenAsync();
        await c.WriteAsync(1 << 20, Pattern(65536, 3));
        foreach (var d in nbd.Devices)
            d.Close();
        var writes = new Dictionary<ulong, int>();
        for (int i = 0; i < 8; i++)
            writes[await c.SendRequestAsync(CmdWrite, (ulong)(i * 8192), 4096, Pattern(4096, 100 + i))] = i;
        await Task.WhenAny(nbd.Devices.Select(d => d.Held));
        // Reads complete inline and are answered while every write waits at the gate.
        var reads = new Dictionary<ulong, int>();
        for (int i = 0; i < 16; i++)
            reads[await c.SendRequestAsync(CmdRead, (ulong)((1 << 20) + i % 16 * 4096), 4096)] = i % 16;
        var expected = Pattern(65536, 3);
        for (int i = 0; i < 16; i++)
        {
            var r = await c.ReadReplyAsync();
            Assert.IsTrue(reads.Remove(r.Cookie, out int k), $"reply with cookie {r.Cookie} is not one of the reads");
            Assert.AreEqual(0u, r.Error);
            CollectionAssert.AreEqual(expected.AsSpan(k * 4096, 4096).ToArray(), r.Data);
        }
        // Release the writes (their completions run on other threads) between two bursts of reads.
        for (int i = 0; i < 100; i++)
            reads[await c.SendRequestAsync(CmdRead, (ulong)((1 << 20) + i % 16 * 4096), 4096)] = i % 16;
        foreach (var d in nbd.Devices)
            d.Release();
        for (int i = 100; i < 200; i++)
            reads[await c.SendRequestAsync(CmdRead, (ulong)((1 << 20) + i % 16 * 4096), 4096)] = i % 16;
        var seen = new HashSet<ulong>();
        for (int answered = 0; answered < 208; answered++)
        {
            var r = await c.ReadReplyAsync();
            Assert.IsTrue(seen.Add(r.Cookie), $"cookie {r.Cookie} answered twice");
            Assert.AreEqual(0u, r.Error);
            if (writes.Remove(r.Cookie))
                continue;
            Assert.IsTrue(reads.Remove(r.Cookie, out int k), $"reply with cookie {r.Cookie} is neither a write nor a read");
            CollectionAssert.AreEqual(expected.AsSpan(k * 4096, 4096).ToArray(), r.Data);
        }
        Assert.IsEmpty(writes);
        Assert.IsEmpty(reads);
        for (int i = 0; i < 8; i++)
            CollectionAssert.AreEqual(Pattern(4096, 100 + i), await c.ReadAsync((ulong)(i * 8192), 4096));
        await c.DisconnectAsync();
        await nbd.WaitNoConnectionsAsync();
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
    }

    [TestMethod]
    public async Task RevokeClients_InFlightAnswered_LaterEshutdown_ThenClosed_NewOnesWelcome()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var a = await nbd.OpenAsync();
        using var b = await nbd.OpenAsync(structured: false);
        // Hold a write in flight on a.
        foreach (var d in nbd.Devices)
            d.Close();
        ulong write = await a.SendRequestAsync(CmdWrite, 0, 4096, Pattern(4096, 9));
        await Task.WhenAny(nbd.Devices.Select(d => d.Held));
        var revoke = nbd.Pool.RevokeClientsAsync("pool upgrade");
        // A request arriving after the revoke is refused with NBD_ESHUTDOWN (the spec's word for it).
        ulong read = await a.SendRequestAsync(CmdRead, 0, 4096);
        var refused = await a.ReadReplyAsync();
        Assert.AreEqual(read, refused.Cookie);
        Assert.AreEqual(EShutdown, refused.Error);
        StringAssert.Contains(refused.Message, "pool upgrade");
        foreach (var d in nbd.Devices)
            d.Release();
        var written = await a.ReadReplyAsync();
        Assert.AreEqual(write, written.Cookie);
        Assert.AreEqual(0u, written.Error, "the write in flight when the revoke came completes and is answered");
        Assert.AreEqual(2, await revoke);
        Assert.IsTrue(await a.IsClosedByServerAsync());
        Assert.IsTrue(await b.IsClosedByServerAsync());
        Assert.IsEmpty(nbd.Pool.ListClients());
        await nbd.WaitNoConnectionsAsync();
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
        using var c = await nbd.OpenAsync();
        CollectionAssert.AreEqual(Pattern(4096, 9), await c.ReadAsync(0, 4096));
    }

    [TestMethod]
    public async Task ImageRemove_WhileConnected_RefusedWithClientCount_AllowedAfterDisconnect()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using (var c = await nbd.OpenAsync())
        {
            var e = await Assert.ThrowsExactlyAsync<BusyException>(() => nbd.Pool.RemoveImageAsync("c", "img"));
            StringAssert.Contains(e.Message, "is open by 1 client(s)");
            StringAssert.Contains(e.Message, "nbd");
            await c.DisconnectAsync();
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await nbd.WaitNoConnectionsAsync();
        await nbd.Pool.RemoveImageAsync("c", "img");
        Assert.IsEmpty(nbd.Pool.ListImages("c"));
    }

    [TestMethod]
    public async Task DisconnectMidWrite_NothingWritten_EveryBufferReturned_OthersUnaffected()
    {
        await using var nbd = await InProcessNbd.StartAsync();
        using var good = await nbd.OpenAsync();
        var before = Pattern(1 << 20, 11);
        await good.WriteAsync(0, before);
        using (var bad = await nbd.OpenAsync())
        {
            // Header of a 1 MiB write and half its payload, then gone.
            var req = Request(CmdWrite, 1, 0, 1 << 20, payload: new byte[1 << 19]);
            await bad.SendAsync(req);
        }
        for (int i = 0; i < 600 && nbd.Server.ConnectionCount > 1; i++)
            await Task.Delay(50);
        Assert.AreEqual(1, nbd.Server.ConnectionCount);
        CollectionAssert.AreEqual(before, await good.ReadAsync(0, 1 << 20), "half a write is never applied");
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding, "the half-filled payload buffer went back to the pool");
        Assert.HasCount(1, nbd.Pool.ListClients());
    }

    [TestMethod]
    public async Task ServerStop_InFlightAnswered_ConnectionsClosed_SocketRemoved()
    {
        var nbd = await InProcessNbd.StartAsync();
        try
        {
            using var c = await nbd.OpenAsync();
            await c.WriteAsync(0, [9]);
            await nbd.Server.StopAsync();
            Assert.IsTrue(await c.IsClosedByServerAsync());
            Assert.IsFalse(File.Exists(nbd.SocketPath));
            Assert.IsEmpty(nbd.Pool.ListClients());
        }
        finally
        {
            await nbd.DisposeAsync();
        }
    }

    [TestMethod]
    public async Task UnixPeerRefused_ClosedBeforeTheGreeting()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { AuthorizeUnixPeer = _ => "not on the list" });
        using var c = await nbd.ConnectAsync();
        Assert.IsTrue(await c.IsClosedByServerAsync());
    }

    [TestMethod]
    public async Task HandshakeTimeout_IdleClientClosed()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) });
        using var c = await nbd.ConnectAsync();
        await c.ReadGreetingAsync();
        Assert.IsTrue(await c.IsClosedByServerAsync());
    }

    [TestMethod]
    public async Task ConnectionCap_ExtraConnectionClosed()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { MaxConnections = 1 });
        using var a = await nbd.OpenAsync();
        using var b = await nbd.ConnectAsync();
        Assert.IsTrue(await b.IsClosedByServerAsync());
        CollectionAssert.AreEqual(new byte[8], await a.ReadAsync(0, 8));
    }
}
