using Strata.Engine.Nbd;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// The server's bounds (issue 18): payload in flight over all connections, the memory of its
/// payload buffers, and a stop that finishes whatever clients do. In process, against a real
/// engine on memory targets; NbdLifecycleTests checks the same through the daemon.
/// </summary>
[TestClass]
public sealed class NbdBoundsTests
{
    private const int Payload = 1 << 20;

    /// <summary>Polls (bounded; no time is asserted) until <paramref name="condition"/> holds.</summary>
    private static async Task WaitForAsync(Func<bool> condition, Func<string> what)
    {
        for (int i = 0; i < 600 && !condition(); i++)
            await Task.Delay(50);
        Assert.IsTrue(condition(), what());
    }

    [TestMethod]
    public async Task PayloadBudget_ConnectionsPipelineMoreThanTheBound_RequestsWaitAndAllSucceed()
    {
        const long bound = 2 * Payload;
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions
        {
            MaxPayload = Payload,
            MaxInFlightBytes = Payload,
            MaxInFlightBytesTotal = bound,
        });
        var data = new byte[InProcessNbd.ImageSize];
        new Random(18).NextBytes(data);
        using (var w = await nbd.OpenAsync())
            for (int at = 0; at < data.Length; at += Payload)
                await w.WriteAsync((ulong)at, data[at..(at + Payload)]);

        // 6 connections x 8 reads of 1 MiB, all sent before any reply is read: 48 MiB asked for, 2 MiB allowed.
        var clients = new List<RawNbdClient>();
        for (int i = 0; i < 6; i++)
            clients.Add(await nbd.OpenAsync(structured: i % 2 == 0));
        var offsets = new List<Dictionary<ulong, int>>();
        foreach (var c in clients)
        {
            var sent = new Dictionary<ulong, int>();
            for (int k = 0; k < 8; k++)
            {
                int at = (k * Payload) % data.Length;
                sent[await c.SendRequestAsync(CmdRead, (ulong)at, Payload)] = at;
            }
            offsets.Add(sent);
        }
        await Task.WhenAll(clients.Select(async (c, i) =>
        {
            for (int k = 0; k < 8; k++)
            {
                var r = await c.ReadReplyAsync();
                Assert.AreEqual(0u, r.Error, $"connection {i}: {r.Message}");
                int at = offsets[i][r.Cookie];
                CollectionAssert.AreEqual(data[at..(at + Payload)], r.Data, $"connection {i} read at {at}");
            }
        }));

