using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>Barrier states, named as Lustre's `lctl barrier_stat` names them.</summary>
public enum BarrierState { Thawed, Freezing, Frozen, Thawing, Expired, Failed }

/// <summary>What `strata system barrier stat` shows.</summary>
/// <param name="Pools">The pools frozen (or being frozen); empty when none is.</param>
/// <param name="Pool">The pool named by --pool; null when the barrier covers every pool.</param>
/// <param name="Reason">Why the last barrier failed or expired.</param>
public sealed record BarrierStatus(BarrierState State, string? Pool, IReadOnlyList<string> Pools, DateTimeOffset? Since,
    DateTimeOffset? Expires, double? SecondsLeft, int Clients, int HeldRequests, string? Reason);

/// <summary>
/// The engine's barrier (Lustre's barrier_freeze / thaw / stat): every pool it covers holds new
/// image operations at its gate (held, not failed: an NBD request waits and is answered after the
/// thaw), lets the ones in flight finish, flushes so everything acknowledged is durable, and
/// refuses metadata changes naming the barrier. A barrier that is not thawed expires by itself at
/// its timeout (RAS barrier_expired) and thaws. One barrier at a time; freeze and thaw take turns.
/// </summary>
public sealed class EngineBarrier
{
    /// <summary>The longest a barrier may hold clients before it expires by itself.</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromHours(1);

    private readonly StorageEngine _engine;
    private readonly SemaphoreSlim _turn = new(1, 1);
    private readonly Lock _sync = new();
    private BarrierState _state = BarrierState.Thawed;
    private List<Pool> _pools = [];
    private string? _only;
    private DateTimeOffset? _since;
    private DateTimeOffset? _expires;
    private string? _reason;
    private CancellationTokenSource? _expiry;
    private volatile bool _stopping;

    internal EngineBarrier(StorageEngine engine) => _engine = engine;

    public BarrierState State
    {
        get
        {
            lock (_sync)
                return _state;
        }
    }

