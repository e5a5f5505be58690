using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

public enum PoolStatus { Ready, ReadOnly, Closed }

/// <summary>Space of one target as `pool query` shows it.</summary>
public sealed record TargetSpace(int Target, string Device, long TotalBytes, long UsedBytes, long FreeBytes);

/// <summary>What `pool query` shows.</summary>
public sealed record PoolQueryResult(string Label, Guid Id, uint LayoutVersion, ulong Compat, ulong RoCompat, ulong Incompat,
    PoolStatus Status, string? ReadOnlyReason, int Rf, int Containers, int Images, IReadOnlyList<TargetSpace> Targets)
{
    /// <summary>The running or last data-moving job other than an upgrade since the pool opened (extend), or null.</summary>
    public PoolJobStatus? Job { get; init; }

    /// <summary>Excluded targets and what they leave of the data (health ok, degraded or rebuilding).</summary>
    public PoolDegradation? Redundancy { get; init; }

    /// <summary>The running or last reintegration since the pool opened (its check's progress, or why it failed), or null.</summary>
    public PoolReintegrationStatus? Reintegration { get; init; }

    /// <summary>Every operation running now (extension, rebuild, reintegration, replication, migration, upgrade).</summary>
    public IReadOnlyList<string> Running { get; init; } = [];

    /// <summary>Data bytes over every target (pool list and pool query show the same sums).</summary>
    public long TotalBytes => Targets.Sum(t => t.TotalBytes);

    public long UsedBytes => Targets.Sum(t => t.UsedBytes);

    public long FreeBytes => Targets.Sum(t => t.FreeBytes);
}

/// <summary>
/// An open pool: its shards on every target, the replicated metadata log and
/// the state it rebuilds. Metadata changes are serialized by one lock (they
/// validate against the state and must not race); image I/O is not.
/// </summary>
public sealed partial class Pool : IAsyncDisposable
{
    private readonly StorageEngine _engine;
    private readonly StorageEngine.PoolEntry _entry;
    private readonly Dictionary<uint, ImageLocks> _imageLocks = new();
    private string? _readOnlyReason;
    private bool _failed;
    private bool _closed;

    internal Pool(StorageEngine engine, StorageEngine.PoolEntry entry, Shard[] shards, PoolState state, string? readOnlyReason)
    {
        _engine = engine;
        _entry = entry;
        _shards = shards;
        _bypassesPageCache = BypassesPageCache(shards);
        _placementTargets = shards.Length;
        _excluded = ParseExcluded(state.Props.GetValueOrDefault(ExcludedProp), shards.Length);
        _logShards = [.. shards.Where(s => !_excluded.Contains(s.Index))];
        Meta = state;
        _readOnlyReason = readOnlyReason;
        Header = shards[0].Header;
    }

    /// <summary>The pool's shards, by target; replaced (never changed in place) when an extension adds one (<see cref="JoinShard"/>).</summary>
    internal Shard[] Shards => Volatile.Read(ref _shards);

    private Shard[] _shards;

    private int _placementTargets;

    /// <summary>Called by the log's committer between rounds: the log and checkpoints include the new shard from now on; placement does not yet.</summary>
    internal void JoinShard(Shard shard)
    {
        lock (_shardSet)
            JoinShardLocked(shard);
    }

    private void JoinShardLocked(Shard shard)
    {
        var current = Shards;
        if (shard.Index < current.Length)
        {
            // An excluded target's shard back in the log (a reintegration); reads and placement still skip it.
            System.Diagnostics.Debug.Assert(ReferenceEquals(current[shard.Index], shard) && IsExcluded(shard.Index), "only an excluded shard rejoins");
            Volatile.Write(ref _logShards, [.. LogShards.Append(shard).OrderBy(s => s.Index)]);
            return;
        }
        System.Diagnostics.Debug.Assert(shard.Index == current.Length, "shards join in target order");
        Shard[] joined = [.. current, shard];
        Volatile.Write(ref _bypassesPageCache, BypassesPageCache(joined));
        Volatile.Write(ref _shards, joined);
        Volatile.Write(ref _logShards, [.. LogShards, shard]);
    }

    /// <summary>New replicas may go to every shard: called once the newest shard's target records it durably.</summary>
    internal void PlaceOnAllShards() => Volatile.Write(ref _placementTargets, Shards.Length);

    internal PoolState Meta { get; }

    /// <summary>Where this pool's open spent its time (set once it is open).</summary>
    public PoolOpenTimings? OpenTimings { get; internal set; }

    internal PoolLog Log { get; set; } = null!;

    /// <summary>The single-chunk data path (reads with verification and repair, copy-on-write writes).</summary>
    internal ChunkIo ChunkIo => field ??= new ChunkIo(this);

