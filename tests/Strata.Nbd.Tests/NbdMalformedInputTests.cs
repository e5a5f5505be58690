using System.Security.Cryptography;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// Malformed input from a raw socket client against the real daemon. Each case is answered as
/// the spec says, or that one connection is closed; a well-behaved connection opened before the
/// first case keeps working after every one, and the daemon stays up.
/// </summary>
[TestClass]
public sealed class NbdMalformedInputTests
{
    private const long ImageSize = 16L << 20;
    private static NbdDaemon _d = null!;
    private static RawNbdClient _good = null!;
    private static int _goodRounds;

    [ClassInitialize]
    public static async Task StartAsync(TestContext _)
    {
        _d = await NbdDaemon.StartAsync("nbd-bad");
        await _d.CreateImageAsync("m", "16M");
        _good = await _d.OpenTcpAsync("m");
    }

    [ClassCleanup]
    public static async Task StopAsync()
    {
        _good.Dispose();
        await _d.DisposeAsync();
    }

    /// <summary>The well-behaved connection still round-trips data, and the daemon is still running.</summary>
    private static async Task AssertOthersUnaffectedAsync()
    {
        Assert.IsFalse(_d.Engine.HasExited, $"the daemon exited:\n{_d.Engine.Log}");
        var data = RandomNumberGenerator.GetBytes(4096 + 3);
        ulong at = (ulong)(8 << 20) + (ulong)Interlocked.Increment(ref _goodRounds) * 8192;
        await _good.WriteAsync(at, data);
        CollectionAssert.AreEqual(data, await _good.ReadAsync(at, data.Length));
        using var fresh = await _d.OpenUnixAsync("m");
        CollectionAssert.AreEqual(data, await fresh.ReadAsync(at, data.Length), "a new connection sees it too");
    }

    private static async Task<RawNbdClient> HandshakenAsync(bool tcp = false)
    {
        var c = tcp ? await RawNbdClient.ConnectTcpAsync(_d.Port) : await RawNbdClient.ConnectUnixAsync(_d.NbdSocket);
        await c.ReadGreetingAsync();
        await c.SendClientFlagsAsync(3);
        return c;
    }