        Assert.IsLessThanOrEqualTo(bound, nbd.Server.PeakInFlightBytes, "payload in flight over all connections stays within the engine-wide budget");
        Assert.IsGreaterThanOrEqualTo(Payload, nbd.Server.PeakInFlightBytes);
        Assert.AreEqual(0, nbd.Server.InFlightBytes);
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
        foreach (var c in clients)
            c.Dispose();
    }

    [TestMethod]
    public async Task LargeReads_ArriveInOneBurst_EachAnsweredBeforeTheNextIsRead()
    {
        // Served from memory targets, the reads complete on the receive loop's own thread, whose replies went
        // out only before it next waited for the socket: all 16 buffers were filled first (4 MiB in flight).
        // Sent once they hold 256 KiB, each reply is on the socket before the next read starts.
        const int Read = 256 << 10, Count = 16;
        await using var nbd = await InProcessNbd.StartAsync();
        var data = new byte[4 << 20];
        new Random(26).NextBytes(data);
        using (var w = await nbd.OpenAsync())
            for (int at = 0; at < data.Length; at += Read)
                await w.WriteAsync((ulong)at, data[at..(at + Read)]);
        long peakOfWrites = nbd.Server.PeakInFlightBytes;

        using var c = await nbd.OpenAsync();
        var burst = new List<byte>();
        for (int k = 0; k < Count; k++)
            burst.AddRange(Request(CmdRead, 1000 + (ulong)k, (ulong)(k * Read), Read));
        await c.SendAsync([.. burst]);
        for (int k = 0; k < Count; k++)
        {
            var r = await c.ReadReplyAsync();
            Assert.AreEqual(0u, r.Error, r.Message);
            int at = (int)(r.Cookie - 1000) * Read;
            CollectionAssert.AreEqual(data[at..(at + Read)], r.Data, $"read at {at}");
        }

        Assert.AreEqual(Read, peakOfWrites, "the writes went one at a time");
        // One read's payload at a time when every read completes on the loop's thread; a read that completed
        // elsewhere (its reply then goes through the send loop) may overlap the next one.
        Assert.IsLessThanOrEqualTo(2L * Read, nbd.Server.PeakInFlightBytes, "read payloads in flight at once (16 x 256 KiB were buffered before the replies went out)");
        Assert.AreEqual(0, nbd.Server.InFlightBytes);
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding);
    }

    [TestMethod]
    public async Task Stop_ClientNeverReadsReplies_ConnectionAbandonedAfterGrace_BuffersReturned()
    {
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions
        {
            MaxPayload = Payload,
            MaxInFlightBytes = 4 * Payload,
            MaxInFlightBytesTotal = 4 * Payload,
            StopGrace = TimeSpan.FromSeconds(1),
        });
        using (var w = await nbd.OpenAsync())
            await w.WriteAsync(0, new byte[Payload].Select((_, i) => (byte)(i % 251)).ToArray());
        using var c = await nbd.OpenAsync();
        // 32 MiB of replies asked for (data: holes would be answered with small hole chunks); the socket holds
        // a fraction, the rest waits on a client that never reads (a reply the receive loop sends itself blocks
        // there, and streamed reads' pieces wait in queued payload buffers: at least one request in flight).
        for (int k = 0; k < 32; k++)
            await c.SendRequestAsync(CmdRead, 0, Payload);
        await WaitForAsync(() => nbd.Server.InFlightBytes >= Payload, () => "a reply waits for the client");

        var stop = nbd.Server.StopAsync();
        Assert.AreSame(stop, await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(60))), "the stop finishes although the client reads nothing");
        await stop;

        Assert.AreEqual(0, nbd.Server.InFlightBytes);
        Assert.AreEqual(0, nbd.Server.Buffers.Outstanding, "every payload buffer came back once the image I/O had completed");
        Assert.IsTrue(await c.IsClosedByServerAsync());
        await nbd.WaitNoConnectionsAsync();
    }

    [TestMethod]
    public void BufferPool_ReturnedThenTrimmed_NativeMemoryFreed()
    {
        using var pool = new NbdBufferPool(Payload, retainBytes: 4L * Payload);
        var a = pool.Rent(Payload);
        var b = pool.Rent(Payload / 2 + 1);
        var small = pool.Rent(100);
        a.GetSpan().Fill(0x5a);
        Assert.AreEqual((long)Payload + Payload + 4096, pool.NativeBytes);
        pool.Return(a);
        pool.Return(b);
        pool.Return(small);
        Assert.AreEqual(0, pool.Outstanding);
        Assert.AreEqual(pool.NativeBytes, pool.RetainedBytes, "returned buffers are kept for reuse");

        Assert.AreEqual(0, pool.Trim(idleSince: 0), "nothing was returned before the mark");
        var again = pool.Rent(Payload);
        Assert.AreEqual(3, pool.Allocated, "a kept buffer is reused");
        Assert.AreEqual(Payload + 4096, pool.Trim(long.MaxValue));
        Assert.AreEqual(Payload, pool.NativeBytes, "only the rented buffer is left");
        Assert.AreEqual(0, pool.RetainedBytes);
        pool.Return(again);
    }

    [TestMethod]
    public void BufferPool_ReturnedOverTheRetainBudget_Freed()
    {
        using var pool = new NbdBufferPool(Payload, retainBytes: Payload);
        var a = pool.Rent(Payload);
        var b = pool.Rent(Payload);
        pool.Return(a);
        pool.Return(b);
        Assert.AreEqual(Payload, pool.RetainedBytes);
        Assert.AreEqual(Payload, pool.NativeBytes, "the buffer over the budget was freed at once");
    }
}
