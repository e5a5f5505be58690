using System.Diagnostics.Metrics;
using System.Net;
using Strata.Engine.Control;
using Strata.Engine.Nbd;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// Large reads across chunks answered piece by piece with structured replies (NbdConnection.ReadPieces):
/// OFFSET_DATA chunks sent from the store's buffers as each chunk verifies, OFFSET_HOLE chunks for
/// holes, the last with DONE; a read that fails after some pieces ends with its error chunk and the
/// connection goes on. Simple replies carry the same bytes in one reply. A client that stops
/// reading holds no chunk lock: what its socket does not take is copied and queued, and released
/// (each buffer once) when sent or when the connection goes.
/// </summary>
[TestClass]
public sealed class NbdReadPiecesTests
{
    private const int Chunk = 64 << 10;

    [TestMethod]
    public async Task Read_AcrossChunksAndHoles_StructuredInPiecesSimpleWhole_SameBytes()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk);
        var data = new byte[2 << 20];
        var part = new byte[Chunk * 5];
        new Random(17).NextBytes(part);
        part.CopyTo(data, 3 * Chunk);
        new Random(18).NextBytes(data.AsSpan(12 * Chunk, 9 * Chunk));
        using (var w = await nbd.OpenAsync())
        {
            await w.WriteAsync(3 * Chunk, part);
            await w.WriteAsync(12 * Chunk, data[(12 * Chunk)..(21 * Chunk)]);
        }

        // Unaligned at both ends: partial first and last chunks, holes between and around the data.
        int offset = Chunk / 2 + 3, length = 24 * Chunk - 1000;
        var expected = data.AsSpan(offset, length).ToArray();
        using var s = await nbd.OpenAsync();
        var r = await s.RoundTripAsync(CmdRead, (ulong)offset, (uint)length);
        Assert.AreEqual(0u, r.Error, r.Message);
        Assert.AreEqual(1, r.ChunkFlags & 1, "the read ends with DONE");
        Assert.AreEqual((ulong)offset, r.DataOffset);
        Assert.IsGreaterThan(20, r.Pieces, "a piece per chunk (data or hole)");
        CollectionAssert.AreEqual(expected, r.Data);

        using var plain = await nbd.OpenAsync(structured: false);
        CollectionAssert.AreEqual(expected, await plain.ReadAsync((ulong)offset, length));

        // A read within one chunk is one piece.
        var one = await s.RoundTripAsync(CmdRead, 4 * Chunk + 5, Chunk - 10);
        Assert.AreEqual(1, one.Pieces);
        CollectionAssert.AreEqual(data.AsSpan(4 * Chunk + 5, Chunk - 10).ToArray(), one.Data);
        // A payload buffer goes back once its send completed, which the client may see first.
        await WaitForAsync(() => nbd.Server.Buffers.Outstanding == 0, () => $"{nbd.Server.Buffers.Outstanding} buffers out");
    }

    [TestMethod]
    public async Task Read_ChunkCorruptAfterPiecesSent_ErrorChunkEndsTheReadConnectionGoesOn()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk);
        var data = new byte[16 * Chunk];
        new Random(19).NextBytes(data);
        using var c = await nbd.OpenAsync();
        await c.WriteAsync(0, data);
        await c.RoundTripAsync(CmdFlush, 0, 0);

        // Chunk 9's only replica no longer matches its checksum (found by its bytes on the memory targets).
        var marker = data.AsSpan(9 * Chunk + 8192, 64).ToArray();
        var hit = nbd.Devices.Select(d => (Device: d, At: Find(d, marker))).Single(h => h.At >= 0);
        hit.Device.WriteBytes(hit.At, [(byte)~marker[0]]);

        var r = await c.RoundTripAsync(CmdRead, 0, 16 * Chunk);
        Assert.AreNotEqual(0u, r.Error, "the read fails");
        StringAssert.Contains(r.Message, "offset 589824");
        // The pieces sent before the failure were followed by the error chunk: the stream is in step.
        CollectionAssert.AreEqual(data[..(8 * Chunk)], await c.ReadAsync(0, 8 * Chunk));
        CollectionAssert.AreEqual(data[(10 * Chunk)..], await c.ReadAsync(10 * Chunk, 6 * Chunk));
        Assert.AreEqual(0, nbd.Server.InFlightBytes);
    }

    /// <summary>The whole image: 128 chunks, more than loopback TCP's send buffer holds for a client with a 4 KiB receive buffer.</summary>
    private const int Whole = (int)InProcessNbd.ImageSize;

    private static Task<RawNbdClient> OpenTcpAsync(InProcessNbd nbd, int receiveBuffer = 0) =>
        RawNbdClient.OpenAsync(() => RawNbdClient.ConnectTcpAsync(((IPEndPoint)nbd.EndPoint).Port, receiveBuffer), InProcessNbd.Export);

    /// <summary>Completes when the store has finished <paramref name="count"/> reads of <paramref name="bytes"/> bytes (MeteredImage records each then).</summary>
    private sealed class StoreReadDone : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _left;

        public StoreReadDone(InProcessNbd nbd, long bytes, int count = 1)
        {
            _left = count;
            _listener.InstrumentPublished = (i, l) =>
            {
                if (i.Meter == nbd.Metrics.Meter && i.Name == "strata.io.bytes")
                    l.EnableMeasurementEvents(i);
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                foreach (var t in tags)
                    if (t.Key == "op" && (string?)t.Value == IoOps.Read && value == bytes && Interlocked.Decrement(ref _left) == 0)
                        _done.TrySetResult();
            });
            _listener.Start();
        }

        /// <summary>Waits (bounded: a server that holds the read forever fails the test instead of hanging it).</summary>
        public async Task WaitAsync(string what)
        {
            var t = _done.Task;
            Assert.AreSame(t, await Task.WhenAny(t, Task.Delay(TimeSpan.FromSeconds(60))), what);
        }

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>Polls (bounded; no time is asserted) until <paramref name="condition"/> holds.</summary>
    private static async Task WaitForAsync(Func<bool> condition, Func<string> what)
    {
        for (int i = 0; i < 600 && !condition(); i++)
            await Task.Delay(50);
        Assert.IsTrue(condition(), what());
    }

    /// <summary>
    /// A client sends a read of the whole image and reads nothing: the store reads and verifies every
    /// chunk (the pieces its socket cannot take are copied and queued), so a WRITE of the same chunks
    /// on another connection completes. Sent after the store had finished the read, the write does not
    /// show in its reply: the client, reading again, gets every byte as it was before the write (and a
    /// FLUSH sent after the read answered after the read's pieces, no reply inside a chunk); a new read
    /// gets the written bytes.
    /// </summary>
    [TestMethod]
    public async Task Read_ClientStopsReading_WriteOfItsChunksCompletes_ReplyHasPreWriteBytes()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk, tcp: true);
        var before = new byte[Whole];
        new Random(23).NextBytes(before);
        using (var w = await OpenTcpAsync(nbd))
            await w.WriteAsync(0, before);

        using var stalled = await OpenTcpAsync(nbd, receiveBuffer: 4096);
        ulong read, flush;
        using (var done = new StoreReadDone(nbd, Whole))
        {
            read = await stalled.SendRequestAsync(CmdRead, 0, Whole);
            flush = await stalled.SendRequestAsync(CmdFlush, 0, 0);
            await done.WaitAsync("the store finished the read although its client reads nothing");
        }
        Assert.IsGreaterThan(0L, nbd.Server.Buffers.Outstanding, "pieces the socket did not take wait in payload buffers");
        Assert.IsGreaterThanOrEqualTo((long)Whole, nbd.Server.InFlightBytes, "the read holds its payload budget until its last piece is sent");

        var after = new byte[Whole];
        new Random(24).NextBytes(after);
        using (var writer = await OpenTcpAsync(nbd))
            await writer.WriteAsync(0, after);

        var replies = new[] { await stalled.ReadReplyAsync(), await stalled.ReadReplyAsync() };
        var r = replies.Single(x => x.Cookie == read);
        Assert.AreEqual(0u, r.Error, r.Message);
        Assert.AreEqual(1, r.ChunkFlags & 1, "the read ends with DONE");
        Assert.AreEqual(0UL, r.DataOffset);
        Assert.IsGreaterThan(Whole / Chunk - 1, r.Pieces, "a piece per chunk");
        CollectionAssert.AreEqual(before, r.Data, "every chunk as it was before the write");
        Assert.AreEqual(0u, replies.Single(x => x.Cookie == flush).Error);

        CollectionAssert.AreEqual(after, await stalled.ReadAsync(0, Whole));
        await WaitForAsync(() => nbd.Server.InFlightBytes == 0 && nbd.Server.Buffers.Outstanding == 0,
            () => $"{nbd.Server.InFlightBytes} bytes in flight, {nbd.Server.Buffers.Outstanding} buffers out after every reply");
    }

    /// <summary>Sends a read of the whole image on a client that reads nothing; returns once its pieces wait in payload buffers.</summary>
    private static async Task<RawNbdClient> StalledReadAsync(InProcessNbd nbd)
    {
        var data = new byte[Whole];
        new Random(25).NextBytes(data);
        using (var w = await OpenTcpAsync(nbd))
            await w.WriteAsync(0, data);
        var c = await OpenTcpAsync(nbd, receiveBuffer: 4096);
        using var done = new StoreReadDone(nbd, Whole);
        await c.SendRequestAsync(CmdRead, 0, Whole);
        await done.WaitAsync("the store finished the read although its client reads nothing");
        Assert.IsGreaterThan(0L, nbd.Server.Buffers.Outstanding, "pieces the socket did not take wait in payload buffers");
        return c;
    }

    [TestMethod]
    public async Task Read_ClientGoneWithPiecesQueued_EveryBufferReturnedOnce_ServerGoesOn()
    {
        await using var nbd = await InProcessNbd.StartAsync(chunkSize: Chunk, tcp: true);
        var c = await StalledReadAsync(nbd);
        c.Dispose();
        // Outstanding counts rentals less returns: 0 is every queued buffer returned, none twice.
        await WaitForAsync(() => nbd.Server.ConnectionCount == 0 && nbd.Server.InFlightBytes == 0 && nbd.Server.Buffers.Outstanding == 0,
            () => $"{nbd.Server.ConnectionCount} connections, {nbd.Server.InFlightBytes} bytes in flight, {nbd.Server.Buffers.Outstanding} buffers out");

        using var next = await OpenTcpAsync(nbd);
        var r = await next.RoundTripAsync(CmdRead, Chunk / 2, 3 * Chunk);
        Assert.AreEqual(0u, r.Error, r.Message);
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
    }

    [TestMethod]
    public async Task Stop_ClientStopsReadingWithPiecesQueued_AbandonedAfterGrace_EveryBufferReturnedOnce()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { StopGrace = TimeSpan.FromSeconds(1) }, chunkSize: Chunk, tcp: true);
        using var c = await StalledReadAsync(nbd);
        var stop = nbd.Server.StopAsync();
        Assert.AreSame(stop, await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(60))), "the stop finishes although the client reads nothing");
        await stop;
        Assert.AreEqual(0, nbd.Server.InFlightBytes);
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding, "every queued piece's buffer came back, once");
        Assert.IsTrue(await c.IsClosedByServerAsync());
    }

    private const int Mib = 1 << 20;

    /// <summary>Where the i-th 1 MiB read starts: spread over the image, never chunk-aligned (4 KiB chunks: 257 pieces each).</summary>
    private static ulong MegabyteAt(int i) => (ulong)((i % 7) * Mib + (i % 3) * 4096 + 512);

    /// <summary>
    /// The shape of perf's nbd read-1m row on 4 KiB chunks: <paramref name="reads"/> 1 MiB reads in flight
    /// on a client that reads none of the replies, so they fill its socket and the rest of them waits in
    /// payload buffers. Returns the image's bytes and the client, after the store finished every read
    /// (or at once when <paramref name="storeDone"/> is false: pieces are still being handed over).
    /// </summary>
    private static async Task<(byte[] Data, RawNbdClient Client)> StalledMegabyteReadsAsync(InProcessNbd nbd, int reads, bool storeDone = true)
    {
        var data = new byte[Whole];
        new Random(26).NextBytes(data);
        using (var w = await OpenTcpAsync(nbd))
            await w.WriteAsync(0, data);
        var c = await OpenTcpAsync(nbd, receiveBuffer: 4096);
        using var done = new StoreReadDone(nbd, Mib, reads);
        for (int i = 0; i < reads; i++)
            await c.SendRequestAsync(CmdRead, MegabyteAt(i), Mib);
        if (storeDone && reads > 0)
        {
            await done.WaitAsync("the store finished every read although its client reads nothing");
            Assert.IsGreaterThan(0L, nbd.Server.Buffers.Outstanding, "pieces the socket did not take wait in payload buffers");
        }
        return (data, c);
    }

    /// <summary>DMA buffers the targets have rented out (the store's read buffers among them).</summary>
    private static long DeviceBuffersOut(InProcessNbd nbd) => nbd.Devices.Sum(d => d.Buffers.OutstandingCount);

    /// <summary>
    /// Every chunk of the image can be written and read back through the store (no chunk lock is left
    /// held by a read whose pieces were dropped), and the targets' read buffers all came back.
    /// </summary>
    private static async Task AssertChunksFreeAsync(InProcessNbd nbd, long deviceBuffersBefore)
    {
        await WaitForAsync(() => DeviceBuffersOut(nbd) <= deviceBuffersBefore,
            () => $"{DeviceBuffersOut(nbd)} DMA buffers out, {deviceBuffersBefore} before the reads");
        var image = nbd.Pool.OpenImage("c", "img");
        var after = new byte[Whole];
        new Random(27).NextBytes(after);
        var write = image.WriteAsync(0, after).AsTask();
        Assert.AreSame(write, await Task.WhenAny(write, Task.Delay(TimeSpan.FromSeconds(30))), "a write of the read chunks completes");
        await write;
        var back = new byte[Whole];
        await image.ReadAsync(0, back);
        CollectionAssert.AreEqual(after, back);
    }

    /// <summary>
    /// perf's read-1m row hung at the server's stop: a client with many 1 MiB reads whose pieces wait in
    /// payload buffers and who reads none of them. The stop cuts it off after the grace and finishes;
    /// every queued piece's buffer came back once, the payload budget is free, no chunk stays locked.
    /// </summary>
    [TestMethod]
    public async Task Stop_ManyMegabyteReadsQueuedClientNeverReads_DisposeFinishesNothingLeaks()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { StopGrace = TimeSpan.FromSeconds(1) }, tcp: true);
        long dmaBefore = DeviceBuffersOut(nbd);
        var (_, c) = await StalledMegabyteReadsAsync(nbd, 32);
        using (c)
        {
            var dispose = nbd.Server.DisposeAsync().AsTask();
            Assert.AreSame(dispose, await Task.WhenAny(dispose, Task.Delay(TimeSpan.FromSeconds(30))), "the server stops although its client reads nothing");
            await dispose;
            Assert.AreEqual(0, nbd.Server.ConnectionCount);
            Assert.AreEqual(0, nbd.Server.InFlightBytes, "the reads' payload budget is back");
            Assert.AreEqual(0, nbd.Server.Buffers.Outstanding, "every queued piece's buffer came back, once");
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await AssertChunksFreeAsync(nbd, dmaBefore);
    }

    /// <summary>
    /// The client closes its socket with many 1 MiB reads' pieces queued (after the store finished, or
    /// while it still hands pieces over): the connection closes, every buffer comes back once, and a new
    /// connection writes and reads the same chunks.
    /// </summary>
    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public async Task Read_ClientClosesWithMegabyteReadsQueued_NothingLeaks_NewConnectionUsesTheChunks(bool storeDone)
    {
        await using var nbd = await InProcessNbd.StartAsync(tcp: true);
        long dmaBefore = DeviceBuffersOut(nbd);
        var (_, c) = await StalledMegabyteReadsAsync(nbd, 32, storeDone);
        c.Dispose();
        await WaitForAsync(() => nbd.Server.ConnectionCount == 0 && nbd.Server.InFlightBytes == 0 && nbd.Server.Buffers.Outstanding == 0,
            () => $"{nbd.Server.ConnectionCount} connections, {nbd.Server.InFlightBytes} bytes in flight, {nbd.Server.Buffers.Outstanding} buffers out");

        using var next = await OpenTcpAsync(nbd);
        var after = new byte[Whole];
        new Random(28).NextBytes(after);
        await next.WriteAsync(0, after);
        for (int i = 0; i < 7; i++)
            CollectionAssert.AreEqual(after.AsSpan((int)MegabyteAt(i), Mib).ToArray(), await next.ReadAsync(MegabyteAt(i), Mib));
        await AssertChunksFreeAsync(nbd, dmaBefore);
    }

    /// <summary>
    /// A client that stops reading while its 1 MiB reads' pieces are queued and then reads on gets every
    /// reply, round after round: a piece queued while nobody holds the socket is always sent.
    /// </summary>
    [TestMethod]
    public async Task Read_ClientPausesWithMegabyteReadsQueued_EveryReplyArrivesEachRound()
    {
        await using var nbd = await InProcessNbd.StartAsync(tcp: true);
        var (data, c) = await StalledMegabyteReadsAsync(nbd, 0);
        using (c)
        {
            for (int round = 0; round < 4; round++)
            {
                var cookies = new Dictionary<ulong, int>();
                using (var done = new StoreReadDone(nbd, Mib, 16))
                {
                    for (int i = 0; i < 16; i++)
                        cookies[await c.SendRequestAsync(CmdRead, MegabyteAt(round + i), Mib)] = round + i;
                    await done.WaitAsync($"round {round}: the store finished every read");
                }
                await ReadRepliesAsync(c, data, cookies);
            }
        }
        await WaitForAsync(() => nbd.Server.InFlightBytes == 0 && nbd.Server.Buffers.Outstanding == 0,
            () => $"{nbd.Server.InFlightBytes} bytes in flight, {nbd.Server.Buffers.Outstanding} buffers out after every reply");
    }

    /// <summary>
    /// Pieces queued while the send loop holds the socket, woken and not yet reading the reply channel,
    /// go out with those it woke for; and pieces queued later, when the socket is full and nobody sends,
    /// wake it again. perf's read-1m row lost that wake-up (the loop took a second one with its own and
    /// left it counted as posted): the rest of a read stayed queued, its client waited for it forever,
    /// and the server's stop hung on the read.
    /// </summary>
    [TestMethod]
    public async Task Read_PiecesQueuedAsTheSendLoopWakes_LaterPiecesStillWakeIt()
    {
        await using var nbd = await InProcessNbd.StartAsync(tcp: true);
        var (data, c) = await StalledMegabyteReadsAsync(nbd, 0);
        using (c)
        {
            var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            int armed = 1;
            nbd.Server.SendLoopHolding = () =>
            {
                if (Interlocked.Exchange(ref armed, 0) == 0)
                    return ValueTask.CompletedTask;
                held.TrySetResult();
                return new ValueTask(go.Task);
            };
            var cookies = new Dictionary<ulong, int>();
            using (var done = new StoreReadDone(nbd, Mib, 32))
            {
                // 16 MiB fill the socket (the client reads nothing yet): the send loop wakes for the rest.
                for (int i = 0; i < 16; i++)
                    cookies[await c.SendRequestAsync(CmdRead, MegabyteAt(i), Mib)] = i;
                Assert.AreSame(held.Task, await Task.WhenAny(held.Task, Task.Delay(TimeSpan.FromSeconds(30))), "the send loop woke for queued pieces");
                // Held there with the socket: every piece of 16 more reads is queued behind it.
                for (int i = 16; i < 32; i++)
                    cookies[await c.SendRequestAsync(CmdRead, MegabyteAt(i), Mib)] = i;
                await done.WaitAsync("the store finished every read");
            }
            go.SetResult();
            await ReadRepliesAsync(c, data, cookies);

            // The socket fills again and the rest waits for the send loop, which these pieces must wake.
            cookies.Clear();
            using (var done = new StoreReadDone(nbd, Mib, 16))
            {
                for (int i = 0; i < 16; i++)
                    cookies[await c.SendRequestAsync(CmdRead, MegabyteAt(i + 3), Mib)] = i + 3;
                await done.WaitAsync("the store finished every read");
            }
            await ReadRepliesAsync(c, data, cookies);
        }
        await WaitForAsync(() => nbd.Server.InFlightBytes == 0 && nbd.Server.Buffers.Outstanding == 0,
            () => $"{nbd.Server.InFlightBytes} bytes in flight, {nbd.Server.Buffers.Outstanding} buffers out after every reply");
    }

    /// <summary>Reads a reply for each of <paramref name="cookies"/> (read i of <see cref="MegabyteAt"/>), each with the image's bytes.</summary>
    private static async Task ReadRepliesAsync(RawNbdClient c, byte[] data, Dictionary<ulong, int> cookies)
    {
        for (int k = 0; k < cookies.Count; k++)
        {
            var r = await c.ReadReplyAsync();
            Assert.AreEqual(0u, r.Error, r.Message);
            int i = cookies[r.Cookie];
            CollectionAssert.AreEqual(data.AsSpan((int)MegabyteAt(i), Mib).ToArray(), r.Data, $"read {i}");
        }
    }

    private static long Find(GatedMemoryBlockDevice device, byte[] marker)
    {
        var all = new byte[device.Geometry.Capacity];
        device.ReadBytes(0, all);
        int at = all.AsSpan().IndexOf(marker);
        return at;
    }
}
