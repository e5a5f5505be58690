using System.Buffers.Binary;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// A minimal NBD client over a stream that can switch to TLS after NBD_OPT_STARTTLS (.NET's
/// SslStream as the client), written from the spec like <see cref="RawNbdClient"/>: enough to
/// check the server's STARTTLS answers byte by byte. Every read is bounded by a timeout.
/// </summary>
internal sealed class TlsNbdClient : IDisposable
{
    public const uint OptStartTls = 5, ErrPolicy = 0x80000002, ErrTlsReqd = 0x80000005;

    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly Socket _socket;
    private Stream _stream;

    private TlsNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    public SslStream? Tls => _stream as SslStream;

    public static async Task<TlsNbdClient> ConnectAsync(EndPoint endpoint)
    {
        var s = endpoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await s.ConnectAsync(endpoint);
        return new TlsNbdClient(s);
    }

    /// <summary>Reads the greeting and sends fixed newstyle + no zeroes.</summary>
    public async Task HandshakeAsync()
    {
        await ReadExactAsync(18);
        await SendAsync([0, 0, 0, 3]);
    }

    public async Task SendAsync(byte[] data)
    {
        using var cts = new CancellationTokenSource(Timeout);
        await _stream.WriteAsync(data, cts.Token);
        await _stream.FlushAsync(cts.Token);
    }

    public async Task<byte[]> ReadExactAsync(int n)
    {
        var b = new byte[n];
        using var cts = new CancellationTokenSource(Timeout);
        await _stream.ReadExactlyAsync(b, cts.Token);
        return b;
    }

    public Task SendOptionAsync(uint option, byte[] data)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b, 16);
        return SendAsync(b);
    }

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        var h = await ReadExactAsync(20);
        Assert.AreEqual(ReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(h), "option reply magic");
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return new OptionReply(BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)), len == 0 ? [] : await ReadExactAsync(len));
    }

    public async Task<OptionReply> OptionAsync(uint option, byte[] data)
    {
        await SendOptionAsync(option, data);
        return await ReadOptionReplyAsync();
    }

    /// <summary>NBD_OPT_STARTTLS; on NBD_REP_ACK the TLS handshake as a client, presenting <paramref name="certificate"/> if given.</summary>
    public async Task<OptionReply> StartTlsAsync(X509Certificate2? certificate, X509Certificate2Collection trust, string host = "localhost")
    {
        var r = await OptionAsync(OptStartTls, []);
        if (r.Type != RepAck)
            return r;
        var tls = new SslStream(_stream, leaveInnerStreamOpen: false);
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.AddRange(trust);
        using var cts = new CancellationTokenSource(Timeout);
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = host,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            // Presented whatever the server's list of acceptable CAs says (a client of another CA is tested too).
            LocalCertificateSelectionCallback = certificate == null ? null : (_, _, _, _, _) => certificate,
            CertificateChainPolicy = policy,
        }, cts.Token);
        _stream = tls;
        return r;
    }

    /// <summary>NBD_OPT_GO for <paramref name="export"/>: the final reply's type (and message, for an error).</summary>
    public async Task<OptionReply> GoAsync(string export)
    {
        await SendOptionAsync(OptGo, GoData(export));
        while (true)
        {
            var r = await ReadOptionReplyAsync();
            if (r.Type != RepInfo)
                return r;
        }
    }

    /// <summary>Sends NBD_CMD_READ and returns the reply's magic (simple or structured) and its header bytes.</summary>
    public async Task<uint> ReadCommandMagicAsync(ulong offset, uint length)
    {
        var b = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(b, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), CmdRead);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), 77);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        await SendAsync(b);
        var magic = BinaryPrimitives.ReadUInt32BigEndian(await ReadExactAsync(4));
        if (magic == SimpleMagic)
        {
            var rest = await ReadExactAsync(12);
            Assert.AreEqual(0u, BinaryPrimitives.ReadUInt32BigEndian(rest), "read error");
            await ReadExactAsync((int)length);
        }
        return magic;
    }

    /// <summary>True when the server closed the connection (end of stream, reset or TLS alert).</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var b = new byte[4096];
        using var cts = new CancellationTokenSource(Timeout);
        try
        {
            while (await _stream.ReadAsync(b, cts.Token) > 0)
            {
            }
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or AuthenticationException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public static byte[] Text(string s) => Encoding.UTF8.GetBytes(s);

    public void Dispose()
    {
        _stream.Dispose();
        _socket.Dispose();
    }
}
