using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>Where a pool property's value comes from: its default, a set (at creation or by set-prop), or the engine's computation.</summary>
public enum PoolPropertySource { Default, Set, Computed }

/// <summary>A pool property as `pool get-prop` shows it.</summary>
public sealed record PoolPropertyValue(string Name, string Value, PoolPropertySource Source);

/// <summary>A container as `container list` shows it.</summary>
public sealed record ContainerInfo(uint Id, string Label, int Images, IReadOnlyDictionary<string, string> Properties);

public sealed partial class Pool
{
    /// <summary>
    /// Settable pool properties and the layout feature each belongs to (null: layout 1).
    /// A property of a later layout is refused until the pool reaches it (gating).
    /// </summary>
    private static readonly (string Name, string? Feature)[] PoolProperties =
    [
        ("label", null), ("rf", null), ("compatibility", null), (Migration.MigrateRate.Property, null),
        ("scrub", "pool_props_v2"), ("reclaim", "pool_props_v2"),
    ];

    /// <summary>Properties the engine computes; `set-prop` refuses them.</summary>
    private static readonly string[] ReadOnlyPoolProperties =
        ["layout_version", "upgrade_status", "upgrade_target", "upgrade_progress"];

    public IReadOnlyDictionary<string, string> GetProperties() =>
        GetPropertyValues().ToDictionary(p => p.Name, p => p.Value, StringComparer.Ordinal);

