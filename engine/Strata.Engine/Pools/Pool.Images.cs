using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>An image as `image list` shows it.</summary>
public sealed record ImageInfo(uint Id, string Container, string Label, long Size, int ChunkSize, long MappedBytes);

public sealed partial class Pool
{
    public const int DefaultChunkSize = 128 * 1024;

    public IReadOnlyList<ImageInfo> ListImages(string container)
    {
        var c = FindContainer(container);
        lock (Meta.Sync)
            return Meta.Images.Values.Where(i => i.Container == c.Id).OrderBy(i => i.Label, StringComparer.Ordinal)
                .Select(i => new ImageInfo(i.Id, c.Label, i.Label, i.Size, i.ChunkSize, (long)i.Chunks.Count * i.ChunkSize)).ToList();
    }

    internal ImageMeta FindImage(string container, string label)
    {
        var c = FindContainer(container);
        lock (Meta.Sync)
            return Meta.Images.Values.FirstOrDefault(i => i.Container == c.Id && i.Label == label)
                ?? throw new NotFoundException($"pool '{Label}' container {UserText.Quote(container)} has no image {UserText.Quote(label)}");
    }

    /// <summary>Creates a thin image: no space is used until data is written.</summary>
    public Task<Image> CreateImageAsync(string container, string label, long size, int chunkSize = 0) =>
        CreateImageAsync(container, label, size, chunkSize, []);

    /// <summary>Creates an image carrying <paramref name="props"/> from its first record on (one log commit: a crash leaves both or neither).</summary>
    internal async Task<Image> CreateImageAsync(string container, string label, long size, int chunkSize, (string Name, string Value)[] props)
    {
        Labels.Validate("image", label);
        if (chunkSize == 0)
            chunkSize = Math.Max(DefaultChunkSize, Header.MinChunkSize);
        if (chunkSize < Header.MinChunkSize || chunkSize > PoolLayoutPlan.MaxChunkSize || (chunkSize & (chunkSize - 1)) != 0)
            throw new InvalidRequestException($"chunk size {chunkSize} is not a power of two between {Header.MinChunkSize} (this pool's minimum) and {PoolLayoutPlan.MaxChunkSize}");
        SizeLimits.CheckImageSize(size);
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            var c = FindContainer(container);
            uint id;
            lock (Meta.Sync)
            {
                if (Meta.Images.Values.Any(i => i.Container == c.Id && i.Label == label))
                    throw new DuplicateLabelException($"pool '{Label}' container '{container}' already has an image '{label}'");
                id = Meta.NextImageId;
            }
            CheckMetadataRoom(128 + label.Length + props.Sum(p => p.Name.Length + p.Value.Length));
            if (props.Length == 0)
                await Log.CommitAsync(MetaRecords.ImageCreate(id, c.Id, label, size, chunkSize)).ConfigureAwait(false);
            else
                await Log.CommitAsync([MetaRecords.ImageCreate(id, c.Id, label, size, chunkSize), .. props.Select(p => MetaRecords.ImageSetProp(id, p.Name, p.Value))]).ConfigureAwait(false);
            return new Image(this, id, container, label);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    public Image OpenImage(string container, string label)
    {
        // Opens go on during an exclusive upgrade action: the handle's I/O waits at the gate.
        var meta = FindImage(container, label);
        if (MigrationTo(meta.Id) != null)
            ThrowIfMigrating(meta.Id, label, "open");
        return new Image(this, meta.Id, container, label);
    }

    /// <summary>Removes an image and frees its chunks once the removal is durable.</summary>
    public async Task RemoveImageAsync(string container, string label)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            var meta = FindImage(container, label);
            ThrowIfMigrating(meta.Id, label, "remove");
            ThrowIfImageHasClients(container, label);
            using (await LocksFor(meta.Id).AllAsync().ConfigureAwait(false))
            {
                List<ChunkMap> chunks;
                lock (Meta.Sync)
                    chunks = meta.Chunks.Values.ToList();
                await Log.CommitAsync(MetaRecords.ImageRemove(meta.Id)).ConfigureAwait(false);
                foreach (var m in chunks)
                    FreeChunk(m, meta.ChunkSize);
            }
        }
        finally
        {
            MetaLock.Release();
        }
    }

    internal void FreeChunk(ChunkMap? map, int chunkSize)
    {
        if (map == null)
            return;
        int length = map.ExtentLength(chunkSize);
        // Two loops over the arrays: an IEnumerable (Concat, or the array as one) costs an enumerator per write.
        foreach (var r in map.Replicas)
            Shards[r.Target].Allocator.Free(r.Offset, length);
        if (map.Moving != null)
            foreach (var r in map.Moving)
                Shards[r.Target].Allocator.Free(r.Offset, length);
    }

    /// <summary>Extents freed so far on every target (ExtentAllocator.Frees): read before an allocation attempt, for PoolLog.FlushForSpaceAsync.</summary>
    internal long ExtentFrees
    {
        get
        {
            long n = 0;
            foreach (var s in Shards)
                n += s.Allocator.Frees;
            return n;
        }
    }

    /// <summary>Looks an image up by id; a removed image is "not found" for every handle still held.</summary>
    internal ImageMeta ImageById(uint id, string label)
    {
        lock (Meta.Sync)
            return Meta.Images.TryGetValue(id, out var m) ? m : throw new NotFoundException($"pool '{Label}' has no image '{label}' (it was removed)");
    }
}
