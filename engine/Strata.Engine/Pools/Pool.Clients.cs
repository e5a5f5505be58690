using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>A data-path client of a pool as `pool clients` shows it.</summary>
/// <param name="Image">"container/image".</param>
public sealed record PoolClientInfo(long Id, string Kind, string Image, string Peer, DateTimeOffset Since);

/// <summary>
/// One client's registration on a pool (an NBD connection, later others): it holds the image
/// open until disposed. Disposing twice is harmless.
/// </summary>
public sealed class PoolClient : IDisposable, IAsyncDisposable
{
    private readonly Pool _pool;
    private readonly Func<string, ValueTask> _revoke;
    private readonly TaskCompletionSource _gone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal PoolClient(Pool pool, long id, string kind, string image, string peer, Func<string, ValueTask> revoke)
    {
        _pool = pool;
        _revoke = revoke;
        Info = new PoolClientInfo(id, kind, image, peer, DateTimeOffset.Now);
    }

    public PoolClientInfo Info { get; }

    /// <summary>Completes when the registration is disposed (the client has gone).</summary>
    public Task Gone => _gone.Task;

    internal ValueTask RevokeAsync(string reason) => _revoke(reason);

    public void Dispose()
    {
        _pool.Unregister(this);
        _gone.TrySetResult();
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// The pool's registry of data-path clients: who holds which image open. An image with
/// clients cannot be removed; <see cref="RevokeClientsAsync"/> is how pool-wide operations
/// (upgrade, migration) make every client let go first.
/// </summary>
public sealed partial class Pool
{
    private readonly Dictionary<long, PoolClient> _clients = new();

    /// <summary>
    /// Records a client holding <paramref name="image"/> ("container/image") open, under the id its
    /// own logs use (the NBD server's connection id), so `pool clients`, refusals naming clients and
    /// the log lines agree. The revoke callback must make the client go (finish or fail its in-flight
    /// requests, disconnect, then dispose the registration) and may return before it has gone.
    /// </summary>
    public PoolClient RegisterClient(long id, string kind, string image, string peer, Func<string, ValueTask> revoke)
    {
        ArgumentNullException.ThrowIfNull(revoke);
        ObjectDisposedException.ThrowIf(_closed, this);
        lock (_clients)
        {
            var c = new PoolClient(this, id, kind, image, peer, revoke);
            if (!_clients.TryAdd(id, c))
                throw new InvalidOperationException($"client {id} is already registered on pool '{Label}'");
            return c;
        }
    }

    internal void Unregister(PoolClient client)
    {
        lock (_clients)
            _clients.Remove(client.Info.Id);
    }

    public IReadOnlyList<PoolClientInfo> ListClients()
    {
        lock (_clients)
            return _clients.Values.Select(c => c.Info).OrderBy(c => c.Id).ToList();
    }

    /// <summary>
    /// Asks every registered client to go, with a reason they may pass on, and waits until each has
    /// disposed its registration. Returns how many clients there were. Clients that register while
    /// this runs are not waited for.
    /// </summary>
    public async Task<int> RevokeClientsAsync(string reason)
    {
        List<PoolClient> clients;
        lock (_clients)
            clients = _clients.Values.ToList();
        // All at once: each client finishes its in-flight requests in parallel with the others.
        await Task.WhenAll(clients.Select(c => RevokeOneAsync(c, reason))).ConfigureAwait(false);
        await Task.WhenAll(clients.Select(c => c.Gone)).ConfigureAwait(false);
        return clients.Count;
    }

    private static async Task RevokeOneAsync(PoolClient client, string reason)
    {
        try
        {
            await client.RevokeAsync(reason).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The client is going anyway (its connection broke); its registration is awaited after.
        }
    }

    /// <summary>Refuses an operation that would pull an image from under its clients (image remove).</summary>
    internal void ThrowIfImageHasClients(string container, string label)
    {
        string key = container + "/" + label;
        List<PoolClientInfo> open;
        lock (_clients)
            open = _clients.Values.Select(c => c.Info).Where(c => c.Image == key).ToList();
        if (open.Count > 0)
            throw new BusyException($"image '{label}' in pool '{Label}' container '{container}' is open by {open.Count} client(s) "
                + $"({string.Join(", ", open.Select(c => $"{c.Kind} {c.Peer}"))}); disconnect them first");
    }
}
