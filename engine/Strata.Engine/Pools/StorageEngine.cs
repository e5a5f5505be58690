using Strata.Engine.Device;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>Engine-wide options.</summary>
public sealed record StorageEngineOptions
{
    public IRasSink Ras { get; init; } = NullRasSink.Instance;

    /// <summary>Never write: no rollback of half-created pools, pools open read-only.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>The layout catalog this engine runs with (a truncated one plays an older release).</summary>
    public Layout.LayoutCatalog Catalog { get; init; } = Layout.LayoutCatalog.Default;

    /// <summary>The actions the upgrade job runs for the catalog's features.</summary>
    public Migration.UpgradeActionBindings Actions { get; init; } = Migration.UpgradeActionBindings.Default;

    /// <summary>Tests only: a pause before each upgrade step, so a kill can land mid-job.</summary>
    public TimeSpan UpgradeStepDelay { get; init; }

    /// <summary>Tests: the upgrade job waits before its Nth step (1-based, counted per run) until the pool closes; 0 = never.</summary>
    public int UpgradeHoldAtStep { get; init; }

    /// <summary>
    /// Writeback writes (Image.WriteAsync with durable false) are made durable at most this long after
    /// they were acknowledged, if no flush came sooner; <see cref="Timeout.InfiniteTimeSpan"/>: only by a
    /// flush (the crash tests, whose seeds must not depend on timing).
    /// </summary>
    public TimeSpan WritebackFlushInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Small writeback writes into durable chunks of at least this many bytes are deferred writes (logged, answered,
    /// then written in place after their round's flush: docs/format.md, "Deferred writes", item 9) instead of
    /// copies on write; durable ones always are at layout 6. Null (the default): <see cref="AutoDeferWritebackFrom"/>
    /// on pools whose targets all bypass the page cache (O_DIRECT files, block devices, SPDK), where a copy on write
    /// reads the chunk from the device; never on others, where the copy costs only CPU and the deferred write's
    /// flush costs more (perf/README.md, "Session 25"). int.MaxValue: never.
    /// </summary>
    public int? DeferWritebackFromChunkSize { get; init; }

    /// <summary>The chunk size from which <see cref="DeferWritebackFromChunkSize"/>'s default defers writeback writes on targets without a page cache.</summary>
    public const int AutoDeferWritebackFrom = 128 * 1024;

    /// <summary>
    /// Data read and write errors on one target after which the engine excludes it by itself (as
    /// `storage exclude-target N --force`: its pools rebuild onto the others); 0 (the default of the
    /// library; the daemon uses <see cref="DefaultExcludeAfterErrors"/>) = never.
    /// </summary>
    public int ExcludeAfterErrors { get; init; }

    public const int DefaultExcludeAfterErrors = 16;

    /// <summary>
    /// A target whose device fails a log write, a flush or a replica write leaves the pool (it is
    /// excluded, and the pool rebuilds) when every chunk keeps a copy without it and another target
    /// carries the log (PoolLog.TryDropShard); false: the write fails, and a failed log write or flush
    /// makes the pool read-only, as on a pool with one target.
    /// </summary>
    public bool DropTargetOnWriteError { get; init; } = true;
}

/// <summary>What `pool list` shows.</summary>
public sealed record PoolInfo(string Label, Guid Id, uint LayoutVersion, long DataBytesPerTarget, int Targets, string State);

/// <summary>
/// The targets an engine owns and the pools carved from them. Devices stay
/// owned by the caller. Opening validates everything read-only first; the only
/// write at open is rolling back a pool whose creation or destruction a crash
/// interrupted (present on some targets only).
/// </summary>
public sealed partial class StorageEngine : IAsyncDisposable
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private readonly List<PoolEntry> _pools = new();

    private StorageEngine(Target[] targets, StorageEngineOptions options)
    {
        _targets = targets;
        Options = options;
        Barrier = new EngineBarrier(this);
    }

    /// <summary>`system barrier freeze / thaw / stat`.</summary>
    public EngineBarrier Barrier { get; }

    /// <summary>The targets, by index; replaced (never changed in place) when a target is added.</summary>
    public IReadOnlyList<Target> Targets => Volatile.Read(ref _targets);

    private Target[] _targets;

    public StorageEngineOptions Options { get; }

    public IRasSink Ras => Options.Ras;

    public Layout.LayoutCatalog Catalog => Options.Catalog;

