using Microsoft.Extensions.Logging;
using Strata.Engine.Nbd;

namespace Strata.Engine.Host;

/// <summary>The NBD server's reports as the daemon's log lines (stable event ids 1009, 1400-1405).</summary>
internal sealed class NbdLog(ILogger logger) : INbdServerLog
{
    public void Listening(string address) => Log.NbdListening(logger, address);

    public void ExportOpened(long connection, string peer, string export, bool structuredReplies) =>
        Log.NbdExportOpened(logger, connection, peer, export, structuredReplies);

    public void ConnectionClosed(long connection, string peer, string why) => Log.NbdConnectionClosed(logger, connection, peer, why);

    public void ClientRefused(string peer, string reason) => Log.NbdClientRefused(logger, peer, reason);

    public void ProtocolViolation(long connection, string peer, string what) => Log.NbdProtocolViolation(logger, connection, peer, what);

    public void ConnectionAbandoned(long connection, string peer, string why) => Log.NbdConnectionAbandoned(logger, connection, peer, why);

    public void UnexpectedError(long connection, string peer, Exception e) => Log.NbdUnexpectedError(logger, e, connection, peer);
}
