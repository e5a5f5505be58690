using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Strata.Engine.Nbd;
using static Strata.Nbd.Tests.RawNbdClient;
using static Strata.Nbd.Tests.TlsNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// NBD_OPT_STARTTLS in process (the server on a Unix socket with TLS, which Strata allows): the
/// replies the spec asks for in each TLS mode, what survives the upgrade, the handshake timeout,
/// and the one-line refusals of bad certificate files.
/// </summary>
[TestClass]
public sealed class NbdTlsServerTests
{
    private static TestPki _pki = null!;
    private static string _dir = null!;

    [ClassInitialize]
    public static void Init(TestContext _)
    {
        _pki = TestPki.Create();
        _dir = Directory.CreateTempSubdirectory("strata-nbd-tls-").FullName;
        _pki.WriteServerDir(Path.Combine(_dir, "server"));
    }

    [ClassCleanup]
    public static void Cleanup() => Directory.Delete(_dir, recursive: true);

    private static NbdTlsSettings Settings(NbdTlsMode mode, string? serverDir = null) => new()
    {
        Mode = mode,
        CertificateFile = Path.Combine(serverDir ?? Path.Combine(_dir, "server"), "server-cert.pem"),
        KeyFile = Path.Combine(serverDir ?? Path.Combine(_dir, "server"), "server-key.pem"),
        CaFile = Path.Combine(serverDir ?? Path.Combine(_dir, "server"), "ca-cert.pem"),
    };

    private static X509Certificate2 ClientCert(TestPki pki, string cn)
    {
        var (cert, key) = pki.Client(cn);
        return X509Certificate2.CreateFromPem(cert, key);
    }

    private static X509Certificate2Collection Trust => [X509Certificate2.CreateFromPem(_pki.CaPem)];

    private static Task<TlsNbdClient> ConnectAsync(InProcessNbd nbd) => TlsNbdClient.ConnectAsync(new UnixDomainSocketEndPoint(nbd.SocketPath));

    /// <summary>Records the server's TLS refusals.</summary>
    private sealed class TlsLog : INbdServerLog
    {
        public readonly ConcurrentQueue<string> Refusals = new();
        public void Listening(string address) { }
        public void ExportOpened(long connection, string peer, string export, bool structuredReplies) { }
        public void ConnectionClosed(long connection, string peer, string why) { }
        public void ClientRefused(string peer, string reason) { }
        public void ProtocolViolation(long connection, string peer, string what) { }
        public void ConnectionAbandoned(long connection, string peer, string why) { }
        public void UnexpectedError(long connection, string peer, Exception e) { }
        public void TlsRefused(long connection, string peer, string reason) => Refusals.Enqueue(reason);

        public async Task<string> WaitAsync(string text)
        {
            for (int i = 0; i < 300 && !Refusals.Any(r => r.Contains(text, StringComparison.Ordinal)); i++)
                await Task.Delay(100);
            return Refusals.FirstOrDefault(r => r.Contains(text, StringComparison.Ordinal))
                ?? throw new AssertFailedException($"no TLS refusal containing '{text}': {string.Join(" | ", Refusals)}");
        }
    }

    [TestMethod]
    public async Task RequireMode_PlainOptions_TlsReqd_ExportNameCloses_Refusal()
    {
        var log = new TlsLog();
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { Log = log }, tls: Settings(NbdTlsMode.Require));
        using (var c = await ConnectAsync(nbd))
        {
            await c.HandshakeAsync();
            foreach (uint option in new uint[] { OptList, OptStructured, OptInfo, OptGo })
            {
                var r = await c.OptionAsync(option, option is OptInfo or OptGo ? GoData(InProcessNbd.Export) : []);
                Assert.AreEqual(ErrTlsReqd, r.Type, $"option {option}");
                StringAssert.Contains(r.Text, "requires TLS");
            }
            // ABORT is still answered.
            Assert.AreEqual(RepAck, (await c.OptionAsync(OptAbort, [])).Type);
        }
        StringAssert.Contains(await log.WaitAsync("did not start TLS"), "NBD_OPT_ABORT");