    /// <summary>
    /// Every pool property with where its value comes from (as `zfs get` shows SOURCE): properties the
    /// pool's layout has are listed even when never stored (with their default); a value equal to the
    /// default is Default whether or not it is stored (an upgrade stores the defaults of the properties
    /// it adds, and create stores rf); computed ones are Computed.
    /// </summary>
    public IReadOnlyList<PoolPropertyValue> GetPropertyValues()
    {
        var up = GetUpgradeStatus();
        uint layout = LayoutVersion;
        var result = new List<PoolPropertyValue>();
        lock (Meta.Sync)
        {
            foreach (var (name, feature) in PoolProperties)
            {
                bool stored = Meta.Props.ContainsKey(name);
                if (!stored && feature != null && (Catalog.Find(feature)?.Version ?? uint.MaxValue) > layout)
                    continue;
                string? def = DefaultOf(name);
                string? value = Meta.Props.TryGetValue(name, out var v) ? v : def;
                if (value != null)
                    result.Add(new(name, value, value == def ? PoolPropertySource.Default : PoolPropertySource.Set));
            }
            foreach (var (name, value) in Meta.Props)
                if (!PoolProperties.Any(p => p.Name == name))
                    result.Add(new(name, value, PoolPropertySource.Set));
        }
        result.Add(new("layout_version", layout.ToString(CultureInfo.InvariantCulture), PoolPropertySource.Computed));
        result.Add(new("upgrade_status", up.Reason != null ? $"{up.Status}: {up.Reason}" : up.Status, PoolPropertySource.Computed));
        result.Add(new("upgrade_target", up.Target?.ToString(CultureInfo.InvariantCulture) ?? "none", PoolPropertySource.Computed));
        result.Add(new("upgrade_progress", up.JobId == null ? "none"
            : $"{up.ActionsDone}/{up.ActionsTotal} actions, {up.ItemsDone}/{up.ItemsTotal} items, {up.BytesDone}/{up.BytesTotal} bytes", PoolPropertySource.Computed));
        return result.OrderBy(p => p.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>The value a settable property has until it is set (null: none, the label).</summary>
    private static string? DefaultOf(string name) => name switch
    {
        "rf" => "1",
        "compatibility" => "off",
        Migration.MigrateRate.Property => Migration.MigrateRate.Auto,
        _ => Layout.PoolPropsV2Action.Properties.FirstOrDefault(p => p.Name == name).Default,
    };

    /// <summary>The refusal for a feature the pool's layout does not have yet (Ozone's gated-API message, DAOS's wording).</summary>
    internal void RequireFeature(string feature, string what)
    {
        var f = Catalog.Find(feature) ?? throw new ArgumentException($"no layout feature '{feature}'", nameof(feature));
        uint v = LayoutVersion;
        if (f.Version > v)
            throw new InvalidRequestException($"{what} needs pool layout {f.Version} (pool is at {v}); run 'strata pool upgrade'");
    }

    public string GetProperty(string name) =>
        GetProperties().TryGetValue(name, out var v) ? v : throw new NotFoundException($"pool '{Label}' has no property {UserText.Quote(name)}");

    public async Task SetPropertyAsync(string name, string value)
    {
        if (ReadOnlyPoolProperties.Contains(name))
            throw new InvalidRequestException($"pool property '{name}' is read-only; it changes only through a pool upgrade");
        var known = PoolProperties.FirstOrDefault(p => p.Name == name);
        if (known.Name == null)
            throw new NotFoundException($"pool '{Label}' has no property {UserText.Quote(name)} (settable: {string.Join(", ", PoolProperties.Select(p => p.Name))})");
        if (known.Feature != null)
        {
            RequireFeature(known.Feature, $"pool property '{name}'");
            var values = Layout.PoolPropsV2Action.Properties.First(p => p.Name == name).Values;
            if (!values.Contains(value))
                throw new InvalidRequestException($"pool property '{name}' takes {string.Join(", ", values)}; got '{value}'");
        }
        if (name == "compatibility" && Catalog.CompatibilityLimit(value) == null)
            throw new InvalidRequestException($"compatibility '{value}' is unknown; use off or one of {string.Join(", ", Catalog.Releases.Select(r => r.Name))}");
        if (name == Migration.MigrateRate.Property)
            value = Migration.MigrateRate.Normalize(value);
        if (name == "rf")
        {
            if (value is not ("1" or "2"))
                throw new InvalidRequestException($"rf '{value}' is not supported; use 1 or 2");
            if (int.Parse(value, CultureInfo.InvariantCulture) > Shards.Length)
                throw new InvalidRequestException($"rf {value} needs at least {value} targets; pool '{Label}' has {Shards.Length}");
        }
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (name == "label")
            {
                Labels.Validate("pool", value);
                if (value != Label && _engine.ListPools().Any(p => p.Label == value))
                    throw new DuplicateLabelException($"a pool labelled '{value}' already exists");
            }
            // On a pool with data rf changes through a job; while one is recorded every rf set goes there (and is refused while it runs).
            if (name == "rf" && HoldsData() && (value != Rf.ToString(CultureInfo.InvariantCulture) || DurableJob() == ReplicateJob))
            {
                await ChangeRfAsync(int.Parse(value, CultureInfo.InvariantCulture)).ConfigureAwait(false);
                return;
            }
            CheckMetadataRoom(value.Length + name.Length);
            await Log.CommitAsync(MetaRecords.PoolSetProp(name, value)).ConfigureAwait(false);
            if (name == Migration.MigrateRate.Property)
                Interlocked.Exchange(ref _migrateRateChanged, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
            if (name == "label")
            {
                // The label also lives in every shard header (for messages before replay).
                await Log.CheckpointAsync().ConfigureAwait(false);
                OnLabelChanged(value);
            }
        }
        finally
        {
            MetaLock.Release();
        }
    }

    private TaskCompletionSource _migrateRateChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Completes the next time `migrate_rate` is set: a throttled migration waiting for its turn looks again.</summary>
    internal Task MigrateRateChanged => Volatile.Read(ref _migrateRateChanged).Task;

    /// <summary>
    /// The throttle at stopwatch time <paramref name="now"/>: a set byte count, or for `auto` (the default, and
    /// any value this engine does not know) MigrateRate.AutoBytes while clients did I/O within MigrateRate.ClientWindow
    /// on this pool or on <paramref name="clientsToo"/> (an image migration's source pool: its clients' reads stay there), else 0;
    /// <paramref name="auto"/> replaces MigrateRate.AutoBytes (an image copy's MigrateRate.AutoImageCopyBytes).
    /// </summary>
    internal long MigrateRateAt(long now, Pool? clientsToo = null, long auto = Migration.MigrateRate.AutoBytes)
    {
        string? v;
        lock (Meta.Sync)
            v = Meta.Props.GetValueOrDefault(Migration.MigrateRate.Property);
        if (v != null && long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out long r))
            return r;
        return ClientsActiveAt(now) || clientsToo?.ClientsActiveAt(now) == true ? auto : 0;
    }

    private bool ClientsActiveAt(long now)
    {
        long last = Volatile.Read(ref _lastClientIo);
        return last != 0 && now - last < (long)(Migration.MigrateRate.ClientWindow.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
    }

    private long _lastClientIo;

    /// <summary>
    /// A client read, wrote, trimmed or flushed an image of this pool (Image's public I/O): `migrate_rate
    /// auto` throttles migrations for MigrateRate.ClientWindow. One timestamp, stored at most once a millisecond.
    /// </summary>
    internal void NoteClientIo()
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        if (now - Volatile.Read(ref _lastClientIo) > System.Diagnostics.Stopwatch.Frequency / 1000)
            Volatile.Write(ref _lastClientIo, now);
    }

    /// <summary>Refuses metadata growth that would not fit the checkpoint slot.</summary>
    internal void CheckMetadataRoom(long extra)
    {
        const int Margin = 4096;
        long limit = Header.CheckpointLength - Checkpoint.HeaderSize - Margin;
        long chunkReserve = Header.DataLength * Shards.Length / Header.MinChunkSize * PoolLayoutPlan.CheckpointBytesPerChunk;
        long nonChunk = Log.MetadataEstimate + extra;
        if (nonChunk + chunkReserve > limit)
            throw new NoSpaceException($"no space left in pool '{Label}' for more metadata (containers, images, properties)");
    }

    public IReadOnlyList<ContainerInfo> ListContainers()
    {
        lock (Meta.Sync)
            return Meta.Containers.Values.OrderBy(c => c.Label, StringComparer.Ordinal)
                .Select(c => new ContainerInfo(c.Id, c.Label, Meta.Images.Values.Count(i => i.Container == c.Id), WithComputed(c)))
                .ToList();
    }

    internal ContainerMeta FindContainer(string label)
    {
        lock (Meta.Sync)
            return Meta.Containers.Values.FirstOrDefault(c => c.Label == label)
                ?? throw new NotFoundException($"pool '{Label}' has no container {UserText.Quote(label)}");
    }

    public async Task<ContainerInfo> CreateContainerAsync(string label)
    {
        Labels.Validate("container", label);
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            uint id;
            lock (Meta.Sync)
            {
                if (Meta.Containers.Values.Any(c => c.Label == label))
                    throw new DuplicateLabelException($"pool '{Label}' already has a container '{label}'");
                id = Meta.NextContainerId;
            }
            CheckMetadataRoom(64 + label.Length);
            uint layout = LayoutVersion;
            await Log.CommitAsync(MetaRecords.ContainerCreate(id, label, layout)).ConfigureAwait(false);
            return new ContainerInfo(id, label, 0, new Dictionary<string, string> { [ContainerMeta.CreatedLayoutProp] = layout.ToString(CultureInfo.InvariantCulture) });
        }
        finally
        {
            MetaLock.Release();
        }
    }

