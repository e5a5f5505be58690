using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The pool's side of image migrations (docs/migration.md, "Image migration"): which of its images
/// are the source of a migration (their I/O is routed through it) or its destination (refuses
/// opens, resize and removal). Copy-on-write tables, so the per-I/O lookup is one volatile read.
/// </summary>
public sealed partial class Pool
{
    private readonly object _migrationsSync = new();
    private Dictionary<uint, ImageMigration>? _migrationSources;
    private Dictionary<uint, ImageMigration>? _migrationDestinations;

    /// <summary>The migration whose source is this image, or null (also after commit, to forward old handles).</summary>
    internal ImageMigration? MigrationOf(uint image)
    {
        var d = Volatile.Read(ref _migrationSources);
        return d != null && d.TryGetValue(image, out var m) ? m : null;
    }

    /// <summary>The migration whose destination is this image, or null.</summary>
    internal ImageMigration? MigrationTo(uint image)
    {
        var d = Volatile.Read(ref _migrationDestinations);
        return d != null && d.TryGetValue(image, out var m) ? m : null;
    }

    private Dictionary<uint, ImageImport>? _imports;

    /// <summary>The import filling this image, or null.</summary>
    internal ImageImport? ImportOf(uint image)
    {
        var d = Volatile.Read(ref _imports);
        return d != null && d.TryGetValue(image, out var m) ? m : null;
    }

    internal void SetImport(uint image, ImageImport? import)
    {
        lock (_migrationsSync)
        {
            var d = _imports == null ? new Dictionary<uint, ImageImport>() : new Dictionary<uint, ImageImport>(_imports);
            if (import == null)
                d.Remove(image);
            else
                d[image] = import;
            Volatile.Write(ref _imports, d.Count == 0 ? null : d);
        }
    }

    /// <summary>Whether an image of this pool is either end of a migration not yet committed or aborted.</summary>
    internal bool HasActiveMigrations
    {
        get
        {
            var s = Volatile.Read(ref _migrationSources);
            return (s != null && s.Values.Any(m => !m.Committed)) || Volatile.Read(ref _migrationDestinations) is { Count: > 0 };
        }
    }

    internal void AddMigrationSource(ImageMigration m) => Swap(ref _migrationSources, d => d[m.Source.Id] = m);

    internal void RemoveMigrationSource(ImageMigration m) => Swap(ref _migrationSources, d => d.Remove(m.Source.Id));

    internal void AddMigrationDestination(ImageMigration m) => Swap(ref _migrationDestinations, d => d[m.Destination.Id] = m);

    internal void RemoveMigrationDestination(ImageMigration m) => Swap(ref _migrationDestinations, d => d.Remove(m.Destination.Id));

    private void Swap(ref Dictionary<uint, ImageMigration>? table, Action<Dictionary<uint, ImageMigration>> change)
    {
        lock (_migrationsSync)
        {
            var d = table == null ? new Dictionary<uint, ImageMigration>() : new Dictionary<uint, ImageMigration>(table);
            change(d);
            Volatile.Write(ref table, d.Count == 0 ? null : d);
        }
    }

    /// <summary>Refuses what would pull either end of a migration away (resize, remove, direct opens of the destination).</summary>
    internal void ThrowIfMigrating(uint image, string label, string what)
    {
        if (MigrationOf(image) is { Committed: false } m)
            throw new BusyException($"cannot {what} image '{label}' in pool '{Label}': it is migrating to {m.DestinationName} ({ImageMigration.Name(m.State)}); commit or abort the migration first");
        if (ImportOf(image) is { } i)
            throw new BusyException($"cannot {what} image '{label}' in pool '{Label}': it is being imported from {i.SourceName} ({ImageMigration.Name(i.State)}); commit or abort the import first");
        if (MigrationTo(image) is { } d)
            throw new BusyException($"cannot {what} image '{label}' in pool '{Label}': it is the destination of a migration from {d.SourceName} ({ImageMigration.Name(d.State)}); use the source's name until commit, or abort");
    }

    /// <summary>Records one migration property of an image (ImageSetProp; "" clears it).</summary>
    internal async Task SetImagePropInternalAsync(uint image, string name, string value)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            ThrowIfNotWritable();
            lock (Meta.Sync)
                if (!Meta.Images.ContainsKey(image))
                    return;
            await Log.CommitAsync(MetaRecords.ImageSetProp(image, name, value)).ConfigureAwait(false);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>A migration property of an image; "" when unset or cleared.</summary>
    internal string ImagePropOrEmpty(uint image, string name)
    {
        lock (Meta.Sync)
            return Meta.Images.TryGetValue(image, out var m) && m.Props.TryGetValue(name, out var v) ? v : "";
    }

    /// <summary>
    /// Runs body under the metadata lock and all of an image's chunk locks (that order, as resize
    /// and remove take them): no I/O or metadata change is on the image meanwhile.
    /// </summary>
    internal async Task QuiescedAsync(uint image, Func<Task> body)
    {
        await MetaLock.WaitAsync().ConfigureAwait(false);
        try
        {
            using (await LocksFor(image).AllAsync().ConfigureAwait(false))
                await body().ConfigureAwait(false);
        }
        finally
        {
            MetaLock.Release();
        }
    }

    /// <summary>Removes an image inside <see cref="QuiescedAsync"/> (commit removes the source); its clients stay registered, their handles forward.</summary>
    internal async Task RemoveImageInQuiesceAsync(uint image)
    {
        ThrowIfNotWritable();
        ImageMeta? meta;
        List<ChunkMap> chunks;
        lock (Meta.Sync)
        {
            meta = Meta.Images.GetValueOrDefault(image);
            if (meta == null)
                return;
            chunks = meta.Chunks.Values.ToList();
        }
        await Log.CommitAsync(MetaRecords.ImageRemove(image)).ConfigureAwait(false);
        foreach (var m in chunks)
            FreeChunk(m, meta.ChunkSize);
    }

    /// <summary>Removes an image for abort (the destination, which has no clients of its own).</summary>
    internal Task RemoveImageLockedAsync(uint image) => QuiescedAsync(image, () => RemoveImageInQuiesceAsync(image));

    /// <summary>Whether an image id exists now.</summary>
    internal bool HasImage(uint image)
    {
        lock (Meta.Sync)
            return Meta.Images.ContainsKey(image);
    }

    /// <summary>The image's id, container label and label by id, or null.</summary>
    internal (string Container, string Label)? ImageNames(uint image)
    {
        lock (Meta.Sync)
        {
            if (!Meta.Images.TryGetValue(image, out var m))
                return null;
            var c = Meta.Containers.GetValueOrDefault(m.Container);
            return c == null ? null : (c.Label, m.Label);
        }
    }

    /// <summary>Every image with a non-empty value of a property: (id, value).</summary>
    internal List<(uint Id, string Value)> ImagesWithProp(string name)
    {
        lock (Meta.Sync)
            return Meta.Images.Values.Where(i => i.Props.TryGetValue(name, out var v) && v.Length > 0).Select(i => (i.Id, i.Props[name])).ToList();
    }

    /// <summary>An engine-side handle on an image by id (no exclusive-reason or destination checks).</summary>
    internal Image HandleById(uint id)
    {
        var names = ImageNames(id) ?? throw new NotFoundException($"pool '{Label}' has no image {id}");
        return new Image(this, id, names.Container, names.Label);
    }
}
