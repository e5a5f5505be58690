using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Nbd;

/// <summary>An image opened for one NBD connection (or one NBD_OPT_INFO answer).</summary>
public sealed class NbdExport
{
    internal NbdExport(string name, string pool, string container, string image, IImageIo io)
    {
        Name = name;
        PoolLabel = pool;
        Container = container;
        ImageLabel = image;
        // A request's continuation only queues its reply, so it may run on the device poller: saves a thread hop per I/O.
        Io = io.WithInlineContinuations();
        ReadOnly = io.Image.Pool.State == PoolStatus.ReadOnly;
        Size = io.Size;
        ChunkSize = io.ChunkSize;
    }

    /// <summary>"pool/container/image".</summary>
    public string Name { get; }

    public string PoolLabel { get; }

    public string Container { get; }

    public string ImageLabel { get; }

    /// <summary>The image through the daemon's metered seam (every data path is counted alike), completing inline.</summary>
    public IImageIo Io { get; }

    public Pool Pool => Io.Image.Pool;

    public bool ReadOnly { get; }

    /// <summary>Size when opened: what the handshake announces and requests are checked against.</summary>
    public long Size { get; }

    public int ChunkSize { get; }

    /// <summary>
    /// Honest transmission flags: a write without FUA is writeback (visible to every connection at
    /// once, durable at the next FLUSH), a write with FUA is durable when answered, and a FLUSH on
    /// any connection makes every write answered before it durable, pool-wide (so CAN_MULTI_CONN holds;
    /// docs/nbd.md, "Several connections"). FAST_ZERO: a WRITE_ZEROES that may leave a hole is a trim;
    /// one with NO_HOLE writes zeroes, and with FAST_ZERO is refused at once (NBD_ENOTSUP).
    /// </summary>
    public ushort TransmissionFlags => ReadOnly
        ? (ushort)(NbdProtocol.FlagHasFlags | NbdProtocol.FlagReadOnly | NbdProtocol.FlagSendFlush | NbdProtocol.FlagCanMultiConn)
        : (ushort)(NbdProtocol.FlagHasFlags | NbdProtocol.FlagSendFlush | NbdProtocol.FlagSendFua | NbdProtocol.FlagSendTrim
            | NbdProtocol.FlagSendWriteZeroes | NbdProtocol.FlagCanMultiConn | NbdProtocol.FlagSendFastZero);

    public string Description =>
        $"Strata image {Name}: {Size} bytes, {ChunkSize}-byte chunks{(ReadOnly ? ", read-only (pool is read-only)" : "")}";
}

/// <summary>
/// The exports the NBD server offers: every image of every open pool, named
/// "pool/container/image". Images are opened through the caller's seam (the daemon's
/// EngineService.OpenImageIoAsync), never directly, so NBD I/O is metered like every other path.
/// </summary>
public sealed class NbdExportCatalog(StorageEngine engine, Func<string, string, string, Task<IImageIo>> open)
{
    /// <summary>Splits "pool/container/image"; false for anything else (empty parts, more or fewer slashes).</summary>
    public static bool TryParseName(string name, out string pool, out string container, out string image)
    {
        pool = container = image = "";
        var parts = name.Split('/');
        if (parts.Length != 3 || parts.Any(p => p.Length == 0 || p.Length > Labels.MaxLength))
            return false;
        (pool, container, image) = (parts[0], parts[1], parts[2]);
        return true;
    }

    /// <summary>Every image of every pool that is open (ready or read-only), sorted.</summary>
    public async Task<IReadOnlyList<string>> ListAsync()
    {
        var names = new List<string>();
        foreach (var p in engine.ListPools())
        {
            if (p.State is not ("ready" or "readonly"))
                continue;
            try
            {
                var pool = await engine.OpenPoolAsync(p.Label).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
                foreach (var c in pool.ListContainers())
                    foreach (var i in pool.ListImages(c.Label))
                        names.Add($"{p.Label}/{c.Label}/{i.Label}");
            }
            catch (Exception e) when (e is StoreException or ObjectDisposedException)
            {
                // A pool closed or removed meanwhile: it has no exports now.
            }
        }
        names.Sort(StringComparer.Ordinal);
        return names;
    }

    /// <summary>Opens an export; null when no image has that name. Other failures (a damaged pool) throw.</summary>
    public async Task<NbdExport?> OpenAsync(string name)
    {
        if (!TryParseName(name, out var pool, out var container, out var image))
            return null;
        try
        {
            var io = await open(pool, container, image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            return new NbdExport(name, pool, container, image, io);
        }
        catch (NotFoundException)
        {
            // A migrated image's old name resolves to its destination until the operator removes the alias.
            if (engine.ResolveAlias(name) is not { } to)
                return null;
            try
            {
                var io = await open(to.Pool, to.Container, to.Image).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
                return new NbdExport(name, to.Pool, to.Container, to.Image, io);
            }
            catch (NotFoundException)
            {
                return null;
            }
        }
    }
}