    [TestMethod]
    public async Task BadRequestMagic_ConnectionClosed()
    {
        using (var c = await _d.OpenUnixAsync("m"))
        {
            await c.SendAsync(Request(CmdRead, 1, 0, 4096, magic: 0x12560953));
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await _d.WaitLogAsync("bad request magic 0x12560953");
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task BadOptionMagic_ConnectionClosed()
    {
        using (var c = await HandshakenAsync())
        {
            await c.SendOptionAsync(OptList, [], magic: 0x1122334455667788);
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task UnknownClientFlags_ConnectionClosed()
    {
        using (var c = await RawNbdClient.ConnectTcpAsync(_d.Port))
        {
            await c.ReadGreetingAsync();
            await c.SendClientFlagsAsync(0xdeadbeef);
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task UnknownOptions_AnsweredErrUnsup_NextOptionParsed()
    {
        using (var c = await HandshakenAsync())
        {
            foreach (uint option in new uint[] { 4, 11, 99, 0x7fffffff })
            {
                await c.SendOptionAsync(option, [1, 2, 3, 4, 5]);
                var r = await c.ReadOptionReplyAsync();
                Assert.AreEqual(option, r.Option);
                Assert.AreEqual(ErrUnsup, r.Type, $"option {option}");
                Assert.IsGreaterThan(0, r.Data.Length, "the error carries a message");
            }
            // The meta-context options are known: malformed data is NBD_REP_ERR_INVALID, and the next option is parsed.
            foreach (uint option in new uint[] { OptListMeta, OptSetMeta })
            {
                await c.SendOptionAsync(option, [1, 2, 3, 4, 5]);
                var r = await c.ReadOptionReplyAsync();
                Assert.AreEqual(option, r.Option);
                Assert.AreEqual(ErrInvalid, r.Type, $"option {option}");
                Assert.IsGreaterThan(0, r.Data.Length, "the error carries a message");
            }
            // NBD_OPT_STARTTLS is known: on a listener with TLS off it is refused by policy (the spec's NOTLS mode).
            await c.SendOptionAsync(5, []);
            var tls = await c.ReadOptionReplyAsync();
            Assert.AreEqual(0x80000002u, tls.Type, "NBD_REP_ERR_POLICY");
            StringAssert.Contains(tls.Text, "TLS is off on this listener");
            Assert.AreEqual(RepAck, (await c.GoAsync(OptGo, "p/c/m")).Final);
            Assert.HasCount(4, await c.ReadAsync(0, 4));
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task OversizedOptionLength_ConnectionClosed()
    {
        using (var c = await HandshakenAsync(tcp: true))
        {
            // A 1 GiB option is a denial of service, not an option: the server closes rather than read it.
            await c.SendOptionAsync(OptGo, [0, 0, 0, 0], declaredLength: 1u << 30);
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await _d.WaitLogAsync("1073741824 bytes of data");
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task OversizedUnknownOption_ConnectionClosed_LogNamesTheOptionOnce()
    {
        using (var c = await HandshakenAsync(tcp: true))
        {
            await c.SendOptionAsync(99, [0, 0, 0, 0], declaredLength: 1u << 29);
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await _d.WaitLogAsync("broke the protocol: option 99 has 536870912 bytes of data");
        Assert.DoesNotContain("option option", _d.Engine.Log);
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task OversizedRead_AnsweredEinvalOrEoverflow_ConnectionUsable()
    {
        using (var simple = await _d.OpenUnixAsync("m", structured: false))
        {
            Assert.AreEqual(EInval, (await simple.RoundTripAsync(CmdRead, 0, (32u << 20) + 1)).Error);
            Assert.HasCount(10, await simple.ReadAsync(0, 10));
        }
        using (var structured = await _d.OpenUnixAsync("m"))
        {
            var r = await structured.RoundTripAsync(CmdRead, 0, 0xffffffff);
            Assert.AreEqual(EOverflow, r.Error);
            StringAssert.Contains(r.Message, "maximum payload");
            Assert.HasCount(10, await structured.ReadAsync(0, 10));
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task OversizedWrite_AnsweredEinvalThenClosed_NothingWritten()
    {
        var before = await _good.ReadAsync(0, 65536);
        using (var c = await _d.OpenUnixAsync("m"))
        {
            // A 64 MiB payload is announced and some of it sent: the server cannot skip it safely.
            await c.SendAsync(Request(CmdWrite, 77, 0, 64u << 20, payload: new byte[65536]));
            try
            {
                var r = await c.ReadReplyAsync();
                Assert.AreEqual(77ul, r.Cookie);
                Assert.AreEqual(EInval, r.Error);
            }
            catch (Exception e) when (e is EndOfStreamException or System.Net.Sockets.SocketException)
            {
                // Closing without the reply is also what the spec allows for a payload this large.
            }
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        CollectionAssert.AreEqual(before, await _good.ReadAsync(0, 65536));
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task ReadPastEnd_AnsweredEinval_ConnectionUsable()
    {
        using (var c = await _d.OpenTcpAsync("m", structured: false))
        {
            Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdRead, (ulong)ImageSize - 100, 101)).Error);
            Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdRead, ulong.MaxValue - 10, 100)).Error, "offset + length overflowing 64 bits");
            Assert.AreEqual(ENoSpc, (await c.RoundTripAsync(CmdWrite, (ulong)ImageSize, 2, [1, 2])).Error, "a refused write's payload is consumed");
            Assert.HasCount(100, await c.ReadAsync((ulong)ImageSize - 100, 100));
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task UnknownCommandsAndFlags_AnsweredEinval_ConnectionUsable()
    {
        using (var c = await _d.OpenUnixAsync("m"))
        {
            foreach (ushort type in new ushort[] { CmdCache, CmdBlockStatus, 8, 42, 0xffff })
            {
                var r = await c.RoundTripAsync(type, 0, 512);
                Assert.AreEqual(EInval, r.Error, $"command {type}");
            }
            Assert.AreEqual(EInval, (await c.RoundTripAsync(CmdWrite, 0, 1, [1], flags: 0x80)).Error, "an unknown command flag");
            Assert.HasCount(512, await c.ReadAsync(0, 512));
        }
        await AssertOthersUnaffectedAsync();
    }

    [TestMethod]
    public async Task DisconnectMidRequest_HalfAWrite_NothingWritten_OthersUnaffected()
    {
        var before = await _good.ReadAsync(1 << 20, 1 << 20);
        foreach (bool tcp in new[] { false, true })
        {
            using var c = tcp ? await _d.OpenTcpAsync("m") : await _d.OpenUnixAsync("m");
            await c.SendAsync(Request(CmdWrite, 5, 1 << 20, 1 << 20, payload: new byte[300_000]));
        }
        // Half a header, too.
        using (var c = await _d.OpenUnixAsync("m"))
            await c.SendAsync(Request(CmdRead, 6, 0, 4096)[..13]);
        await _d.WaitClientsAsync(1);
        CollectionAssert.AreEqual(before, await _good.ReadAsync(1 << 20, 1 << 20), "half a write is never applied");
        await _d.WaitLogAsync("in the middle of a 1048576-byte WRITE payload");
        await AssertOthersUnaffectedAsync();
    }
}
