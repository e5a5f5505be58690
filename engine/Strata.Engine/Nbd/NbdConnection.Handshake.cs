using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using Strata.Engine.Store;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>
/// The fixed newstyle handshake: greeting, client flags, then option haggling until
/// NBD_OPT_GO (or the old NBD_OPT_EXPORT_NAME) enters transmission or the client aborts.
/// Unknown options are answered NBD_REP_ERR_UNSUP and the next one is parsed; what breaks
/// the framing (bad magic, unknown client flags, an absurd option length) closes the
/// connection. Allocation here is per connection, not per request.
/// NBD_OPT_STARTTLS follows the listener's <see cref="NbdTlsMode"/>: refused (POLICY) when off;
/// when required, every other option before it but ABORT is answered NBD_REP_ERR_TLS_REQD and
/// NBD_OPT_EXPORT_NAME closes the connection. After the upgrade the state negotiated in plain
/// text (structured replies) is forgotten, as nbdkit does since CVE-2021-3716, and a client
/// certificate's allow list decides which exports it may open (NBD_REP_ERR_POLICY otherwise).
/// </summary>
internal sealed partial class NbdConnection
{
    /// <summary>The export the last NBD_OPT_SET_META_CONTEXT selected base:allocation for (null: none selected).</summary>
    private string? _metaExport;

    /// <summary>The buffered socket under <see cref="_tls"/>.</summary>
    private NbdTlsTransport? _tlsTransport;

    /// <summary>The certificates this connection holds (AcquireCredentials); released when it closes.</summary>
    private NbdTlsCredentials? _heldCredentials;

    /// <summary>Transmission answers NBD_CMD_BLOCK_STATUS: base:allocation was selected for the export opened.</summary>
    private bool _blockStatus;

