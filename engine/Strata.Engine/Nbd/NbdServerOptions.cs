using System.Net.Sockets;

namespace Strata.Engine.Nbd;

/// <summary>Limits and hooks of the NBD server; the defaults are what docs/nbd.md documents.</summary>
public sealed record NbdServerOptions
{
    /// <summary>Largest READ or WRITE payload (the spec's recommended minimum for servers, 32 MiB).</summary>
    public int MaxPayload { get; init; } = 32 << 20;

    /// <summary>Requests one connection may have in flight; the next one waits for a reply to go out.</summary>
    public int MaxInFlight { get; init; } = 64;

    /// <summary>Payload bytes one connection may have in flight (a single request is always admitted when none is).</summary>
    public long MaxInFlightBytes { get; init; } = 64L << 20;

    /// <summary>
    /// Payload bytes in flight over all connections (at least <see cref="MaxPayload"/> and
    /// <see cref="MaxInFlightBytes"/>); a connection whose next request does not fit waits for its turn
    /// before it reads on. Buffers are rounded up to a power of two, so the payload buffers in use stay
    /// under twice this.
    /// </summary>
    public long MaxInFlightBytesTotal { get; init; } = 256L << 20;

    /// <summary>Connections served at once over all listeners; more are closed on accept.</summary>
    public int MaxConnections { get; init; } = 256;

    /// <summary>Time a client has from connecting to entering transmission.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest option data accepted during the handshake; a longer one closes the connection.</summary>
    public int MaxOptionLength { get; init; } = 64 << 10;

    /// <summary>Options accepted on one connection before it must enter transmission.</summary>
    public int MaxOptions { get; init; } = 1024;

    /// <summary>
    /// True (writeback, the default): a WRITE without FUA is answered once visible and made durable at
    /// the next FLUSH, as the protocol allows and qemu-nbd and nbdkit do. False (writethrough): every
    /// write is durable when answered, as with FUA, for clients that never send FLUSH.
    /// </summary>
    public bool WriteCache { get; init; } = true;

    /// <summary>
    /// WRITEs at least this large run on the connection's worker thread (0, the default: none), so
    /// their image write (a page-cache copy, CRC32C) overlaps the receive loop reading (and
    /// decrypting) the next payload; smaller ones run on the receive loop's thread. Off by default:
    /// on the shared 2-CPU VM it cut the receive thread's CPU per MiB written by two thirds but raised
    /// the server's (1 MiB writes, 405-479 against 542-647 us per MiB, others busy; perf/README.md).
    /// </summary>
    public int ParallelPayloadBytes { get; init; }

    /// <summary>Bytes of idle payload buffers kept for reuse (all connections).</summary>
    public long BufferRetainBytes { get; init; } = 256L << 20;

    /// <summary>How often idle payload buffers are freed: one not rented again within a period goes.</summary>
    public TimeSpan BufferTrimPeriod { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long <see cref="NbdServer.StopAsync"/> lets connections answer what they have received;
    /// a connection still open then (its client does not read its replies) is cut off.
    /// </summary>
    public TimeSpan StopGrace { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>A TLS listener's server certificate this close to expiry raises a warning (at start, on reload, and daily).</summary>
    public TimeSpan TlsExpiryWarning { get; init; } = TimeSpan.FromDays(30);

    /// <summary>How often server certificates are checked for <see cref="TlsExpiryWarning"/>.</summary>
    public TimeSpan TlsExpiryCheckPeriod { get; init; } = TimeSpan.FromHours(1);

    /// <summary>Decides whether the peer of a Unix socket connection may use NBD: null to admit it, else the reason it is refused.</summary>
    public Func<Socket, string?>? AuthorizeUnixPeer { get; init; }

    /// <summary>Called once a Unix socket is bound (to set its mode and group).</summary>
    public Action<string>? UnixSocketBound { get; init; }

    public INbdServerLog Log { get; init; } = NullNbdServerLog.Instance;
}

/// <summary>What the server reports; the daemon maps it to stable log event ids.</summary>
public interface INbdServerLog
{
    void Listening(string address);

    void ExportOpened(long connection, string peer, string export, bool structuredReplies);

    void ConnectionClosed(long connection, string peer, string why);

    void ClientRefused(string peer, string reason);

    void ProtocolViolation(long connection, string peer, string what);

    /// <summary>The server stopped and the connection was still open at the deadline: it is cut off.</summary>
    void ConnectionAbandoned(long connection, string peer, string why);

    void UnexpectedError(long connection, string peer, Exception e);

    /// <summary>A client refused over TLS: no TLS on a listener that requires it, a failed TLS handshake, a certificate refused, an export its certificate may not open.</summary>
    void TlsRefused(long connection, string peer, string reason) { }

    /// <summary>A listener's server certificate expires within <see cref="NbdServerOptions.TlsExpiryWarning"/>.</summary>
    void TlsCertificateExpiring(string listener, string subject, DateTime notAfter, TimeSpan left) { }

    /// <summary>A listener's certificates were loaded again (<see cref="NbdServer.ReloadTls"/>).</summary>
    void TlsReloaded(string listener, string what) { }
}

public sealed class NullNbdServerLog : INbdServerLog
{
    public static readonly NullNbdServerLog Instance = new();

    public void Listening(string address) { }

    public void ExportOpened(long connection, string peer, string export, bool structuredReplies) { }

    public void ConnectionClosed(long connection, string peer, string why) { }

    public void ClientRefused(string peer, string reason) { }

    public void ProtocolViolation(long connection, string peer, string what) { }

    public void ConnectionAbandoned(long connection, string peer, string why) { }

    public void UnexpectedError(long connection, string peer, Exception e) { }
}
