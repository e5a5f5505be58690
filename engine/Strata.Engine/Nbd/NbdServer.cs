using System.Net;
using System.Net.Sockets;

namespace Strata.Engine.Nbd;

/// <summary>A bound listener: its configured address, for TCP the port actually bound, and its TLS certificates.</summary>
public sealed class NbdListener
{
    private volatile NbdTlsCredentials? _credentials;

    internal NbdListener(NbdListenerAddress address, Socket socket, NbdTlsCredentials? credentials)
    {
        Address = address;
        Socket = socket;
        Endpoint = address.Tcp != null ? (IPEndPoint)socket.LocalEndPoint! : null;
        _credentials = credentials;
    }

    public NbdTlsMode TlsMode => Address.Tls.Mode;

    /// <summary>The certificates new handshakes use (null when TLS is off); a reload replaces them, open connections keep theirs.</summary>
    public NbdTlsCredentials? Credentials
    {
        get => _credentials;
        internal set => _credentials = value;
    }

    public NbdListenerAddress Address { get; }

    internal Socket Socket { get; }

    /// <summary>The bound TCP endpoint (port 0 in the configuration becomes a real port here).</summary>
    public IPEndPoint? Endpoint { get; }

    /// <summary>How to reach an export through this listener, as an NBD URI (the form qemu, nbdinfo and fio take).</summary>
    /// <remarks>A listener with TLS on or required gives the nbds:// form: a client should start TLS there.</remarks>
    public string UriFor(string export)
    {
        string scheme = TlsMode == NbdTlsMode.Off ? "nbd" : "nbds";
        if (Endpoint is not { } ep)
            return $"{scheme}+unix:///{export}?socket={Address.UnixPath}";
        // A listener on every address (0.0.0.0, [::]) is reached by the host's name.
        string host = ep.Address.Equals(IPAddress.Any) || ep.Address.Equals(IPAddress.IPv6Any) ? Dns.GetHostName()
            : ep.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ep.Address}]" : ep.Address.ToString();
        return $"{scheme}://{host}:{ep.Port}/{export}";
    }

    public override string ToString() => Endpoint is { } ep ? $"tcp:{ep}" : $"unix:{Address.UnixPath}";
}

/// <summary>
/// The NBD server: accepts on every listener, runs each connection's handshake and
/// transmission (<see cref="NbdConnection"/>), and on stop closes the listeners and makes
/// every connection finish its in-flight requests and go, cutting off those that have not gone
/// by the stop's deadline.
/// </summary>
public sealed partial class NbdServer : IAsyncDisposable
{
    private readonly List<NbdListener> _listeners = [];
    private readonly HashSet<NbdConnection> _connections = [];
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<Task> _acceptLoops = [];
    /// <summary>Cancelled to stop accepting without closing the listeners (a hot swap's pause); renewed on resume.</summary>
    private CancellationTokenSource _accepting = new();
    private List<NbdConnection> _parked = [];
    private readonly List<NbdConnection> _adopted = [];
    private volatile bool _handedOver;
    private readonly Timer _trim;
    private readonly Timer _expiry;
    private readonly object _reload = new();
    private long _nextConnectionId;
    private Task? _stop;

    private NbdServer(NbdServerOptions options)
    {
        if (options.MaxInFlightBytesTotal < options.MaxPayload || options.MaxInFlightBytes > options.MaxInFlightBytesTotal)
            throw new ArgumentException($"the engine-wide NBD payload budget ({options.MaxInFlightBytesTotal} bytes) must hold the largest payload ({options.MaxPayload}) and one connection's budget ({options.MaxInFlightBytes})", nameof(options));
        Options = options;
        Buffers = new NbdBufferPool(options.MaxPayload, options.BufferRetainBytes);
        Budget = new NbdPayloadBudget(options.MaxInFlightBytesTotal);
        // Buffers not rented again since the previous tick are freed: a burst's memory goes back within two periods.
        long lastTick = Environment.TickCount64;
        _trim = new Timer(_ =>
        {
            long now = Environment.TickCount64;
            Buffers.Trim(Interlocked.Exchange(ref lastTick, now));
        }, null, options.BufferTrimPeriod, options.BufferTrimPeriod);
        _expiry = new Timer(_ => CheckExpiry(), null, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The exports, from <see cref="Serve"/> on.</summary>
    public NbdExportCatalog Catalog { get; private set; } = null!;

    public NbdServerOptions Options { get; }

    /// <summary>Payload buffers of every connection (tests check that none stays rented).</summary>
    public NbdBufferPool Buffers { get; }

    public IReadOnlyList<NbdListener> Listeners => _listeners;

    /// <summary>Payload bytes in flight over every connection, bounded by <see cref="NbdServerOptions.MaxInFlightBytesTotal"/>.</summary>
    public long InFlightBytes => Budget.Used;

    /// <summary>The most payload bytes that were in flight at once since the server started.</summary>
    public long PeakInFlightBytes => Budget.Peak;

    internal NbdPayloadBudget Budget { get; }

    internal CancellationToken Stopping => _stopping.Token;

    /// <summary>Connections currently open (in handshake or transmission).</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_connections)
                return _connections.Count;
        }
    }