    /// <summary>Runs the handshake; sets <see cref="_export"/> when transmission may start. Returns why it ended otherwise.</summary>
    private async Task<string> HandshakeAsync(CancellationToken ct)
    {
        var head = new byte[OptionReplyHeaderSize + 8 + 124];
        int n = NbdWire.WriteGreeting(head, FlagFixedNewstyle | FlagNoZeroes);
        await SendAllAsync(head.AsMemory(0, n), ct).ConfigureAwait(false);
        if (!await ReceiveExactAsync(head.AsMemory(0, 4), ct).ConfigureAwait(false))
            return "client closed the connection during the handshake";
        bool noZeroes;
        try
        {
            noZeroes = NbdParse.ClientFlags(head);
        }
        catch (NbdProtocolException e)
        {
            return Violation(e.Message);
        }

        for (int options = 0; ; options++)
        {
            if (!await ReceiveExactAsync(head.AsMemory(0, OptionHeaderSize), ct).ConfigureAwait(false))
                return "client closed the connection during the handshake";
            uint option, length;
            try
            {
                (option, length) = NbdParse.OptionHeader(head, options, Options.MaxOptionLength, Options.MaxOptions);
            }
            catch (NbdProtocolException e)
            {
                return Violation(e.Message);
            }
            var data = new byte[length];
            if (!await ReceiveExactAsync(data, ct).ConfigureAwait(false))
                return "client closed the connection during the handshake";

            if (_listener.TlsMode == NbdTlsMode.Require && _tls == null && option is not (OptStartTls or OptAbort))
            {
                if (option == OptExportName)
                {
                    // NBD_OPT_EXPORT_NAME cannot be answered with an error: the spec says terminate the session.
                    const string plain = "NBD_OPT_EXPORT_NAME without TLS on a listener that requires it";
                    Options.Log.TlsRefused(Id, Peer, plain);
                    return plain;
                }
                _plainRefused = true;
                await ErrorAsync(option, RepErrTlsReqd, "this listener requires TLS: start it with NBD_OPT_STARTTLS (an nbds:// URI)", ct).ConfigureAwait(false);
                continue;
            }

            switch (option)
            {
                case OptExportName:
                {
                    string? name = NbdParse.DecodeString(data);
                    if (name != null && Forbidden(name) is { } forbidden)
                        return forbidden;
                    var (export, error) = name == null
                        ? (null, "the name is not valid UTF-8 (or contains NUL)")
                        : await OpenExportAsync(name).ConfigureAwait(false);
                    if (export == null)
                    {
                        // NBD_OPT_EXPORT_NAME cannot answer an error: the spec says terminate the session.
                        string refused = $"NBD_OPT_EXPORT_NAME for {Describe(name)}: {error}";
                        Options.Log.ClientRefused(Peer, refused);
                        return refused;
                    }
                    if (!Register(export, out string? why))
                        return $"NBD_OPT_EXPORT_NAME for '{name}' refused: {why}";
                    n = NbdWire.WriteExportNameReply(head, (ulong)export.Size, export.TransmissionFlags, noZeroes);
                    await SendAllAsync(head.AsMemory(0, n), ct).ConfigureAwait(false);
                    _blockStatus = _structured && _metaExport == export.Name;
                    _export = export;
                    return "transmission";
                }
                case OptAbort:
                    // Best effort: the client may already be gone.
                    try
                    {
                        await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                    }
                    catch (System.Net.Sockets.SocketException)
                    {
                    }
                    return "client aborted the handshake (NBD_OPT_ABORT)";
                case OptList:
                    if (length != 0)
                    {
                        await ErrorAsync(option, RepErrInvalid, "NBD_OPT_LIST takes no data", ct).ConfigureAwait(false);
                        break;
                    }
                    foreach (var name in await _server.Catalog.ListAsync().ConfigureAwait(false))
                    {
                        // A client certificate sees only the exports it may open.
                        if (_tlsCredentials is { } creds && !creds.Allows(_clientName, _clientSubject, name))
                            continue;
                        var nb = Encoding.UTF8.GetBytes(name);
                        var rep = new byte[4 + nb.Length];
                        BinaryPrimitives.WriteUInt32BigEndian(rep, (uint)nb.Length);
                        nb.CopyTo(rep, 4);
                        await ReplyAsync(option, RepServer, rep, ct).ConfigureAwait(false);
                    }
                    await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                    break;
                case OptInfo:
                case OptGo:
                    if (await InfoOrGoAsync(option, data, ct).ConfigureAwait(false))
                        return "transmission";
                    break;
                case OptStructuredReply:
                    if (length != 0)
                    {
                        await ErrorAsync(option, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", ct).ConfigureAwait(false);
                        break;
                    }
                    _structured = true;
                    await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                    break;
                case OptListMetaContext:
                case OptSetMetaContext:
                    await MetaContextAsync(option, data, ct).ConfigureAwait(false);
                    break;
                case OptStartTls:
                    if (AcquireCredentials() is not { } credentials)
                    {
                        await ErrorAsync(option, RepErrPolicy, $"TLS is off on this listener ({_listener})", ct).ConfigureAwait(false);
                        break;
                    }
                    if (_tls != null)
                    {
                        await ErrorAsync(option, RepErrInvalid, "TLS is already started on this connection", ct).ConfigureAwait(false);
                        break;
                    }
                    if (length != 0)
                    {
                        await ErrorAsync(option, RepErrInvalid, "NBD_OPT_STARTTLS takes no data", ct).ConfigureAwait(false);
                        break;
                    }
                    await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
                    if (await StartTlsAsync(credentials, ct).ConfigureAwait(false) is { } tlsRefused)
                        return tlsRefused;
                    break;
                default:
                    await ErrorAsync(option, RepErrUnsup, $"{OptionName(option)} is not supported by Strata's NBD server", ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO; returns true when GO succeeded (transmission starts).</summary>
    private async Task<bool> InfoOrGoAsync(uint option, byte[] data, CancellationToken ct)
    {
        var request = NbdParse.InfoRequest(option, data);
        if (request.Error != null)
        {
            await ErrorAsync(option, RepErrInvalid, request.Error, ct).ConfigureAwait(false);
            return false;
        }
        string name = request.Name!;
        var requested = request.Requested;
        if (Forbidden(name) is { } forbidden)
        {
            await ErrorAsync(option, RepErrPolicy, forbidden, ct).ConfigureAwait(false);
            return false;
        }
        var (export, error) = await OpenExportAsync(name).ConfigureAwait(false);
        if (export == null)
        {
            await ErrorAsync(option, RepErrUnknown, error!, ct).ConfigureAwait(false);
            return false;
        }
        bool go = option == OptGo;
        if (go && !Register(export, out string? why))
        {
            await ErrorAsync(option, RepErrUnknown, $"export '{name}' cannot be opened: {why}", ct).ConfigureAwait(false);
            return false;
        }
        var info = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(info, InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), export.TransmissionFlags);
        await ReplyAsync(option, RepInfo, info.AsMemory(0, 12), ct).ConfigureAwait(false);
        if (requested.Contains(InfoName))
            await ReplyAsync(option, RepInfo, InfoString(InfoName, export.Name), ct).ConfigureAwait(false);
        if (requested.Contains(InfoDescription))
            await ReplyAsync(option, RepInfo, InfoString(InfoDescription, export.Description), ct).ConfigureAwait(false);
        if (requested.Contains(InfoBlockSize))
        {
            // Minimum 1 (any byte offset and length), preferred = the chunk (no read-modify-write), maximum payload.
            BinaryPrimitives.WriteUInt16BigEndian(info, InfoBlockSize);
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(2), 1);
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(6), (uint)Math.Max(512, export.ChunkSize));
            BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(10), (uint)Options.MaxPayload);
            await ReplyAsync(option, RepInfo, info.AsMemory(0, 14), ct).ConfigureAwait(false);
        }
        await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        if (!go)
            return false;
        _blockStatus = _structured && _metaExport == export.Name;
        _export = export;
        return true;
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. Strata has one context,
    /// base:allocation (id 1): which chunks are mapped; the rest is holes that read as zeroes. A SET
    /// replaces the selection even when it fails; the selection holds for the export it named only.
    /// </summary>
    private async Task MetaContextAsync(uint option, byte[] data, CancellationToken ct)
    {
        bool set = option == OptSetMetaContext;
        if (set)
            _metaExport = null;
        if (!_structured)
        {
            await ErrorAsync(option, RepErrInvalid, $"{OptionName(option)} needs structured replies: send NBD_OPT_STRUCTURED_REPLY first", ct).ConfigureAwait(false);
            return;
        }
        var request = NbdParse.MetaContextRequest(option, data);
        if (request.Error != null)
        {
            await ErrorAsync(option, RepErrInvalid, request.Error, ct).ConfigureAwait(false);
            return;
        }
        string name = request.Name!;
        if (Forbidden(name) is { } forbidden)
        {
            await ErrorAsync(option, RepErrPolicy, forbidden, ct).ConfigureAwait(false);
            return;
        }
        var (export, error) = await OpenExportAsync(name).ConfigureAwait(false);
        if (export == null)
        {
            await ErrorAsync(option, RepErrUnknown, error!, ct).ConfigureAwait(false);
            return;
        }
        if (NbdParse.MatchesAllocation(request.Queries, list: !set))
        {
            var context = Encoding.UTF8.GetBytes(AllocationContext);
            var rep = new byte[4 + context.Length];
            // LIST's context ids are reserved (zero).
            BinaryPrimitives.WriteUInt32BigEndian(rep, set ? AllocationContextId : 0);
            context.CopyTo(rep, 4);
            await ReplyAsync(option, RepMetaContext, rep, ct).ConfigureAwait(false);
            if (set)
                _metaExport = export.Name;
        }
        await ReplyAsync(option, RepAck, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
    }

    private static byte[] InfoString(ushort type, string text)
    {
        int n = Math.Min(Encoding.UTF8.GetByteCount(text), MaxStringLength);
        var b = new byte[2 + n];
        BinaryPrimitives.WriteUInt16BigEndian(b, type);
        NbdWire.Utf8Prefix(text, b.AsSpan(2));
        return b;
    }

    private async Task<(NbdExport? Export, string? Error)> OpenExportAsync(string name)
    {
        if (NbdParse.ExportNameProblem(name) is { } problem)
            return (null, problem);
        try
        {
            var export = await _server.Catalog.OpenAsync(name).ConfigureAwait(false);
            return export == null ? (null, $"no image '{name}' (pool/container/image)") : (export, null);
        }
        catch (Exception e) when (e is StoreException or ObjectDisposedException)
        {
            return (null, $"export '{name}' cannot be opened: {e.Message}");
        }
    }

    /// <summary>Holds the image open: the pool learns of this client, and image remove refuses while it stays.</summary>
    private bool Register(NbdExport export, out string? why)
    {
        try
        {
            _registration = export.Pool.RegisterClient(Id, "nbd", export.Container + "/" + export.ImageLabel, $"{Peer} via {_listener}",
                reason => RevokeAsync(reason));
            why = null;
            return true;
        }
        catch (ObjectDisposedException)
        {
            why = $"pool '{export.PoolLabel}' is closed";
            return false;
        }
    }

    /// <summary>
    /// The TLS handshake after NBD_OPT_STARTTLS was acknowledged. Returns null once TLS is up, else
    /// why the connection ends (the acknowledgement is sent: there is no going back to plain text).
    /// A client that stalls is cut off by the handshake timeout (<paramref name="ct"/>).
    /// </summary>
    private async Task<string?> StartTlsAsync(NbdTlsCredentials credentials, CancellationToken ct)
    {
        var transport = new NbdTlsTransport(_socket);
        var stream = new SslStream(transport, leaveInnerStreamOpen: false);
        string? refusal = null;
        var options = credentials.ServerOptions((_, certificate, chain, _) =>
            (refusal = credentials.CheckClient(certificate, chain, out _clientName, out _clientSubject)) == null);
        try
        {
            await stream.AuthenticateAsServerAsync(options, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is AuthenticationException or IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            string why = refusal ?? $"TLS handshake failed: {Innermost(e)}";
            Options.Log.TlsRefused(Id, Peer, why);
            return "TLS refused: " + why;
        }
        catch (OperationCanceledException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            if (!_server.Stopping.IsCancellationRequested)
                Options.Log.TlsRefused(Id, Peer, $"the TLS handshake did not finish within {Options.HandshakeTimeout.TotalSeconds:F0} s");
            throw;
        }
        // From here every send is one batch of TLS records, flushed at the batch's end.
        transport.Corked = true;
        _tlsTransport = transport;
        _tls = stream;
        _tlsCredentials = credentials;
        // Nothing negotiated in plain text carries over into the TLS session.
        _structured = false;
        _metaExport = null;
        Peer = _clientName != null
            ? $"{Peer} TLS {stream.SslProtocol} cert '{_clientName}'"
            : $"{Peer} TLS {stream.SslProtocol}";
        return null;
    }

    /// <summary>
    /// The listener's current certificates, held for this connection until it closes (a reload
    /// retires them meanwhile without disposing them); null when TLS is off. Held once per connection.
    /// </summary>
    private NbdTlsCredentials? AcquireCredentials()
    {
        if (_heldCredentials != null)
            return _heldCredentials;
        NbdTlsCredentials? c;
        while ((c = _listener.Credentials) != null && !c.TryAcquire())
        {
            // Replaced and disposed between the read and the acquire: the listener has newer ones.
        }
        return _heldCredentials = c;
    }

    private static string Innermost(Exception e)
    {
        while (e.InnerException != null)
            e = e.InnerException;
        return e.Message;
    }

    /// <summary>Null when this connection may open <paramref name="name"/>; else why not (logged as a TLS refusal).</summary>
    private string? Forbidden(string name)
    {
        if (_tlsCredentials is not { } creds || creds.Allows(_clientName, _clientSubject, name))
            return null;
        string why = $"client certificate '{_clientSubject}' may not open export '{name}' (tls_allow)";
        Options.Log.TlsRefused(Id, Peer, why);
        return why;
    }

    private static string Describe(string? name) => name == null ? "an invalid name" : $"'{name}'";

    private string Violation(string what)
    {
        Options.Log.ProtocolViolation(Id, Peer, what);
        return "protocol violation: " + what;
    }

    private async Task ReplyAsync(uint option, uint type, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        var b = new byte[OptionReplyHeaderSize + payload.Length];
        NbdWire.WriteOptionReplyHeader(b, option, type, (uint)payload.Length);
        payload.CopyTo(b.AsMemory(OptionReplyHeaderSize));
        await SendAllAsync(b, ct).ConfigureAwait(false);
    }

    private Task ErrorAsync(uint option, uint type, string message, CancellationToken ct)
    {
        int n = Math.Min(Encoding.UTF8.GetByteCount(message), MaxStringLength);
        var b = new byte[n];
        NbdWire.Utf8Prefix(message, b);
        return ReplyAsync(option, type, b, ct);
    }
}
