using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Strata.Engine.Pools;

namespace Strata.Engine.Nbd;

/// <summary>
/// One client connection: authorization (Unix sockets), the fixed newstyle handshake
/// (NbdConnection.Handshake.cs), then transmission (NbdConnection.Transmission.cs) until the
/// client disconnects, breaks the protocol, or the pool revokes it. While in transmission the
/// connection is registered as a client of its image's pool.
/// </summary>
internal sealed partial class NbdConnection
{
    private readonly NbdServer _server;
    private readonly Socket _socket;
    private readonly NbdListener _listener;
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private CancellationTokenSource? _handshake;
    private PoolClient? _registration;
    private NbdExport? _export;
    private bool _structured;
    /// <summary>The TLS session once NBD_OPT_STARTTLS succeeded; every later byte goes through it.</summary>
    private SslStream? _tls;
    /// <summary>The certificates this connection's TLS handshake used (a reload does not change them).</summary>
    private NbdTlsCredentials? _tlsCredentials;
    private string? _clientName, _clientSubject;
    /// <summary>An option was answered NBD_REP_ERR_TLS_REQD: a plain client on a listener that requires TLS.</summary>
    private bool _plainRefused;

    public NbdConnection(NbdServer server, Socket socket, NbdListener listener, long id, NbdConnectionState? adopted = null)
    {
        _adopted = adopted;
        _server = server;
        _socket = socket;
        _listener = listener;
        Id = id;
        Peer = listener.ToString();
        _slotFreed = new SingleWaiterSignal();
        BudgetNode = new LinkedListNode<NbdConnection>(this);
        _recv = [];
        _send = [];
        _replies = null!;
    }

    public long Id { get; }

    /// <summary>Who is connected: pid and uid on a Unix socket, address and port on TCP.</summary>
    public string Peer { get; private set; }

    public Task Closed => _closed.Task;

    /// <summary>This connection's place in the line of <see cref="NbdPayloadBudget"/> (reused; no allocation per wait).</summary>
    internal LinkedListNode<NbdConnection> BudgetNode { get; }

    internal NbdExport Export => _export!;

    internal NbdBufferPool Buffers => _server.Buffers;

    internal NbdServerOptions Options => _server.Options;

    public async Task RunAsync()
    {
        string why = "closed";
        try
        {
            if (_adopted != null)
            {
                // Adopted from the engine this one replaced: export open already; reading starts at the go.
                await _go.Task.ConfigureAwait(false);
                Options.Log.ExportOpened(Id, Peer, _export!.Name, _structured);
                why = await TransmitParkingAsync().ConfigureAwait(false);
                return;
            }
            if (_socket.AddressFamily == AddressFamily.Unix)
            {
                var cred = PeerCredentials(_socket);
                Peer = cred is { } c ? $"pid {c.Pid} uid {c.Uid}" : "unknown unix peer";
                if (Options.AuthorizeUnixPeer?.Invoke(_socket) is { } refusal)
                {
                    why = refusal;
                    Options.Log.ClientRefused(Peer, refusal);
                    return;
                }
            }
            else
            {
                Peer = (_socket.RemoteEndPoint as IPEndPoint)?.ToString() ?? "unknown tcp peer";
                _socket.NoDelay = true;
            }

            using (var hs = CancellationTokenSource.CreateLinkedTokenSource(_server.Stopping))
            {
                hs.CancelAfter(Options.HandshakeTimeout);
                _handshake = hs;
                try
                {
                    why = await HandshakeAsync(hs.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    why = _server.Stopping.IsCancellationRequested
                        ? "the server is stopping"
                        : $"the handshake did not finish within {Options.HandshakeTimeout.TotalSeconds:F0} s";
                }
            }
            if (_export == null)
            {
                if (_plainRefused && _tls == null)
                    Options.Log.TlsRefused(Id, Peer, $"the client did not start TLS on a listener that requires it ({why})");
                return;
            }
            Options.Log.ExportOpened(Id, Peer, _export.Name, _structured);
            why = await TransmitParkingAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
        {
            why = $"connection lost: {e.Message}";
        }
        catch (Exception e)
        {
            why = $"internal error: {e.Message}";
            Options.Log.UnexpectedError(Id, Peer, e);
        }
        finally
        {
            _registration?.Dispose();
            _tls?.Dispose();
            _heldCredentials?.Release();
            _socket.Dispose();
            Options.Log.ConnectionClosed(Id, Peer, why);
            _parked?.TrySetResult(null);
            _closed.TrySetResult();
        }
    }

    /// <summary>
    /// Makes the connection go: during the handshake at once; in transmission, requests in flight
    /// complete and are answered, requests arriving meanwhile get NBD_ESHUTDOWN, then it closes.
    /// Returns once the connection is closing (await <see cref="Closed"/> for the end).
    /// </summary>
    public async ValueTask RevokeAsync(string reason)
    {
        if (_export == null || _replies == null)
        {
            try
            {
                _handshake?.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            Abort();
            return;
        }
        _revokeReason = reason;
        await WhenDrained().ConfigureAwait(false);
        Abort();
    }

    /// <summary>
    /// Gives up on the connection (the server's stop deadline passed and it is still open, typically
    /// because its client does not read its replies): the socket is closed, which fails every pending
    /// send and receive at once; requests whose image I/O is under way complete (their buffers are in
    /// use until then) and their replies are dropped, and so are the pieces of streamed reads queued
    /// for the socket. <see cref="Closed"/> completes after that.
    /// </summary>
    internal void Abandon(string reason)
    {
        _abandonReason = reason;
        _broken = true;
        try
        {
            _handshake?.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
        _socket.Dispose();
        DropQueuedBroken();
        _slotFreed.Set();
    }

    /// <summary>A hard disconnect: every pending and later socket operation fails.</summary>
    private void Abort()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>The caller at the other end of a Unix socket (SO_PEERCRED: struct ucred { pid, uid, gid }).</summary>
    public static (int Pid, uint Uid, uint Gid)? PeerCredentials(Socket socket)
    {
        Span<byte> buf = stackalloc byte[12];
        const int SolSocket = 1, SoPeerCred = 17;
        try
        {
            if (socket.GetRawSocketOption(SolSocket, SoPeerCred, buf) < 12)
                return null;
        }
        catch (SocketException)
        {
            return null;
        }
        return (BitConverter.ToInt32(buf[..4]), BitConverter.ToUInt32(buf[4..8]), BitConverter.ToUInt32(buf[8..12]));
    }

    private async ValueTask<bool> ReceiveExactAsync(Memory<byte> buffer, CancellationToken ct)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = _tls != null
                ? await _tls.ReadAsync(buffer[done..], ct).ConfigureAwait(false)
                : await _socket.ReceiveAsync(buffer[done..], SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0)
                return false;
            done += n;
        }
        return true;
    }

    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        if (_tls != null)
        {
            await _tls.WriteAsync(data, ct).ConfigureAwait(false);
            await _tlsTransport!.FlushBufferedAsync().ConfigureAwait(false);
            return;
        }
        while (data.Length > 0)
        {
            int n = await _socket.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false);
            data = data[n..];
        }
    }
}
