using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Strata.Engine.Nbd;

/// <summary>
/// A small read-only NBD client (fixed newstyle, NBD_OPT_GO, simple replies, one request at a
/// time) for importing an image from another NBD server (docs/migration.md, "Import"). URIs:
/// nbd://host[:port]/export and nbd+unix:///export?socket=PATH. Every failure is an IOException
/// whose message names the server.
/// </summary>
public sealed class NbdClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private NetworkStream _stream = null!;
    private readonly SemaphoreSlim _one = new(1, 1);
    private readonly byte[] _header = new byte[NbdProtocol.RequestHeaderSize];
    private ulong _cookie;
    private bool _broken;

    private NbdClient(Socket socket, string uri)
    {
        _socket = socket;
        Uri = uri;
    }

    public string Uri { get; }

    public long Size { get; private set; }

    /// <summary>Splits an NBD URI into an endpoint and an export name; a one-line error otherwise.</summary>
    public static (EndPoint Endpoint, string Export) ParseUri(string uri)
    {
        if (!System.Uri.TryCreate(uri, UriKind.Absolute, out var u))
            throw new FormatException($"'{uri}' is not an NBD URI (nbd://host:port/export or nbd+unix:///export?socket=PATH)");
        string export = System.Uri.UnescapeDataString(u.AbsolutePath.TrimStart('/'));
        switch (u.Scheme)
        {
            case "nbd":
                if (u.Host.Length == 0)
                    throw new FormatException($"NBD URI '{uri}' has no host");
                return (new DnsEndPoint(u.Host, u.IsDefaultPort || u.Port < 0 ? 10809 : u.Port), export);
            case "nbd+unix":
                string? socket = u.Query.TrimStart('?').Split('&').Where(p => p.StartsWith("socket=", StringComparison.Ordinal))
                    .Select(p => System.Uri.UnescapeDataString(p["socket=".Length..])).FirstOrDefault();
                if (string.IsNullOrEmpty(socket))
                    throw new FormatException($"NBD URI '{uri}' needs ?socket=PATH");
                return (new UnixDomainSocketEndPoint(socket), export);
            default:
                throw new FormatException($"NBD URI '{uri}' has scheme '{u.Scheme}'; nbd and nbd+unix are supported");
        }
    }

    /// <summary>Connects, negotiates the export with NBD_OPT_GO and learns its size.</summary>
    public static async Task<NbdClient> ConnectAsync(string uri, CancellationToken ct = default)
    {
        var (ep, export) = ParseUri(uri);
        var socket = ep is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        var c = new NbdClient(socket, uri);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(10));
            await socket.ConnectAsync(ep, timeout.Token).ConfigureAwait(false);
            c._stream = new NetworkStream(socket, ownsSocket: true);
            await c.HandshakeAsync(export, timeout.Token).ConfigureAwait(false);
            return c;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or EndOfStreamException or InvalidDataException)
        {
            await c.DisposeAsync().ConfigureAwait(false);
            throw new IOException($"NBD server {uri} is unreachable or refused the export: {e.Message}", e);
        }
    }

    private async Task HandshakeAsync(string export, CancellationToken ct)
    {
        var b = new byte[18];
        await _stream.ReadExactlyAsync(b, ct).ConfigureAwait(false);
        if (BinaryPrimitives.ReadUInt64BigEndian(b) != NbdProtocol.InitMagic || BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(8)) != NbdProtocol.OptionMagic)
            throw new InvalidDataException("not a newstyle NBD server");
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(16));
        if ((flags & NbdProtocol.FlagFixedNewstyle) == 0)
            throw new InvalidDataException("the server is not fixed newstyle");
        var cf = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(cf, NbdProtocol.ClientFlagFixedNewstyle | ((flags & NbdProtocol.FlagNoZeroes) != 0 ? NbdProtocol.ClientFlagNoZeroes : 0));
        await _stream.WriteAsync(cf, ct).ConfigureAwait(false);
        byte[] name = Encoding.UTF8.GetBytes(export);
        var opt = new byte[16 + 4 + name.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(opt, NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(8), NbdProtocol.OptGo);
        BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(16), (uint)name.Length);
        name.CopyTo(opt, 20);
        await _stream.WriteAsync(opt, ct).ConfigureAwait(false);
        var rh = new byte[NbdProtocol.OptionReplyHeaderSize];
        while (true)
        {
            await _stream.ReadExactlyAsync(rh, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt64BigEndian(rh) != NbdProtocol.OptionReplyMagic)
                throw new InvalidDataException("bad option reply magic");
            uint type = BinaryPrimitives.ReadUInt32BigEndian(rh.AsSpan(12));
            uint len = BinaryPrimitives.ReadUInt32BigEndian(rh.AsSpan(16));
            if (len > 1 << 20)
                throw new InvalidDataException($"option reply of {len} bytes");
            var data = new byte[len];
            await _stream.ReadExactlyAsync(data, ct).ConfigureAwait(false);
            if (type == NbdProtocol.RepAck)
                break;
            if ((type & 0x80000000) != 0)
                throw new InvalidDataException($"export '{export}' refused (NBD error 0x{type:x}{(len > 0 ? ": " + Encoding.UTF8.GetString(data) : "")})");
            if (type == NbdProtocol.RepInfo && len >= 12 && BinaryPrimitives.ReadUInt16BigEndian(data) == NbdProtocol.InfoExport)
                Size = (long)BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
        }
    }

    /// <summary>Reads [offset, offset + destination.Length) (at most 32 MiB per request).</summary>
    public async Task ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        await _one.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_broken)
                throw new IOException($"NBD server {Uri}: the connection was lost");
            BinaryPrimitives.WriteUInt32BigEndian(_header, NbdProtocol.RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(4), 0);
            BinaryPrimitives.WriteUInt16BigEndian(_header.AsSpan(6), NbdProtocol.CmdRead);
            ulong cookie = ++_cookie;
            BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(8), cookie);
            BinaryPrimitives.WriteUInt64BigEndian(_header.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(_header.AsSpan(24), (uint)destination.Length);
            await _stream.WriteAsync(_header, ct).ConfigureAwait(false);
            var reply = new byte[NbdProtocol.SimpleReplySize];
            await _stream.ReadExactlyAsync(reply, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt32BigEndian(reply) != NbdProtocol.SimpleReplyMagic || BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)) != cookie)
                throw new InvalidDataException("bad reply");
            uint error = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
            if (error != 0)
                throw new IOException($"NBD server {Uri}: read of {destination.Length} bytes at {offset} failed (errno {error})");
            await _stream.ReadExactlyAsync(destination, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or EndOfStreamException or InvalidDataException or ObjectDisposedException || (e is IOException && e.InnerException is SocketException))
        {
            _broken = true;
            throw new IOException($"NBD server {Uri}: the connection was lost ({e.Message})", e);
        }
        finally
        {
            _one.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _broken = true;
        if (_stream != null)
            await _stream.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
    }
}