    /// <summary>Chunk maps client writes reuse instead of allocating (issue 17).</summary>
    internal ChunkMapSpares MapSpares { get; } = new();

    /// <summary>Requests spanning several chunks, in groups under one set of chunk locks.</summary>
    internal ChunkRuns ChunkRuns => field ??= new ChunkRuns(this);

    internal SemaphoreSlim MetaLock { get; } = new(1, 1);

    internal ShardHeader Header { get; }

    internal IRasSink Ras => _engine.Ras;

    public Guid Id => _entry.Id;

    public string Label
    {
        get
        {
            lock (Meta.Sync)
                return Meta.Props["label"];
        }
    }

    /// <summary>The layout the pool is at: the log's once an upgrade switched it, else the headers' (which the log never contradicts otherwise).</summary>
    public uint LayoutVersion
    {
        get
        {
            lock (Meta.Sync)
                return Meta.Layout?.Version ?? Header.LayoutVersion;
        }
    }

    internal PoolGate Gate { get; } = new();

    internal Layout.LayoutCatalog Catalog => _engine.Catalog;

    internal StorageEngineOptions EngineOptions => _engine.Options;

    /// <summary>
    /// The layout fields every header must carry now (caller holds Meta.Sync): the state's
    /// layout, plus incompat bit 62 while a job runs or after one failed in an action that may
    /// have written what older software cannot read.
    /// </summary>
    internal ShardHeaderLayout DurableLayout()
    {
        var l = Meta.Layout;
        var layout = l != null
            ? new ShardHeaderLayout(l.Version, l.Compat, l.RoCompat, l.Incompat)
            : new ShardHeaderLayout(Header.LayoutVersion, Header.Compat, Header.RoCompat, Header.Incompat & ~Layout.LayoutCatalog.IncompatUpgradeInProgress);
        if (UpgradeMayHaveWrittenNewFormat())
            layout = layout with { Incompat = layout.Incompat | Layout.LayoutCatalog.IncompatUpgradeInProgress };
        return layout;
    }

    /// <summary>
    /// The targets placement spreads chunks over (also what shard headers count): every shard, except
    /// while an extension's new shard is joined to the log but not yet recorded in its target's
    /// superblock, when a crash would forget it (docs/operations.md, "Extending a pool").
    /// </summary>
    public int TargetCount => Volatile.Read(ref _placementTargets);

    /// <summary>
    /// Where new replicas go: the placement of the pool's layout (<see cref="Placements.For"/>), or,
    /// from the moment a running upgrade job reaches a data-movement feature (placement_v2), the
    /// placement of that feature's layout, so the move never chases client writes. Read without the state's lock: the layout and the job are immutable records that
    /// records replace; the answer is cached per pair, and a pair not cached is read again under the lock (one state, not a layout
    /// and a job of different moments).
    /// </summary>
    internal IPlacement Placement
    {
        get
        {
            var layout = Meta.Layout;
            var job = Meta.UpgradeJob;
            var excluded = Volatile.Read(ref _excluded);
            var cached = _placement;
            // A hit is a pair that was the state at one instant (only such pairs are cached).
            if (cached != null && ReferenceEquals(cached.Layout, layout) && ReferenceEquals(cached.Job, job) && ReferenceEquals(cached.Excluded, excluded))
                return cached.Placement;
            // A miss reads the pair again under the state's lock: read apart, a layout from before the
            // switch and a job from after its end would place by the old layout after the job (as
            // WritesBlockTables, which answered so once: seed 66 of the layout-3 crash test).
            lock (Meta.Sync)
            {
                layout = Meta.Layout;
                job = Meta.UpgradeJob;
            }
            var placement = Placements.For(layout?.Version ?? Header.LayoutVersion);
            if (job is { State: UpgradeJobState.InProgress } && job.To <= Catalog.Versions.Count)
            {
                var chain = Catalog.Chain(job.From, job.To);
                for (int i = 0; i < chain.Count && i <= job.Action; i++)
                    if (chain[i].Kind == Layout.ActionKind.DataMovement)
                        placement = Placements.For(chain[i].Version);
            }
            if (excluded.Length > 0)
                placement = new ExcludingPlacement(placement, excluded);
            _placement = new PlacementFor(layout, job, excluded, placement);
            return placement;
        }
    }

    private sealed record PlacementFor(LayoutMeta? Layout, UpgradeJobMeta? Job, int[] Excluded, IPlacement Placement);

    private volatile PlacementFor? _placement;

    /// <summary>Verified block tables of this pool's block-checksummed replicas (ChunkIo's small reads).</summary>
    internal BlockTableCache Tables { get; } = new(BlockTableCache.DefaultCapacity);