    /// <summary>
    /// Writes fresh target superblocks (both copies) to every device, which destroys
    /// the pools on it. A device that already is a Strata target is refused unless force is set.
    /// </summary>
    public static async Task<StorageEngine> FormatAsync(IReadOnlyList<IBlockDevice> devices, StorageEngineOptions? options = null, bool force = false)
    {
        options ??= new StorageEngineOptions();
        if (devices.Count == 0)
            throw new InvalidRequestException("an engine needs at least one target device");
        if (!force)
        {
            foreach (var d in devices)
            {
                if (d.Geometry.Capacity < 2 * HeaderCopies.CopySize)
                    continue;
                var existing = await HeaderCopies.ReadAsync<TargetSuperblock>(d, 0, TargetSuperblock.Decode, s => s.Generation).ConfigureAwait(false);
                if (existing.Best != null)
                    throw new BusyException($"device '{d.Name}' already is target {existing.Best.TargetIndex} of engine {existing.Best.EngineId} with {existing.Best.Extents.Count} pool shard(s); format with force to destroy them");
            }
        }
        var engineId = Guid.NewGuid();
        var targets = new Target[devices.Count];
        for (int i = 0; i < devices.Count; i++)
        {
            var d = devices[i];
            if (d.Geometry.Capacity < TargetSuperblock.ReservedBytes * 2)
                throw new InvalidRequestException($"device '{d.Name}' has {d.Geometry.Capacity} bytes; a target needs at least {TargetSuperblock.ReservedBytes * 2}");
            if (HeaderCopies.CopySize % d.Geometry.LogicalBlockSize != 0)
                throw new InvalidRequestException($"device '{d.Name}' has {d.Geometry.LogicalBlockSize}-byte blocks; targets need blocks dividing 4096");
            var sb = new TargetSuperblock
            {
                Generation = 1,
                EngineId = engineId,
                TargetId = Guid.NewGuid(),
                TargetIndex = i,
                TargetCount = devices.Count,
                Capacity = d.Geometry.Capacity,
            };
            // Both copies, so a stale superblock of an earlier format can never win.
            await HeaderCopies.WriteAsync(d, 0, 1, sb.Encode()).ConfigureAwait(false);
            sb.Generation = 2;
            await HeaderCopies.WriteAsync(d, 0, 2, sb.Encode()).ConfigureAwait(false);
            targets[i] = new Target(d, sb);
        }
        return new StorageEngine(targets, options);
    }

    /// <summary>Opens formatted devices (in any order); refuses foreign, mixed or truncated devices.</summary>
    public static async Task<StorageEngine> OpenAsync(IReadOnlyList<IBlockDevice> devices, StorageEngineOptions? options = null)
    {
        options ??= new StorageEngineOptions();
        if (devices.Count == 0)
            throw new InvalidRequestException("an engine needs at least one target device");
        var found = new List<Target>();
        var unread = new List<(IBlockDevice Device, Interop.DeviceException Error)>();
        foreach (var d in devices)
        {
            if (d.Geometry.Capacity < 2 * HeaderCopies.CopySize)
                throw new CorruptMetadataException($"device '{d.Name}' is truncated: {d.Geometry.Capacity} bytes cannot hold a target superblock");
            HeaderCopies.ReadResult<TargetSuperblock> r;
            try
            {
                r = await HeaderCopies.ReadAsync<TargetSuperblock>(d, 0, TargetSuperblock.Decode, s => s.Generation).ConfigureAwait(false);
            }
            catch (Interop.DeviceException e)
            {
                unread.Add((d, e)); // a dead disk: which target it is follows from the others (below)
                continue;
            }
            if (r.Best == null)
                throw new CorruptMetadataException($"device '{d.Name}' is not a Strata target (or both superblock copies are damaged): copy A: {r.Problems[0]}; copy B: {r.Problems[1]}");
            for (int c = 0; c < 2; c++)
                if (r.Problems[c] != null)
                    options.Ras.Emit(new RasEvent(RasIds.HeaderCopyBad, RasSeverity.Warning, RasType.InfoOnly,
                        $"target superblock copy {HeaderCopies.CopyName(c)} on '{d.Name}' is invalid ({r.Problems[c]}); using copy {HeaderCopies.CopyName(r.BestCopy)}",
                        Target: r.Best.TargetIndex, Device: d.Name));
            if (d.Geometry.Capacity < r.Best.Capacity)
                throw new CorruptMetadataException($"device '{d.Name}' is truncated: it has {d.Geometry.Capacity} bytes, the target was formatted with {r.Best.Capacity}");
            found.Add(new Target(d, r.Best));
        }
        if (found.Count == 0)
            throw new CorruptMetadataException($"no target superblock can be read ({string.Join("; ", unread.Select(u => u.Error.Message))}); the engine cannot start");
        var first = found[0].Superblock;
        foreach (var t in found)
        {
            if (t.Superblock.EngineId != first.EngineId)
                throw new CorruptMetadataException($"device '{t.Device.Name}' belongs to engine {t.Superblock.EngineId}, device '{found[0].Device.Name}' to engine {first.EngineId}; wrong device?");
            // A smaller count on a target added before: an add-target interrupted after the new target was
            // written and recorded (AddTargetAsync); the count is finished below.
            bool addInterrupted = t.Superblock.TargetCount < devices.Count && t.Superblock.TargetCount > t.Superblock.TargetIndex
                && found.Any(o => o.Superblock.TargetCount == devices.Count);
            if (t.Superblock.TargetCount != devices.Count && !addInterrupted)
                throw new CorruptMetadataException($"device '{t.Device.Name}' is target {t.Superblock.TargetIndex} of {t.Superblock.TargetCount}, but {devices.Count} devices were given");
        }
        var ordered = new Target[devices.Count];
        foreach (var t in found)
        {
            if (t.Index < 0 || t.Index >= ordered.Length || ordered[t.Index] != null)
                throw new CorruptMetadataException($"device '{t.Device.Name}' claims target index {t.Index}, which is out of range or taken by another device");
            ordered[t.Index] = t;
        }
        if (unread.Count > 0)
            PlaceUnread(ordered, unread, first.EngineId, options);
        var engine = new StorageEngine(ordered, options);
        if (!options.ReadOnly)
            await engine.FinishTargetCountAsync().ConfigureAwait(false);
        await engine.LoadPoolsAsync().ConfigureAwait(false);
        return engine;
    }