    public async Task DestroyContainerAsync(string label)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            var c = FindContainer(label);
            int images;
            lock (Meta.Sync)
                images = Meta.Images.Values.Count(i => i.Container == c.Id);
            if (images > 0)
                throw new BusyException($"container '{label}' in pool '{Label}' still has {images} image(s); remove them first");
            await Log.CommitAsync(MetaRecords.ContainerDestroy(c.Id)).ConfigureAwait(false);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    public string GetContainerProperty(string container, string name)
    {
        var c = FindContainer(container);
        if (name == "label")
            return c.Label;
        lock (Meta.Sync)
        {
            if (name == ContainerMeta.CreatedLayoutProp)
                return c.CreatedLayout.ToString(CultureInfo.InvariantCulture);
            if (name == "compression" && c.CreatedLayout >= 2)
                return c.Props.GetValueOrDefault("compression", "off");
            return c.Props.TryGetValue(name, out var v) ? v : throw new NotFoundException($"container {UserText.Quote(container)} has no property {UserText.Quote(name)}");
        }
    }

    private static Dictionary<string, string> WithComputed(ContainerMeta c)
    {
        var d = new Dictionary<string, string>(c.Props, StringComparer.Ordinal);
        d.TryAdd(ContainerMeta.CreatedLayoutProp, "1");
        if (c.CreatedLayout >= 2)
            d.TryAdd("compression", "off");
        return d;
    }

    /// <summary>Values of the container property `compression` (layout 2, feature container_compression).</summary>
    public static readonly string[] CompressionValues = ["off", "on"];

    /// <summary>Layout 1 container properties: label, and free-form "user.*" attributes.</summary>
    public async Task SetContainerPropertyAsync(string container, string name, string value)
    {
        CheckUserProperty("container", name, value);
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            var c = FindContainer(container);
            if (name == "compression")
            {
                RequireFeature("container_compression", "container property 'compression'");
                if (c.CreatedLayout < 2)
                    throw new InvalidRequestException($"container '{container}' was created at pool layout {c.CreatedLayout}; container property 'compression' is available only to containers created at layout 2 or later (new features are not enabled in existing containers)");
                if (!CompressionValues.Contains(value))
                    throw new InvalidRequestException($"container property 'compression' takes {string.Join(", ", CompressionValues)}; got '{value}'");
            }
            if (name == "label")
            {
                Labels.Validate("container", value);
                lock (Meta.Sync)
                    if (Meta.Containers.Values.Any(x => x.Label == value && x.Id != c.Id))
                        throw new DuplicateLabelException($"pool '{Label}' already has a container '{value}'");
            }
            CheckMetadataRoom(name.Length + value.Length);
            await Log.CommitAsync(MetaRecords.ContainerSetProp(c.Id, name, value)).ConfigureAwait(false);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    private void CheckUserProperty(string kind, string name, string value)
    {
        if (name == ContainerMeta.CreatedLayoutProp && kind == "container")
            throw new InvalidRequestException("container property 'layout_version' is read-only: it is the pool layout the container was created at");
        if (name == "compression" && kind == "container")
            return;
        if (name != "label" && !(name.StartsWith("user.", StringComparison.Ordinal) && name.Length > 5 && name.Length <= 128))
            throw new NotFoundException($"{kind} property {UserText.Quote(name)} is unknown (containers have 'label', 'compression' from layout 2, and 'user.*' attributes)");
        if (value.Length > 4096)
            throw new InvalidRequestException($"{kind} property '{name}' value is longer than 4096 characters");
    }

    /// <summary>Any image has a mapped chunk: data whose copies an rf change would have to add or drop.</summary>
    private bool HoldsData()
    {
        lock (Meta.Sync)
            return Meta.Images.Values.Any(i => i.Chunks.Count > 0);
    }
}