    /// <summary>
    /// The catalog feature that brings per-block checksums, or null when this engine's catalog has none
    /// (test catalogs that put other features at its version).
    /// </summary>
    private Layout.LayoutFeature? BlockChecksums => field ??= Catalog.Find(BlockChecksumsFeature);

    private Layout.LayoutFeature? DeferredWrites => field ??= Catalog.Find(Layout.LayoutCatalog.DeferredWritesFeature);

    /// <summary>
    /// Whether a small write into a durable chunk with a block table may log its blocks and write them in
    /// place (docs/format.md, "Deferred writes"): the pool's applied layout includes deferred_writes. Read
    /// without the state's lock: the layout only grows, and LayoutSet is applied once its round is durable,
    /// so a yes never puts a ChunkDeferred record in a log an engine of an older layout could open.
    /// </summary>
    internal bool DefersSmallWrites => DeferredWrites is { } f && (Meta.Layout?.Version ?? Header.LayoutVersion) >= f.Version;

    /// <summary>
    /// Writeback writes of chunks at least this large take the deferred path too (durable ones always do);
    /// below it a writeback write copies the chunk on write as before: the engine's option
    /// (StorageEngineOptions.DeferWritebackFromChunkSize) unless a test set it for this pool; by default
    /// StorageEngineOptions.AutoDeferWritebackFrom when every target of the pool bypasses the page cache.
    /// </summary>
    internal int DeferWritebackFromChunkSize
    {
        get => _deferWritebackFrom ?? _engine.Options.DeferWritebackFromChunkSize
            ?? (Volatile.Read(ref _bypassesPageCache) ? StorageEngineOptions.AutoDeferWritebackFrom : int.MaxValue);
        set => _deferWritebackFrom = value;
    }

    /// <summary>
    /// <see cref="BypassesPageCache(Shard[])"/> of <see cref="Shards"/>, set with it (a device's features never change):
    /// read on every small writeback write, where walking the shards each time was work done twice per write.
    /// </summary>
    private bool _bypassesPageCache;

    /// <summary>Whether every target's reads come from the device (O_DIRECT files, block devices, SPDK), not a page cache.</summary>
    private static bool BypassesPageCache(Shard[] shards)
    {
        foreach (var s in shards)
            if ((s.Device.Geometry.Features & Device.DeviceFeatures.DirectIo) == 0)
                return false;
        return true;
    }

    private int? _deferWritebackFrom;

    internal const string BlockChecksumsFeature = "block_checksums";

    /// <summary>
    /// Whether a new copy of a chunk of this size is written with a block table (docs/format.md,
    /// "Per-block checksums"): from the layout of the catalog's block_checksums feature (3) on, and
    /// as soon as a running upgrade job has reached that feature's action, so that the action's scan
    /// never chases client writes. 4 KiB chunks never take one. The caller holds the chunk's lock,
    /// so the scan cannot pass the chunk between this answer and the write's commit.
    /// </summary>
    /// <remarks>
    /// The layout and the job are judged as one state, read under the state's lock: the job's end follows
    /// the layout switch (its own round), so a layout read before the switch and a job read after the end
    /// said "neither", and a client write after the job wrote the old form for good (the crash suite's
    /// seed 66 of Upgrade2To3_CrashAtRandomPointsWithClientWrites: a group write of two chunks whose
    /// writer was descheduled across both rounds).
    /// </remarks>
    internal bool WritesBlockTables(int chunkSize)
    {
        bool yes = JudgeBlockTables(chunkSize);
        FormJudged?.Invoke(yes);
        return yes;
    }

    private bool JudgeBlockTables(int chunkSize)
    {
        if (!ChunkChecksum.TakesTable(chunkSize) || BlockChecksums is not { } feature)
            return false;
        // Without the state's lock first: the layout only ever grows (LayoutSet replaces the record), so
        // a stale read can only send this to the locked read below, never give a wrong yes.
        if ((Meta.Layout?.Version ?? Header.LayoutVersion) >= feature.Version)
            return true;
        BetweenLayoutAndJob?.Invoke();
        UpgradeJobMeta? job;
        lock (Meta.Sync)
        {
            if ((Meta.Layout?.Version ?? Header.LayoutVersion) >= feature.Version)
                return true;
            job = Meta.UpgradeJob;
        }
        if (job is not { State: UpgradeJobState.InProgress } || job.To < feature.Version)
            return false;
        var chain = Catalog.Chain(job.From, job.To);
        for (int i = 0; i < chain.Count; i++)
            if (ReferenceEquals(chain[i], feature))
                return job.Action >= i;
        return false;
    }

    public int Rf
    {
        get
        {
            lock (Meta.Sync)
                return int.Parse(Meta.Props["rf"], CultureInfo.InvariantCulture);
        }
    }