    /// <summary>Binds every listener (any failure closes those already bound and throws), then accepts.</summary>
    public static NbdServer Start(IEnumerable<NbdListenerAddress> addresses, NbdExportCatalog catalog, NbdServerOptions? options = null)
    {
        var server = Bind(addresses, options);
        server.Serve(catalog);
        return server;
    }

    /// <summary>
    /// Binds every listener (any failure closes those already bound and throws) and accepts nothing
    /// yet: the daemon binds before it opens or formats a target, so a refused listener changes nothing.
    /// Clients that connect wait in the listen backlog until <see cref="Serve"/>.
    /// </summary>
    public static NbdServer Bind(IEnumerable<NbdListenerAddress> addresses, NbdServerOptions? options = null,
        IReadOnlyDictionary<string, Socket>? inherited = null)
    {
        var server = new NbdServer(options ?? new NbdServerOptions());
        try
        {
            foreach (var a in addresses)
            {
                try
                {
                    // A listener the replaced engine handed over (hot swap) is used as it is: already bound and listening.
                    server._listeners.Add(inherited != null && inherited.TryGetValue(a.Spec, out var s)
                        ? new NbdListener(a, s, a.Tls.Mode == NbdTlsMode.Off ? null : NbdTlsCredentials.Load(a.Tls, a.Spec))
                        : Bind(a, server.Options));
                }
                catch (SocketException e)
                {
                    throw new IOException($"cannot listen for NBD on {a.Spec}: {e.Message}", e);
                }
            }
        }
        catch
        {
            foreach (var l in server._listeners)
                l.Socket.Dispose();
            server._trim.Dispose();
            server._expiry.Dispose();
            throw;
        }
        return server;
    }

    /// <summary>Starts accepting on the bound listeners, serving <paramref name="catalog"/>'s exports.</summary>
    public void Serve(NbdExportCatalog catalog)
    {
        if (Catalog != null && _adopted.Count == 0)
            throw new InvalidOperationException("the NBD server is already serving");
        Catalog = catalog;
        foreach (var l in _listeners)
        {
            Options.Log.Listening(l.ToString());
            _acceptLoops.Add(Task.Run(() => AcceptLoopAsync(l, _accepting.Token)));
        }
        foreach (var c in _adopted)
            c.Go();
        _adopted.Clear();
        if (_listeners.Any(l => l.Credentials != null))
        {
            CheckExpiry();
            _expiry.Change(Options.TlsExpiryCheckPeriod, Options.TlsExpiryCheckPeriod);
        }
    }

    /// <summary>
    /// Loads every TLS listener's certificates again from the configured files (after a renewal):
    /// all of them or, if any is refused, none (the old ones stay and the error says why). New
    /// handshakes use the new certificates; open connections are not touched. Returns one line per
    /// listener reloaded.
    /// </summary>
    public IReadOnlyList<string> ReloadTls()
    {
        lock (_reload)
        {
            var tls = _listeners.Where(l => l.TlsMode != NbdTlsMode.Off).ToList();
            var loaded = new List<NbdTlsCredentials>();
            try
            {
                foreach (var l in tls)
                    loaded.Add(NbdTlsCredentials.Load(l.Address.Tls, l.Address.Spec));
            }
            catch
            {
                // One refused: none is used, and those loaded already are let go.
                foreach (var c in loaded)
                    c.Retire();
                throw;
            }
            var lines = new List<string>();
            for (int i = 0; i < tls.Count; i++)
            {
                var old = tls[i].Credentials;
                tls[i].Credentials = loaded[i];
                // Connections that started with the old certificates keep them until they close.
                old?.Retire();
                string line = $"{tls[i]}: '{loaded[i].Certificate.Subject}' valid until {loaded[i].NotAfter:yyyy-MM-dd HH:mm} UTC";
                Options.Log.TlsReloaded(tls[i].ToString(), line);
                lines.Add(line);
            }
            CheckExpiry();
            return lines;
        }
    }

    /// <summary>A warning for each server certificate that expires within <see cref="NbdServerOptions.TlsExpiryWarning"/> (at most once a day each).</summary>
    private void CheckExpiry()
    {
        var now = DateTime.UtcNow;
        long tick = Environment.TickCount64;
        foreach (var l in _listeners)
        {
            if (l.Credentials is not { } c)
                continue;
            var left = c.NotAfter - now;
            if (left > Options.TlsExpiryWarning)
                continue;
            long last = Interlocked.Read(ref c.LastExpiryWarning);
            if (last != 0 && tick - last < (long)TimeSpan.FromDays(1).TotalMilliseconds)
                continue;
            if (Interlocked.CompareExchange(ref c.LastExpiryWarning, tick, last) == last)
                Options.Log.TlsCertificateExpiring(l.ToString(), c.Certificate.Subject, c.NotAfter, left);
        }
    }

