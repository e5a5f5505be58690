using System.Net.Sockets;
using Strata.Interop;

namespace Strata.Engine.Nbd;

/// <summary>What a paused server hands to the engine that replaces it: its listeners and its parked connections.</summary>
public sealed record NbdHandoff(IReadOnlyList<(string Spec, Socket Socket)> Listeners, IReadOnlyList<(NbdConnectionState State, Socket Socket)> Connections);

/// <summary>
/// The hot swap's side of the NBD server (docs/operations.md, "Hot swap"): pause (stop accepting,
/// park every connection between requests), then either hand everything over to the new engine or
/// resume here; and, in the new engine, adopt the connections handed over.
/// </summary>
public sealed partial class NbdServer
{
    /// <summary>Why the server cannot be handed over now (a TLS connection is open), or null.</summary>
    public string? HandoffRefusal()
    {
        lock (_connections)
        {
            var tls = _connections.Where(c => c.IsTls).ToList();
            return tls.Count == 0 ? null
                : $"{tls.Count} NBD connection(s) use TLS ({string.Join(", ", tls.Take(3).Select(c => $"#{c.Id} {c.Peer}"))}), whose session cannot move to another process; disconnect them or stop the engine instead";
        }
    }

    /// <summary>
    /// Stops accepting (the listeners stay bound: clients wait in the backlog) and parks every
    /// connection at a request boundary, its requests in flight answered. Connections still in
    /// their handshake are closed.
    /// </summary>
    public async Task<NbdHandoff> PauseAsync()
    {
        if (HandoffRefusal() is { } refused)
            throw new InvalidOperationException(refused);
        _accepting.Cancel();
        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        _acceptLoops.Clear();
        List<NbdConnection> open;
        lock (_connections)
            open = _connections.ToList();
        var states = await Task.WhenAll(open.Select(c => c.PauseAsync())).ConfigureAwait(false);
        var parked = new List<(NbdConnectionState, Socket)>();
        _parked = [];
        for (int i = 0; i < open.Count; i++)
        {
            if (states[i] is not { } s)
                continue;
            _parked.Add(open[i]);
            parked.Add((s, open[i].Socket));
        }
        return new NbdHandoff(_listeners.Select(l => (l.Address.Spec, l.Socket)).ToList(), parked);
    }

    /// <summary>The swap failed: parked connections reopen their exports through <paramref name="catalog"/> (the reopened storage) and accepting starts again.</summary>
    public void Resume(NbdExportCatalog catalog)
    {
        Catalog = catalog;
        foreach (var c in _parked)
            c.Resume();
        _parked = [];
        _accepting = new CancellationTokenSource();
        foreach (var l in _listeners)
            _acceptLoops.Add(Task.Run(() => AcceptLoopAsync(l, _accepting.Token)));
    }

    /// <summary>
    /// The new engine took over: every listener and parked connection is marked shared (so closing
    /// this process's copy does not shut the socket down under the new engine) and let go.
    /// </summary>
    public void HandOver()
    {
        _handedOver = true;
        foreach (var l in _listeners)
        {
            FdPassing.MarkShared(l.Socket);
            // .NET's Socket removes the file it bound when finalized: the new engine listens there.
            GC.SuppressFinalize(l.Socket);
        }
        foreach (var c in _parked)
        {
            FdPassing.MarkShared(c.Socket);
            c.HandOver();
        }
        _parked = [];
    }

    /// <summary>
    /// New engine: takes a connection the replaced engine handed over. Its export is opened and it
    /// joins its pool now; it reads nothing before <see cref="Serve"/>. Null when adopted, else why not.
    /// </summary>
    public async Task<string?> AdoptAsync(NbdExportCatalog catalog, Socket socket, NbdConnectionState state)
    {
        Catalog ??= catalog;
        var listener = _listeners.FirstOrDefault(l => l.Address.Spec == state.Listener) ?? _listeners.FirstOrDefault();
        if (listener == null)
            return $"connection {state.Id} came through listener {state.Listener}, which this engine does not have";
        var conn = new NbdConnection(this, socket, listener, state.Id, state);
        if (await conn.OpenAdoptedAsync().ConfigureAwait(false) is { } why)
            return $"connection {state.Id} ({state.Peer}) on export '{state.Export}': {why}";
        lock (_connections)
            _connections.Add(conn);
        long id;
        while ((id = Interlocked.Read(ref _nextConnectionId)) < state.Id)
            Interlocked.CompareExchange(ref _nextConnectionId, state.Id, id);
        _adopted.Add(conn);
        _ = RunAsync(conn);
        return null;
    }
}
