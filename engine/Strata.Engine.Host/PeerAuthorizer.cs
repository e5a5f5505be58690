using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>
/// Connection middleware on the control socket: reads the caller's identity with SO_PEERCRED
/// before any HTTP is parsed, and lets in only root, the engine's own uid, or members of the
/// admin group (primary gid or listed in /etc/group). Authorizing by uid, not only by the
/// directory's mode, is the lesson of Docker's socket. A refused caller gets a canned 403
/// (so the CLI can say why) and the connection is closed.
/// </summary>
internal sealed class PeerAuthorizer(ResolvedConfig cfg, uint engineUid, (uint Gid, string[] Members)? adminGroup, ILogger logger,
    Func<EngineService?> service)
{
    // A refused local user must not be able to flood the durable RAS log (every event is written and fsynced):
    // at most one control_caller_rejected event per uid every 10 s; the log line is always written.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<uint, long> _lastRasEvent = new();

    private bool ShouldRaise(uint uid)
    {
        long now = Environment.TickCount64;
        long last = _lastRasEvent.GetOrAdd(uid, long.MinValue);
        return (last == long.MinValue || now - last >= 10_000) && _lastRasEvent.TryUpdate(uid, now, last);
    }

    public ConnectionDelegate Wrap(ConnectionDelegate next) => async ctx =>
    {
        var socket = ctx.Features.Get<IConnectionSocketFeature>()?.Socket;
        var cred = socket == null ? null : Unix.PeerCredentials(socket);
        if (cred == null)
        {
            Log.NoPeerCredentials(logger);
            await RefuseAsync(ctx, "the engine could not identify the caller (no peer credentials)");
            return;
        }
        var (pid, uid, gid) = cred.Value;
        if (!IsAllowed(uid, gid))
        {
            Log.CallerRejected(logger, pid, uid, gid, engineUid, cfg.AdminGroup ?? "(none)");
            var svc = service();
            svc?.Metrics.RecordRejected();
            if (ShouldRaise(uid))
                svc?.Ras.Emit(new RasEvent(ControlRasIds.CallerRejected, RasSeverity.Warning, RasType.InfoOnly,
                    $"control caller pid {pid} uid {uid} refused: not root, the engine's user or a member of the admin group"), null,
                    new Dictionary<string, string> { ["pid"] = pid.ToString(), ["uid"] = uid.ToString(), ["gid"] = gid.ToString() });
            await RefuseAsync(ctx, $"permission denied: uid {uid} is not root, the engine's user (uid {engineUid}) or a member of the admin group{(cfg.AdminGroup == null ? " (none configured)" : $" '{cfg.AdminGroup}'")}");
            return;
        }
        await next(ctx);
    };

    /// <summary>The same check for a data-path socket (NBD): null to admit the caller, else why it is refused.</summary>
    public string? Refusal(System.Net.Sockets.Socket socket)
    {
        if (Unix.PeerCredentials(socket) is not { } cred)
            return "the engine could not identify the caller (no peer credentials)";
        var (_, uid, gid) = cred;
        return IsAllowed(uid, gid)
            ? null
            : $"permission denied: uid {uid} is not root, the engine's user (uid {engineUid}) or a member of the admin group{(cfg.AdminGroup == null ? " (none configured)" : $" '{cfg.AdminGroup}'")}";
    }

    public bool IsAllowed(uint uid, uint gid)
    {
        if (uid == 0 || uid == engineUid)
            return true;
        if (adminGroup is not { } g)
            return false;
        if (gid == g.Gid)
            return true;
        var user = Unix.FindUser(uid);
        return user is { } u && (u.Gid == g.Gid || g.Members.Contains(u.Name, StringComparer.Ordinal));
    }

    private static async Task RefuseAsync(ConnectionContext ctx, string message)
    {
        var body = System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(new ErrorBody(message, ErrorCodes.PermissionDenied), Api.Json);
        var head = Encoding.ASCII.GetBytes(
            $"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n{Api.VersionHeader}: {Api.Version}\r\nConnection: close\r\n\r\n");
        try
        {
            await ctx.Transport.Output.WriteAsync(head);
            await ctx.Transport.Output.WriteAsync(body);
            await ctx.Transport.Output.CompleteAsync();
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ConnectionResetException)
        {
        }
    }
}
