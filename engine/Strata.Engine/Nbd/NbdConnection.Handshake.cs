using System.Buffers.Binary;
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
/// </summary>
internal sealed partial class NbdConnection
{
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

            switch (option)
            {
                case OptExportName:
                {
                    string? name = NbdParse.DecodeString(data);
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
                case OptStartTls:
                    await ErrorAsync(option, RepErrUnsup, "TLS is not supported: Strata serves NBD on a Unix socket and loopback TCP only", ct).ConfigureAwait(false);
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
        _export = export;
        return true;
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