        using (var c = await ConnectAsync(nbd))
        {
            await c.HandshakeAsync();
            // EXPORT_NAME cannot be answered with an error: the session ends.
            await c.SendOptionAsync(OptExportName, Text(InProcessNbd.Export));
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await log.WaitAsync("NBD_OPT_EXPORT_NAME without TLS");

        // With TLS the same export opens and serves reads.
        using var ok = await ConnectAsync(nbd);
        await ok.HandshakeAsync();
        Assert.AreEqual(RepAck, (await ok.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
        Assert.AreEqual(RepAck, (await ok.GoAsync(InProcessNbd.Export)).Type);
        Assert.AreEqual(SimpleMagic, await ok.ReadCommandMagicAsync(0, 4096));
    }

    [TestMethod]
    public async Task OnMode_StructuredBeforeTls_Forgotten_SecondStartTlsInvalid()
    {
        await using var nbd = await InProcessNbd.StartAsync(tls: Settings(NbdTlsMode.On));
        // Plain text is allowed in this mode.
        using (var plain = await ConnectAsync(nbd))
        {
            await plain.HandshakeAsync();
            Assert.AreEqual(RepAck, (await plain.GoAsync(InProcessNbd.Export)).Type);
        }
        using var c = await ConnectAsync(nbd);
        await c.HandshakeAsync();
        Assert.AreEqual(RepAck, (await c.OptionAsync(OptStructured, [])).Type);
        Assert.AreEqual(RepAck, (await c.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
        Assert.IsNotNull(c.Tls);
        var again = await c.OptionAsync(OptStartTls, []);
        Assert.AreEqual(ErrInvalid, again.Type);
        StringAssert.Contains(again.Text, "already started");
        Assert.AreEqual(RepAck, (await c.GoAsync(InProcessNbd.Export)).Type);
        // Structured replies were negotiated in plain text only (anyone on the path could have): simple replies now.
        Assert.AreEqual(SimpleMagic, await c.ReadCommandMagicAsync(4096, 512));
    }

    /// <summary>
    /// Transmission with large writes in flight, over TLS (and in plain text on TCP, which shares
    /// the payload path): a write's reply goes out while the next write's payload is still
    /// arriving (the receive loop answers before it waits for payload), a payload sent in two
    /// halves with a pause between is received whole (on TCP the receive waits for 128 KiB at a time
    /// while enough of a payload is to come, SO_RCVLOWAT), pipelined 1 MiB writes are each answered
    /// once under their cookie, and the bytes read back.
    /// </summary>
    [TestMethod]
    [DataRow(false, true)]
    [DataRow(true, true)]
    [DataRow(true, false)]
    public async Task LargeWrites_ReplyBeforeNextPayloadEnds_PipelinedAnsweredByCookie_DataRight(bool tcp, bool tls)
    {
        await using var nbd = await InProcessNbd.StartAsync(tls: tls ? Settings(NbdTlsMode.Require) : null, tcp: tcp);
        using var c = await TlsNbdClient.ConnectAsync(nbd.EndPoint);
        await c.HandshakeAsync();
        if (tls)
            Assert.AreEqual(RepAck, (await c.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
        Assert.AreEqual(RepAck, (await c.GoAsync(InProcessNbd.Export)).Type);
        const int Size = 1 << 20;
        var first = Pattern(Size, 1);
        var second = Request(CmdWrite, 2, Size, Size, payload: Pattern(Size, 2));
        await c.SendAsync(Request(CmdWrite, 1, 0, Size, payload: first));
        // The second write's header and half its payload, then nothing until the first reply is in.
        int half = 28 + Size / 2;
        await c.SendAsync(second[..half]);
        AssertReplyHeader(await c.ReadExactAsync(16), 1);
        await c.SendAsync(second[half..]);
        AssertReplyHeader(await c.ReadExactAsync(16), 2);

        // Four 1 MiB writes sent in one go: every cookie answered once, whatever the order.
        const int Piece = 1 << 20, Count = 4;
        var expected = new byte[2 * Size + Count * Piece];
        first.CopyTo(expected, 0);
        second.AsSpan(28).CopyTo(expected.AsSpan(Size));
        var batch = new List<byte>();
        for (int i = 0; i < Count; i++)
        {
            var data = Pattern(Piece, 10 + i);
            data.CopyTo(expected, 2 * Size + i * Piece);
            batch.AddRange(Request(CmdWrite, (ulong)(100 + i), (ulong)(2 * Size + i * Piece), Piece, payload: data));
        }
        await c.SendAsync([.. batch]);
        var answered = new HashSet<ulong>();
        for (int i = 0; i < Count; i++)
        {
            var reply = await c.ReadExactAsync(16);
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8));
            AssertReplyHeader(reply, cookie);
            Assert.IsTrue(cookie is >= 100 and < 100 + Count && answered.Add(cookie), $"cookie {cookie} answered once, among those sent");
        }

        // Read back in 64 KiB pieces (each reply: the 16-byte simple header, then the data).
        for (int at = 0; at < expected.Length; at += 64 << 10)
        {
            await c.SendAsync(Request(CmdRead, 7, (ulong)at, 64 << 10));
            var reply = await c.ReadExactAsync(16 + (64 << 10));
            AssertReplyHeader(reply, 7);
            CollectionAssert.AreEqual(expected.AsSpan(at, 64 << 10).ToArray(), reply.AsSpan(16).ToArray(), $"bytes at {at}");
        }
    }

    private static void AssertReplyHeader(byte[] reply, ulong cookie)
    {
        Assert.AreEqual(SimpleMagic, BinaryPrimitives.ReadUInt32BigEndian(reply), "simple reply magic");
        Assert.AreEqual(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)), "no error");
        Assert.AreEqual(cookie, BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)), "cookie");
    }

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    [TestMethod]
    public async Task ClientStallsMidTlsHandshake_CutOffAtHandshakeTimeout()
    {
        var log = new TlsLog();
        // Long enough for the greeting and STARTTLS under a loaded test machine; the stall is what runs it out.
        await using var nbd = await InProcessNbd.StartAsync(new NbdServerOptions { Log = log, HandshakeTimeout = TimeSpan.FromSeconds(5) }, tls: Settings(NbdTlsMode.Require));
        using var c = await ConnectAsync(nbd);
        await c.HandshakeAsync();
        Assert.AreEqual(RepAck, (await c.OptionAsync(OptStartTls, [])).Type);
        // The first bytes of a TLS record header, then nothing.
        await c.SendAsync([0x16, 0x03, 0x01]);
        Assert.IsTrue(await c.IsClosedByServerAsync(), "the server closes a stalled TLS handshake");
        StringAssert.Contains(await log.WaitAsync("TLS handshake did not finish"), "within 5 s");
        await nbd.WaitNoConnectionsAsync();
        // Others are served meanwhile.
        using var ok = await ConnectAsync(nbd);
        await ok.HandshakeAsync();
        Assert.AreEqual(RepAck, (await ok.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
        Assert.AreEqual(RepAck, (await ok.GoAsync(InProcessNbd.Export)).Type);
    }

    [TestMethod]
    public async Task AllowList_ExportOutsideIt_ErrPolicy_ListShowsOnlyAllowed()
    {
        await using var nbd = await InProcessNbd.StartAsync(tls: Settings(NbdTlsMode.Require) with
        {
            Allow = [new NbdTlsClientRule("hv1", ["p/c/img"]), new NbdTlsClientRule("CN=hv2", ["q"])],
        });
        await nbd.Pool.CreateImageAsync("c", "other", 1 << 20);
        using (var c = await ConnectAsync(nbd))
        {
            await c.HandshakeAsync();
            await c.StartTlsAsync(ClientCert(_pki, "hv1"), Trust);
            await c.SendOptionAsync(OptList, []);
            var names = new List<string>();
            for (var r = await c.ReadOptionReplyAsync(); r.Type == RepServer; r = await c.ReadOptionReplyAsync())
                names.Add(System.Text.Encoding.UTF8.GetString(r.Data, 4, r.Data.Length - 4));
            CollectionAssert.AreEqual(new[] { "p/c/img" }, names);
            var refused = await c.GoAsync("p/c/other");
            Assert.AreEqual(ErrPolicy, refused.Type);
            StringAssert.Contains(refused.Text, "may not open export 'p/c/other'");
            Assert.AreEqual(RepAck, (await c.GoAsync(InProcessNbd.Export)).Type);
        }
        // A certificate the CA signed but the list does not name fails the TLS handshake.
        using var stranger = await ConnectAsync(nbd);
        await stranger.HandshakeAsync();
        try
        {
            await stranger.StartTlsAsync(ClientCert(_pki, "hv3"), Trust);
            // TLS 1.3: the client may finish its side before the server's verdict arrives.
            Assert.IsTrue(await stranger.IsClosedByServerAsync());
        }
        catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
        {
        }
    }

    public static IEnumerable<object[]> BadFiles =>
    [
        ["missing-key", "cannot read server key"],
        ["mismatched-key", "does not match the certificate"],
        ["ca-not-pem", "is not PEM: it holds no -----BEGIN CERTIFICATE----- block"],
        ["cert-not-pem", "is not a PEM certificate"],
        ["key-not-pem", "is not a PEM private key"],
        ["expired", "expired on"],
    ];

    [TestMethod]
    [DynamicData(nameof(BadFiles))]
    public void Credentials_BadFiles_OneLineSaysWhich(string kind, string expected)
    {
        string dir = _pki.WriteServerDir(Path.Combine(_dir, "bad-" + kind), days: kind == "expired" ? -0.5 : 365);
        switch (kind)
        {
            case "missing-key":
                File.Delete(Path.Combine(dir, "server-key.pem"));
                break;
            case "mismatched-key":
                File.WriteAllText(Path.Combine(dir, "server-key.pem"), _pki.Server().Key);
                break;
            case "ca-not-pem":
                File.WriteAllBytes(Path.Combine(dir, "ca-cert.pem"), X509Certificate2.CreateFromPem(_pki.CaPem).RawData);
                break;
            case "cert-not-pem":
                File.WriteAllText(Path.Combine(dir, "server-cert.pem"), "not a certificate\n");
                break;
            case "key-not-pem":
                File.WriteAllText(Path.Combine(dir, "server-key.pem"), "not a key\n");
                break;
        }
        var e = Assert.ThrowsExactly<NbdTlsException>(() => NbdTlsCredentials.Load(Settings(NbdTlsMode.Require, dir), "tcp:0.0.0.0:10809"));
        StringAssert.StartsWith(e.Message, "nbd listener tcp:0.0.0.0:10809: ");
        StringAssert.Contains(e.Message, expected);
        Assert.DoesNotContain("\n", e.Message);
    }

    [TestMethod]
    public async Task ReloadTls_ReplacedCertificates_DisposedOnceTheirLastConnectionCloses()
    {
        var nbd = await InProcessNbd.StartAsync(tls: Settings(NbdTlsMode.Require));
        NbdTlsCredentials first, second, third;
        try
        {
            var listener = nbd.Server.Listeners[0];
            first = listener.Credentials!;
            using (var c = await ConnectAsync(nbd))
            {
                await c.HandshakeAsync();
                Assert.AreEqual(RepAck, (await c.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
                nbd.Server.ReloadTls();
                second = listener.Credentials!;
                Assert.AreNotSame(first, second);
                Assert.IsFalse(first.IsDisposed, "the open connection started its handshake with them");
                Assert.AreEqual(RepAck, (await c.GoAsync(InProcessNbd.Export)).Type, "the connection goes on over its session");
                nbd.Server.ReloadTls();
                third = listener.Credentials!;
                Assert.IsTrue(second.IsDisposed, "replaced, and no connection used them");
                Assert.IsFalse(first.IsDisposed);
            }
            await nbd.WaitNoConnectionsAsync();
            Assert.IsTrue(first.IsDisposed, "disposed when their last connection closed");
            Assert.IsFalse(third.IsDisposed, "the listener's current certificates stay");
            // New handshakes use the current ones.
            using var d = await ConnectAsync(nbd);
            await d.HandshakeAsync();
            Assert.AreEqual(RepAck, (await d.StartTlsAsync(ClientCert(_pki, "hv1"), Trust)).Type);
            Assert.AreEqual(RepAck, (await d.GoAsync(InProcessNbd.Export)).Type);
        }
        finally
        {
            await nbd.DisposeAsync();
        }
        Assert.IsTrue(third.IsDisposed, "a stopped server lets its certificates go");
    }
}