    /// <summary>Freezes every open, writable pool, or the one named. Returns once they are frozen.</summary>
    public async Task<BarrierStatus> FreezeAsync(TimeSpan timeout, string? pool = null)
    {
        if (timeout <= TimeSpan.Zero || timeout > MaxTimeout)
            throw new InvalidRequestException(string.Create(CultureInfo.InvariantCulture,
                $"barrier timeout {timeout.TotalSeconds:0.###} s is out of range: more than 0 and at most {MaxTimeout.TotalSeconds:0} s"));
        await _turn.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (_sync)
                if (_state is BarrierState.Frozen)
                    throw new BusyException($"a barrier is already frozen ({Describe()}); thaw it first ('strata system barrier thaw')");
            List<Pool> pools;
            if (pool != null)
            {
                pools = [await _engine.OpenPoolAsync(pool).ConfigureAwait(false)];
            }
            else
            {
                pools = [];
                foreach (var p in _engine.ListPools().Where(p => p.State == "ready"))
                    pools.Add(await _engine.OpenPoolAsync(p.Label).ConfigureAwait(false));
            }
            // A migration's source pool first: its writes in flight reach the destination before that closes.
            pools = _engine.SourcesFirst(pools);
            var since = DateTimeOffset.UtcNow;
            var expires = since + timeout;
            lock (_sync)
            {
                _state = BarrierState.Freezing;
                _pools = pools;
                _only = pool;
                _since = since;
                _expires = expires;
                _reason = null;
            }
            string reason = string.Create(CultureInfo.InvariantCulture,
                $"is frozen by a barrier (since {since:HH:mm:ss}Z, expires at {expires:HH:mm:ss}Z); metadata changes are refused until 'strata system barrier thaw' or the expiry");
            var frozen = new List<Pool>();
            try
            {
                foreach (var p in pools)
                {
                    await p.FreezeAsync(reason, CancellationToken.None).ConfigureAwait(false);
                    frozen.Add(p);
                }
            }
            catch (Exception e) when (e is StoreException or ObjectDisposedException)
            {
                foreach (var p in frozen)
                    p.Thaw();
                lock (_sync)
                {
                    _state = BarrierState.Failed;
                    _reason = e.Message;
                    _pools = [];
                }
                _engine.Ras.Emit(new RasEvent(RasIds.BarrierFailed, RasSeverity.Warning, RasType.StateChange,
                    $"barrier freeze failed and was undone: {e.Message}"));
                throw;
            }
            var expiry = new CancellationTokenSource();
            lock (_sync)
            {
                _state = BarrierState.Frozen;
                _expiry = expiry;
            }
            if (_stopping)
            {
                // The engine began stopping while the pools froze: nothing may stay held.
                ThawPools(BarrierState.Thawed, "the engine stopped");
                throw new BusyException("the engine is stopping; the barrier was thawed");
            }
            _ = ExpireAsync(expiry, expires - DateTimeOffset.UtcNow);
            _engine.Ras.Emit(new RasEvent(RasIds.BarrierFrozen, RasSeverity.Notice, RasType.StateChange,
                string.Create(CultureInfo.InvariantCulture, $"barrier frozen: {Scope(pool)}, {pools.Count} pool(s), expires at {expires:O}")));
            return Status();
        }
        finally
        {
            _turn.Release();
        }
    }

    /// <summary>Thaws the frozen barrier: metadata changes are accepted and held operations go on.</summary>
    public async Task<BarrierStatus> ThawAsync()
    {
        await _turn.WaitAsync().ConfigureAwait(false);
        try
        {
            lock (_sync)
                if (_state != BarrierState.Frozen)
                    throw new InvalidRequestException($"no barrier is frozen (state {Name(_state)}); nothing to thaw");
            ThawPools(BarrierState.Thawed, null);
            _engine.Ras.Emit(new RasEvent(RasIds.BarrierThawed, RasSeverity.Notice, RasType.StateChange, "barrier thawed"));
            return Status();
        }
        finally
        {
            _turn.Release();
        }
    }

    /// <summary>The engine is stopping: thaws whatever is frozen (no error when nothing is), and any freeze still under way thaws when it ends.</summary>
    public void ThawForStop()
    {
        _stopping = true;
        lock (_sync)
            if (_state != BarrierState.Frozen)
                return;
        ThawPools(BarrierState.Thawed, "the engine stopped");
    }

    private async Task ExpireAsync(CancellationTokenSource expiry, TimeSpan after)
    {
        try
        {
            await Task.Delay(after > TimeSpan.Zero ? after : TimeSpan.Zero, expiry.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        await _turn.WaitAsync().ConfigureAwait(false);
        try
        {
            string described;
            lock (_sync)
            {
                if (_state != BarrierState.Frozen || _expiry != expiry)
                    return;
                described = Describe();
            }
            ThawPools(BarrierState.Expired, "its timeout passed without a thaw");
            _engine.Ras.Emit(new RasEvent(RasIds.BarrierExpired, RasSeverity.Warning, RasType.StateChange,
                $"barrier expired ({described}) without a thaw; the pools are thawed and held requests answered"));
        }
        finally
        {
            _turn.Release();
        }
    }

    private void ThawPools(BarrierState to, string? reason)
    {
        List<Pool> pools;
        lock (_sync)
        {
            _state = BarrierState.Thawing;
            pools = _pools;
            _expiry?.Cancel();
            _expiry = null;
        }
        foreach (var p in pools)
            p.Thaw();
        lock (_sync)
        {
            _state = to;
            _pools = [];
            _reason = reason;
        }
    }

    public BarrierStatus Status()
    {
        List<Pool> pools;
        BarrierStatus s;
        lock (_sync)
        {
            pools = _pools;
            double? left = _state is BarrierState.Frozen or BarrierState.Freezing && _expires is { } e
                ? Math.Max(0, (e - DateTimeOffset.UtcNow).TotalSeconds) : null;
            s = new BarrierStatus(_state, _only, pools.Select(p => p.Label).ToList(), _since, _expires, left, 0, 0, _reason);
        }
        return s with
        {
            Clients = pools.Sum(p => p.ListClients().Count),
            HeldRequests = pools.Sum(p => p.HeldRequests),
        };
    }

    /// <summary>
    /// Refuses a pool-level metadata change (create, destroy) the frozen barrier covers: every pool
    /// when it froze all, else the pool it froze (<paramref name="pool"/> null: a new pool).
    /// </summary>
    internal void ThrowIfFrozen(string? pool)
    {
        lock (_sync)
        {
            if (_state != BarrierState.Frozen || (_only != null && _only != pool))
                return;
            throw new BusyException($"{(pool == null ? "a new pool" : $"pool '{pool}'")} cannot be {(pool == null ? "created" : "destroyed")}: a barrier is frozen ({Describe()}); run 'strata system barrier thaw' first");
        }
    }

    /// <summary>The name the CLI and API print: frozen, thawed, expired, ...</summary>
    public static string Name(BarrierState s) => s.ToString().ToLowerInvariant();

    private string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"{Scope(_only)}, frozen since {_since:HH:mm:ss}Z, expires at {_expires:HH:mm:ss}Z");

    private static string Scope(string? only) => only == null ? "every pool" : $"pool '{only}'";
}