    public PoolStatus State => _closed ? PoolStatus.Closed : _readOnlyReason != null ? PoolStatus.ReadOnly : PoolStatus.Ready;

    public string? ReadOnlyReason => _readOnlyReason;

    public PoolQueryResult Query()
    {
        lock (Meta.Sync)
        {
            var layout = DurableLayout();
            return new PoolQueryResult(Meta.Props["label"], Id, layout.Version, layout.Compat, layout.RoCompat, layout.Incompat,
                State, _readOnlyReason, int.Parse(Meta.Props["rf"], CultureInfo.InvariantCulture), Meta.Containers.Count, Meta.Images.Count,
                Shards.Select(s => new TargetSpace(s.Index, s.Device.Name, s.Allocator.Capacity, s.Allocator.UsedBytes, s.Allocator.FreeBytes)).ToList())
            {
                Job = JobStatus,
                Redundancy = Degradation(),
                Reintegration = ReintegrationStatus,
                Running = RunningOperations,
            };
        }
    }

    /// <summary>Makes the pool read-only for good (until reopened): after a failed log write or flush nothing may claim durability.</summary>
    internal void Fail(Exception e, string what)
    {
        lock (Meta.Sync)
        {
            if (_failed)
                return;
            _failed = true;
            _readOnlyReason = $"{what} failed: {e.Message}";
        }
        Ras.Emit(new RasEvent(RasIds.PoolReadOnly, RasSeverity.Error, RasType.StateChange,
            $"pool '{Label}' is now read-only: {what} failed: {e.Message}", Pool: Label, Device: (e as Interop.DeviceException)?.Device));
    }

    /// <summary>
    /// For callers changing the pool (image writes, metadata): also refuses during an exclusive upgrade
    /// action, while prepared and while a barrier freezes the pool (image writes wait at the gate then).
    /// </summary>
    internal void ThrowIfNotWritable()
    {
        ThrowIfNotLoggable();
        ThrowIfFrozen();
        if (_exclusiveReason is { } x)
            throw new PoolBusyException($"pool '{Label}': {x}");
        if (_preparedReason is { } p)
            throw new PoolReadOnlyException($"pool '{Label}' is read-only: {p}");
    }

    /// <summary>For the log itself (the upgrade job commits while others are refused).</summary>
    internal void ThrowIfNotLoggable()
    {
        ObjectDisposedException.ThrowIf(_closed, this);
        if (_readOnlyReason != null)
            throw new PoolReadOnlyException($"pool '{Label}' is read-only: {_readOnlyReason}");
    }

    /// <summary>Rebuilds every shard's free-space map from the chunk map (the only persistent truth).</summary>
    internal void RebuildAllocators()
    {
        lock (Meta.Sync)
        {
            foreach (var img in Meta.Images.Values)
                foreach (var (index, map) in img.Chunks)
                {
                    int length = map.ExtentLength(img.ChunkSize);
                    foreach (var r in map.Moving == null ? map.Replicas : map.Replicas.Concat(map.Moving))
                        if (r.Target >= Shards.Length || !Shards[r.Target].Allocator.MarkUsed(r.Offset, length))
                            throw new CorruptMetadataException($"pool '{Label}' image '{img.Label}' chunk {index}: extent {r.Offset}+{length} on target {r.Target} is outside the data area or used twice");
                }
        }
    }

    /// <summary>Chunk holds and conditional map switches for actions that move or rewrite chunks while clients do I/O.</summary>
    internal ChunkMover Mover => field ??= new ChunkMover(this);

    internal ImageLocks LocksFor(uint image)
    {
        lock (_imageLocks)
        {
            if (!_imageLocks.TryGetValue(image, out var l))
                _imageLocks[image] = l = new ImageLocks();
            return l;
        }
    }

    /// <summary>
    /// Closes the pool. Everything acknowledged is already durable; a writable pool
    /// also checkpoints, so the next open (possibly by another engine version)
    /// replays no log records.
    /// </summary>
    public ValueTask DisposeAsync() => CloseAsync(checkpoint: true);

    internal async ValueTask CloseAsync(bool checkpoint)
    {
        if (_closed)
            return;
        await StopUpgradeRunnerAsync().ConfigureAwait(false);
        await StopJobRunnerAsync().ConfigureAwait(false);
        if (checkpoint && State == PoolStatus.Ready)
        {
            try
            {
                await Log.CheckpointAsync().ConfigureAwait(false);
            }
            catch (StoreException)
            {
                // Already reported (the pool went read-only); the log still holds everything.
            }
        }
        await Log.StopAsync().ConfigureAwait(false);
        _closed = true;
        _engine.OnPoolClosed(_entry);
    }

    internal void OnLabelChanged(string label) => _entry.Label = label;
}