    private static NbdListener Bind(NbdListenerAddress a, NbdServerOptions options)
    {
        // Certificates first: a refused one binds nothing.
        var credentials = a.Tls.Mode == NbdTlsMode.Off ? null : NbdTlsCredentials.Load(a.Tls, a.Spec);
        Socket s;
        if (a.UnixPath is { } path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                s.Bind(new UnixDomainSocketEndPoint(path));
                options.UnixSocketBound?.Invoke(path);
            }
            catch
            {
                s.Dispose();
                throw;
            }
        }
        else
        {
            var ep = a.Tcp!;
            s = new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                s.Bind(ep);
            }
            catch
            {
                s.Dispose();
                throw;
            }
        }
        s.Listen(128);
        return new NbdListener(a, s, credentials);
    }

    /// <summary>Every URI an export can be reached at, one per listener.</summary>
    public IReadOnlyList<string> UrisFor(string export) => _listeners.Select(l => l.UriFor(export)).ToList();

    private async Task AcceptLoopAsync(NbdListener listener, CancellationToken accepting)
    {
        using var either = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token, accepting);
        while (!either.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.Socket.AcceptAsync(either.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (ObjectDisposedException)
            {
                break;
            }
            catch (SocketException e)
            {
                if (either.IsCancellationRequested)
                    break;
                // EMFILE and the like: say so, breathe, keep serving the connections we have.
                Options.Log.ClientRefused(listener.ToString(), $"accept failed: {e.Message}");
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            var conn = new NbdConnection(this, client, listener, Interlocked.Increment(ref _nextConnectionId));
            lock (_connections)
            {
                if (_connections.Count >= Options.MaxConnections || _stopping.IsCancellationRequested)
                {
                    conn = null;
                }
                else
                {
                    _connections.Add(conn);
                }
            }
            if (conn == null)
            {
                Options.Log.ClientRefused(listener.ToString(), $"{Options.MaxConnections} NBD connections are open already");
                client.Dispose();
                continue;
            }
            _ = RunAsync(conn);
        }
    }

    private async Task RunAsync(NbdConnection conn)
    {
        try
        {
            await conn.RunAsync().ConfigureAwait(false);
        }
        finally
        {
            lock (_connections)
                _connections.Remove(conn);
        }
    }

    /// <summary>
    /// Stops accepting, then makes every connection go: requests in flight complete and are
    /// answered, later ones get NBD_ESHUTDOWN, and the connection closes. A connection still open
    /// after <paramref name="grace"/> (default <see cref="NbdServerOptions.StopGrace"/>; typically its
    /// client does not read its replies) is abandoned: its socket is closed, pending sends fail, and
    /// it closes once the image I/O it started has completed. Unix socket files are removed.
    /// </summary>
    public Task StopAsync(string reason = "the engine is stopping", TimeSpan? grace = null)
    {
        // Every caller waits for the one stop (the daemon starts it on the stop request and awaits it later).
        lock (_listeners)
            return _stop ??= StopCoreAsync(reason, grace ?? Options.StopGrace);
    }

    private async Task StopCoreAsync(string reason, TimeSpan grace)
    {
        _stopping.Cancel();
        foreach (var l in _listeners)
        {
            l.Socket.Dispose();
            // Handed over (hot swap): the new engine listens on the same socket file.
            if (l.Address.UnixPath is { } p && !_handedOver)
            {
                try
                {
                    File.Delete(p);
                }
                catch (IOException)
                {
                }
            }
        }
        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        List<NbdConnection> open;
        lock (_connections)
            open = _connections.ToList();
        // Revoking waits for each connection's replies to go out; a client that does not read them holds it up.
        var revoked = Task.WhenAll(open.Select(c => c.RevokeAsync(reason).AsTask()));
        var closed = Task.WhenAll(open.Select(c => c.Closed));
        if (await Task.WhenAny(closed, Task.Delay(grace)).ConfigureAwait(false) != closed)
        {
            string why = $"the server is stopping and the client did not take its replies within {grace.TotalSeconds:0.#} s";
            foreach (var c in open.Where(c => !c.Closed.IsCompleted))
            {
                Options.Log.ConnectionAbandoned(c.Id, c.Peer, why);
                c.Abandon(why);
            }
        }
        await closed.ConfigureAwait(false);
        await revoked.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        // Every connection is closed: the certificates' native handles go now.
        foreach (var l in _listeners)
            l.Credentials?.Retire();
        await _trim.DisposeAsync().ConfigureAwait(false);
        await _expiry.DisposeAsync().ConfigureAwait(false);
        Buffers.Dispose();
        _stopping.Dispose();
    }
}
