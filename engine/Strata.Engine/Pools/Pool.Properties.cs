using System.Globalization;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>A container as `container list` shows it.</summary>
public sealed record ContainerInfo(uint Id, string Label, int Images, IReadOnlyDictionary<string, string> Properties);

public sealed partial class Pool
{
    /// <summary>
    /// Pool properties of layout 1. The registry is the place later layouts extend
    /// (pool_props_v2 adds scrub and reclaim); a name not here is refused.
    /// </summary>
    private static readonly string[] PoolProperties = ["label", "rf", "layout_version"];

    public IReadOnlyDictionary<string, string> GetProperties()
    {
        lock (Meta.Sync)
        {
            var all = new Dictionary<string, string>(Meta.Props, StringComparer.Ordinal)
            {
                ["layout_version"] = Header.LayoutVersion.ToString(CultureInfo.InvariantCulture),
            };
            return all;
        }
    }

    public string GetProperty(string name) =>
        GetProperties().TryGetValue(name, out var v) ? v : throw new NotFoundException($"pool '{Label}' has no property '{name}'");

    public async Task SetPropertyAsync(string name, string value)
    {
        if (!PoolProperties.Contains(name))
            throw new NotFoundException($"pool '{Label}' has no property '{name}' (known: {string.Join(", ", PoolProperties)})");
        if (name == "layout_version")
            throw new InvalidRequestException("pool property 'layout_version' is read-only; it changes only through a pool upgrade");
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
            CheckMetadataRoom(value.Length + name.Length);
            await Log.CommitAsync(MetaRecords.PoolSetProp(name, value)).ConfigureAwait(false);
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
                .Select(c => new ContainerInfo(c.Id, c.Label, Meta.Images.Values.Count(i => i.Container == c.Id), new Dictionary<string, string>(c.Props)))
                .ToList();
    }

    internal ContainerMeta FindContainer(string label)
    {
        lock (Meta.Sync)
            return Meta.Containers.Values.FirstOrDefault(c => c.Label == label)
                ?? throw new NotFoundException($"pool '{Label}' has no container '{label}'");
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
            await Log.CommitAsync(MetaRecords.ContainerCreate(id, label)).ConfigureAwait(false);
            return new ContainerInfo(id, label, 0, new Dictionary<string, string>());
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
            return c.Props.TryGetValue(name, out var v) ? v : throw new NotFoundException($"container '{container}' has no property '{name}'");
    }

    /// <summary>Layout 1 container properties: label, and free-form "user.*" attributes.</summary>
    public async Task SetContainerPropertyAsync(string container, string name, string value)
    {
        CheckUserProperty("container", name, value);
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            var c = FindContainer(container);
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
        if (name == "compression" && kind == "container")
            throw new InvalidRequestException($"container property 'compression' belongs to the layout feature container_compression, whose layout version is 2; pool '{Label}' has layout version {Header.LayoutVersion}");
        if (name != "label" && !(name.StartsWith("user.", StringComparison.Ordinal) && name.Length > 5 && name.Length <= 128))
            throw new NotFoundException($"{kind} property '{name}' is unknown (layout 1 has 'label' and 'user.*' attributes)");
        if (value.Length > 4096)
            throw new InvalidRequestException($"{kind} property '{name}' value is longer than 4096 characters");
    }
}
