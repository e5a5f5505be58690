using System.Collections.Concurrent;
using System.Net;
using Microsoft.Extensions.Logging;
using Strata.Engine.Nbd;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>
/// The NBD server's reports as the daemon's log lines (stable event ids 1009, 1400-1409) and, for
/// TLS refusals and certificate expiry, RAS events (<see cref="NbdRasIds"/>) once the engine runs.
/// </summary>
internal sealed class NbdLog(ILogger logger, Func<EngineService?> service) : INbdServerLog
{
    // A remote client must not be able to flood the durable RAS log (every event is written and fsynced):
    // the same refusal of the same client address is raised at most once every 10 s, and at most
    // 30 refusal events a minute are raised in all (a client can vary the reason, e.g. with
    // certificates of its own making). The log line is always written.
    private const int RefusalsPerMinute = 30;
    private readonly ConcurrentDictionary<string, long> _lastRefusal = new();
    private readonly object _budgetLock = new();
    private long _windowStart = long.MinValue;
    private int _inWindow;

    public void Listening(string address) => Log.NbdListening(logger, address);

    public void ExportOpened(long connection, string peer, string export, bool structuredReplies) =>
        Log.NbdExportOpened(logger, connection, peer, export, structuredReplies);

    public void ConnectionClosed(long connection, string peer, string why) => Log.NbdConnectionClosed(logger, connection, peer, why);

    public void ClientRefused(string peer, string reason) => Log.NbdClientRefused(logger, peer, reason);

    public void ProtocolViolation(long connection, string peer, string what) => Log.NbdProtocolViolation(logger, connection, peer, what);

    public void ConnectionAbandoned(long connection, string peer, string why) => Log.NbdConnectionAbandoned(logger, connection, peer, why);

    public void UnexpectedError(long connection, string peer, Exception e) => Log.NbdUnexpectedError(logger, e, connection, peer);

    public void TlsRefused(long connection, string peer, string reason)
    {
        Log.NbdTlsRefused(logger, connection, peer, reason);
        string key = Address(peer) + "\n" + reason;
        long now = Environment.TickCount64;
        long last = _lastRefusal.GetOrAdd(key, long.MinValue);
        if ((last != long.MinValue && now - last < 10_000) || !_lastRefusal.TryUpdate(key, now, last))
            return;
        lock (_budgetLock)
        {
            if (_windowStart == long.MinValue || now - _windowStart >= 60_000)
            {
                _windowStart = now;
                _inWindow = 0;
                // Old keys go with the window: the dictionary stays as small as one minute's refusals.
                foreach (var k in _lastRefusal.Where(k => now - k.Value >= 10_000).Select(k => k.Key).ToList())
                    _lastRefusal.TryRemove(k, out _);
            }
            if (++_inWindow > RefusalsPerMinute)
                return;
        }
        service()?.Ras.Emit(new RasEvent(NbdRasIds.TlsClientRefused, RasSeverity.Warning, RasType.InfoOnly,
            $"NBD client {peer} refused: {reason}"), null, new Dictionary<string, string> { ["peer"] = peer, ["connection"] = connection.ToString() });
    }

    public void TlsCertificateExpiring(string listener, string subject, DateTime notAfter, TimeSpan left)
    {
        Log.NbdTlsCertificateExpiring(logger, listener, subject, notAfter, left.TotalDays);
        service()?.Ras.Emit(new RasEvent(NbdRasIds.TlsCertificateExpiring, RasSeverity.Warning, RasType.InfoOnly,
            $"NBD listener {listener}: server certificate '{subject}' expires on {notAfter:yyyy-MM-dd HH:mm} UTC ({left.TotalDays:F1} days)"), null,
            new Dictionary<string, string> { ["listener"] = listener, ["subject"] = subject, ["not_after"] = notAfter.ToString("O") });
    }

    public void TlsReloaded(string listener, string what)
    {
        Log.NbdTlsReloaded(logger, what);
        service()?.Ras.Emit(new RasEvent(NbdRasIds.TlsReloaded, RasSeverity.Notice, RasType.StateChange, $"NBD TLS certificates reloaded: {what}"), null,
            new Dictionary<string, string> { ["listener"] = listener });
    }

    /// <summary>The client's address without its port (TCP), or the Unix peer's description up to the TLS details.</summary>
    private static string Address(string peer)
    {
        string first = peer.Split(' ')[0];
        return IPEndPoint.TryParse(first, out var ep) ? ep.Address.ToString() : peer.Split(" TLS ")[0];
    }
}
