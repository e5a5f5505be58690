using Strata.Engine.Control;
using Strata.Engine.Device;
using Strata.Engine.Nbd;
using Strata.Engine.Pools;

namespace Strata.Nbd.Tests;

/// <summary>
/// The NBD server in the test process over a real StorageEngine on memory targets, exporting
/// through the same seam the daemon uses (IImageIo, metered by MeteredImage). Pool "p", container "c", image "img"
/// (8 MiB, 4 KiB chunks) unless told otherwise; a Unix socket listener, or loopback TCP.
/// </summary>
internal sealed class InProcessNbd : IAsyncDisposable
{
    public const string Export = "p/c/img";
    public const long ImageSize = 8L << 20;

    private readonly string _dir;

    private readonly PrometheusExporter _exporter;

    private InProcessNbd(string dir, GatedMemoryBlockDevice[] devices, StorageEngine engine, Pool pool, StrataMetrics metrics, PrometheusExporter exporter, NbdServer server)
    {
        _dir = dir;
        _exporter = exporter;
        Devices = devices;
        Engine = engine;
        Pool = pool;
        Metrics = metrics;
        Server = server;
    }

    /// <summary>The targets; close their gates to hold writes in flight.</summary>
    public GatedMemoryBlockDevice[] Devices { get; }
    public StorageEngine Engine { get; }
    public Pool Pool { get; }
    public StrataMetrics Metrics { get; }
    public NbdServer Server { get; }
    public string SocketPath => Path.Combine(_dir, "nbd.sock");

    /// <summary>Where the listener is: the Unix socket, or loopback TCP when started with tcp.</summary>
    public System.Net.EndPoint EndPoint => Server.Listeners[0].Endpoint is { } ep ? ep : new System.Net.Sockets.UnixDomainSocketEndPoint(SocketPath);

    public static async Task<InProcessNbd> StartAsync(NbdServerOptions? options = null, int chunkSize = 4096, bool readOnlyReopen = false, long walBytes = 256 * 1024,
        bool touchAllPages = false, StorageEngineOptions? engineOptions = null, NbdTlsSettings? tls = null, bool tcp = false, bool modelCrashes = true)
    {
        string dir = Directory.CreateTempSubdirectory("strata-nbd-inproc-").FullName;
        var devices = Enumerable.Range(0, 2).Select(i => new GatedMemoryBlockDevice($"mem{i}", 32L << 20) { ModelsCrashes = modelCrashes }).ToArray();
        if (touchAllPages)
        {
            // Memory devices allocate a page on its first write; pages allocated up front keep later measurements to the engine's own objects.
            foreach (var d in devices)
                for (long at = 0; at < d.Geometry.Capacity; at += MemoryBlockDevice.PageSize)
                    d.WriteBytes(at, [0]);
        }
        var engine = await StorageEngine.FormatAsync(devices, engineOptions);
        var pool = await engine.CreatePoolAsync("p", 24L << 20, 1, new PoolCreateOptions { WalBytes = walBytes, MinChunkSize = 4096, MetadataBytes = 64 * 1024 });
        await pool.CreateContainerAsync("c");
        await pool.CreateImageAsync("c", "img", ImageSize, chunkSize);
        if (readOnlyReopen)
        {
            // Close and reopen the engine read-only: the pool's state is then ReadOnly.
            await engine.DisposeAsync();
            engine = await StorageEngine.OpenAsync(devices, new StorageEngineOptions { ReadOnly = true });
            pool = await engine.OpenPoolAsync("p");
        }
        var metrics = new StrataMetrics(() => (0, 0, 0), () => 1);
        // As in the daemon: the Prometheus exporter listens to every measurement.
        var exporter = new PrometheusExporter(StrataMetrics.MeterName);
        var catalog = new NbdExportCatalog(engine, async Task<IImageIo> (p, c, i) =>
            new MeteredImage((await engine.OpenPoolAsync(p)).OpenImage(c, i), metrics));
        var listener = tcp ? NbdListenerAddress.Loopback(0) : NbdListenerAddress.Unix(Path.Combine(dir, "nbd.sock"));
        var server = NbdServer.Start([listener with { Tls = tls ?? NbdTlsSettings.Disabled }], catalog, options);
        return new InProcessNbd(dir, devices, engine, pool, metrics, exporter, server);
    }

    public Task<RawNbdClient> ConnectAsync() => RawNbdClient.ConnectUnixAsync(SocketPath);

    public Task<RawNbdClient> OpenAsync(string export = Export, bool structured = true, string? metaContext = null) =>
        RawNbdClient.OpenAsync(ConnectAsync, export, structured, metaContext);

    /// <summary>Waits (bounded, never asserting a time) until the server has closed every connection.</summary>
    public async Task WaitNoConnectionsAsync()
    {
        for (int i = 0; i < 600 && Server.ConnectionCount > 0; i++)
            await Task.Delay(50);
        Assert.AreEqual(0, Server.ConnectionCount, "connections still open after 30 s");
    }

    public async ValueTask DisposeAsync()
    {
        // Bounded: a server whose stop hangs (a connection that never drains) fails its test instead of the run.
        var stop = Server.DisposeAsync().AsTask();
        if (await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(60))) != stop)
            throw new AssertFailedException($"the NBD server did not stop within 60 s: {Server.ConnectionCount} connection(s) still open");
        await stop;
        await Engine.DisposeAsync();
        _exporter.Dispose();
        Metrics.Dispose();
        foreach (var d in Devices)
            await d.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }
}