    /// <summary>
    /// A device whose superblock cannot be read (it fails its I/O) is the one target index no readable
    /// device claims: the engine starts with it (<see cref="Target.Unread"/>), so that pools which
    /// exclude it open without it (docs/operations.md, "Losing a target"). With more than one such
    /// device, or no free index, which is which cannot be told: refused.
    /// </summary>
    private static void PlaceUnread(Target?[] ordered, List<(IBlockDevice Device, Interop.DeviceException Error)> unread, Guid engineId, StorageEngineOptions options)
    {
        var missing = Enumerable.Range(0, ordered.Length).Where(i => ordered[i] == null).ToList();
        string what = string.Join("; ", unread.Select(u => u.Error.Message));
        if (unread.Count != 1 || missing.Count != 1)
            throw new CorruptMetadataException($"{unread.Count} device(s) cannot be read ({what}); the engine cannot tell which target each is and does not start");
        var (device, error) = unread[0];
        int index = missing[0];
        ordered[index] = Target.Unread(device, engineId, index, ordered.Length, error.Message);
        options.Ras.Emit(new RasEvent(RasIds.TargetUnreadable, RasSeverity.Error, RasType.StateChange,
            $"target {index} ('{device.Name}') cannot be read ({error.Message}); the engine starts without it: only pools that exclude it open",
            Target: index, Device: device.Name));
    }

    public IReadOnlyList<PoolInfo> ListPools()
    {
        lock (_pools)
            return _pools.Select(p => p.Info()).ToList();
    }

    /// <summary>
    /// Whether an open pool keeps a shard on target <paramref name="target"/> that it does not exclude:
    /// what a flush of that device at close protects. A target every open pool excludes (dropped after
    /// a failed write, or excluded by the operator) holds nothing they rely on, so a device there that
    /// fails its flush at a hot swap or a stop loses nothing (EngineService.CloseStorageAsync).
    /// </summary>
    public bool TargetInUse(int target)
    {
        lock (_pools)
            return _pools.Any(p => p.Open is { } o && target < p.Extents.Length && !o.IsExcluded(target));
    }

    /// <summary>The pools open now (what the Meter's upgrade gauges report on).</summary>
    public IReadOnlyList<Pool> OpenPools()
    {
        lock (_pools)
            return _pools.Where(p => p.Open != null).Select(p => p.Open!).ToList();
    }

    internal PoolEntry FindEntry(string label)
    {
        lock (_pools)
            return _pools.FirstOrDefault(p => p.Label == label) ?? throw new NotFoundException($"no pool {UserText.Quote(label)}");
    }

    public async ValueTask DisposeAsync()
    {
        await StopMigrationJobsAsync().ConfigureAwait(false);
        List<Pool> open;
        lock (_pools)
            open = _pools.Where(p => p.Open != null).Select(p => p.Open!).ToList();
        foreach (var p in open)
            await p.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>A pool as the engine knows it from superblocks and shard headers.</summary>
    internal sealed class PoolEntry
    {
        public Guid Id { get; init; }
        /// <summary>The pool's shard on each of its targets (targets 0..n-1; a pool created before a target was added is not on it until extended).</summary>
        public ShardExtent[] Extents { get; set; } = [];
        public ShardHeader? Header { get; set; }
        public string Label { get; set; } = "";
        public string? Problem { get; set; }
        public Pool? Open { get; set; }

        /// <summary>Targets whose damaged shard header has been reported (pool_header_damaged), so a retried open does not repeat it.</summary>
        public HashSet<int> ReportedDamage { get; } = new();

        public PoolInfo Info() => new(Label, Id, Open?.LayoutVersion ?? Header?.LayoutVersion ?? 0, Header?.DataLength ?? 0, Extents.Length,
            Problem ?? (Open == null ? "closed" : Open.State.ToString().ToLowerInvariant()));
    }
}
