using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>RAS ids of image migration (docs/migration.md, "Image migration").</summary>
public static class ImageMigrationRasIds
{
    public const string Prepared = "image_migration_prepared";
    public const string Executed = "image_migration_executed";
    public const string Committed = "image_migration_committed";
    public const string Aborted = "image_migration_aborted";
    public const string Failed = "image_migration_failed";
    public const string Resumed = "image_migration_resumed";
    public const string SourceLost = "image_migration_source_lost";
    public const string SourceBack = "image_migration_source_back";
}

/// <summary>
/// Image migration across the engine's pools: prepare, execute (a background copy), commit, abort,
/// status, and resuming after a crash or stop from the migration.* properties of both images.
/// </summary>
public sealed partial class StorageEngine
{
    private readonly List<ImageMigration> _migrations = new();
    private readonly List<ImageImport> _imports = new();
    private readonly SemaphoreSlim _migrationLock = new(1, 1);

    /// <summary>Splits "pool/container/image"; a one-line error otherwise.</summary>
    internal static (string Pool, string Container, string Image) ParseImageName(string name, string what)
    {
        var parts = name.Split('/');
        if (parts.Length != 3 || parts.Any(p => p.Length == 0))
            throw new InvalidRequestException($"{what} {UserText.Quote(name)} is not pool/container/image");
        return (parts[0], parts[1], parts[2]);
    }

    private ImageMigration? FindMigration(string name)
    {
        lock (_migrations)
            return _migrations.FirstOrDefault(m => m.SourceName == name || m.DestinationName == name);
    }

    private ImageImport? FindImport(string name)
    {
        lock (_migrations)
            return _imports.FirstOrDefault(m => m.DestinationName == name);
    }

    public IReadOnlyList<ImageMigrationStatus> ListMigrations()
    {
        lock (_migrations)
            return _migrations.Select(m => m.Status()).Concat(_imports.Select(i => i.Status())).ToList();
    }

    /// <summary>The migration that has this image (source or destination name) at either end.</summary>
    public ImageMigrationStatus MigrationStatus(string image) =>
        MigrationStatusOrNull(image) ?? throw new NotFoundException($"image {UserText.Quote(image)} is not migrating");

    /// <summary>Waits for the background copy of a migration (status --wait, tests).</summary>
    public Task WaitForMigrationJobAsync(string image) =>
        FindImport(image)?.Job ?? (FindMigration(image) ?? throw new NotFoundException($"image {UserText.Quote(image)} is not migrating")).Job;

    /// <summary>Pool pairs (source, destination) of the migrations whose writes cross pools: a source pass waits on the destination's gate.</summary>
    private List<(Pool From, Pool To, ImageMigration M)> CrossPoolMigrations()
    {
        lock (_migrations)
            return _migrations.Where(m => !m.Committed && !ReferenceEquals(m.Source.Pool, m.Destination.Pool))
                .Select(m => (m.Source.Pool, m.Destination.Pool, m)).ToList();
    }

    /// <summary>
    /// Refuses a migration from <paramref name="sp"/> into <paramref name="dp"/> when migrations
    /// already lead from dp back to sp: a source's writes would wait on a gate whose pool's own
    /// sources wait on the first one, and no barrier order could drain both (docs/migration.md, "Barriers").
    /// </summary>
    private void ThrowIfMigrationCycle(Pool sp, Pool dp, string source)
    {
        if (ReferenceEquals(sp, dp))
            return;
        var edges = CrossPoolMigrations();
        var seen = new HashSet<Pool>(ReferenceEqualityComparer.Instance) { dp };
        var queue = new Queue<Pool>([dp]);
        while (queue.Count > 0)
        {
            var p = queue.Dequeue();
            foreach (var (from, to, m) in edges)
            {
                if (!ReferenceEquals(from, p))
                    continue;
                if (ReferenceEquals(to, sp))
                    throw new BusyException($"cannot migrate image {UserText.Quote(source)} into pool '{dp.Label}': migration {m.SourceName} -> {m.DestinationName} already leads from pool '{dp.Label}' back to pool '{sp.Label}', and a barrier could not drain both; commit or abort it first, or migrate within one pool");
                if (seen.Add(to))
                    queue.Enqueue(to);
            }
        }
    }

    /// <summary>
    /// The pools in the order a barrier closes their gates: a pool holding a migration's source
    /// before the one holding its destination, so a source's writes in flight reach the destination
    /// before its gate closes (prepare refuses cycles); otherwise as given.
    /// </summary>
    internal List<Pool> SourcesFirst(IReadOnlyList<Pool> pools)
    {
        var edges = CrossPoolMigrations();
        var left = new List<Pool>(pools);
        var ordered = new List<Pool>(pools.Count);
        while (left.Count > 0)
        {
            var next = left.FirstOrDefault(p => !edges.Any(e => ReferenceEquals(e.To, p) && left.Contains(e.From))) ?? left[0];
            ordered.Add(next);
            left.Remove(next);
        }
        return ordered;
    }

    /// <summary>
    /// Prepare's --chunk-size and --rf, before anything is created: the chunk size a power of two
    /// the destination pool takes; rf is a pool property, so --rf N names the rf the destination
    /// pool must have (the way to change an image's rf is a destination in a pool with that rf).
    /// </summary>
    private void CheckDestination(Pool dp, int chunkSize, int rf)
    {
        if (chunkSize != 0 && (chunkSize < dp.Header.MinChunkSize || chunkSize > PoolLayoutPlan.MaxChunkSize || (chunkSize & (chunkSize - 1)) != 0))
            throw new InvalidRequestException($"--chunk-size {chunkSize} is not a power of two between {dp.Header.MinChunkSize} (pool '{dp.Label}''s minimum) and {PoolLayoutPlan.MaxChunkSize}; nothing was created");
        if (rf < 0)
            throw new InvalidRequestException($"--rf {rf} is not a replica count; give 1 or more");
        if (rf != 0 && rf != dp.Rf)
        {
            var with = OpenPools().Where(p => p.Rf == rf).Select(p => $"'{p.Label}'").ToList();
            throw new InvalidRequestException($"--rf {rf}: pool '{dp.Label}' keeps {dp.Rf} replica(s) of every chunk (rf is a pool property); name a destination in a pool with rf {rf} ("
                + (with.Count > 0 ? $"open pools with rf {rf}: {string.Join(", ", with)}" : $"no open pool has it; 'strata pool create NAME --size SIZE --rf {rf}'") + "); nothing was created");
        }
    }

    /// <summary>
    /// `image migrate prepare SRC DST`: creates DST (thin, the source's size), links both images
    /// durably and redirects the source's I/O (clients stay connected). Refuses an image already
    /// migrating, a migration to itself and a destination pool without room, before anything is created.
    /// </summary>
    public async Task<ImageMigrationStatus> PrepareMigrationAsync(string source, string destination, int chunkSize = 0, int rf = 0)
    {
        var (spool, scont, simage) = ParseImageName(source, "source");
        var (dpool, dcont, dimage) = ParseImageName(destination, "destination");
        if (source == destination)
            throw new InvalidRequestException($"cannot migrate image {UserText.Quote(source)} to itself; name another image (another pool, container or label)");
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            var sp = await OpenPoolAsync(spool).ConfigureAwait(false);
            var dp = await OpenPoolAsync(dpool).ConfigureAwait(false);
            var smeta = sp.FindImage(scont, simage);
            if (FindMigration(source) is { } busy)
                throw new BusyException($"image {UserText.Quote(source)} is already migrating ({busy.SourceName} -> {busy.DestinationName}, {ImageMigration.Name(busy.State)}); commit or abort that migration first");
            sp.ThrowIfMigrating(smeta.Id, simage, "migrate");
            sp.ThrowIfNotWritable();
            dp.ThrowIfNotWritable();
            ThrowIfMigrationCycle(sp, dp, source);
            CheckDestination(dp, chunkSize, rf);
            long size, mapped;
            int scs;
            lock (sp.Meta.Sync)
                (size, mapped, scs) = (smeta.Size, (long)smeta.Chunks.Count * smeta.ChunkSize, smeta.ChunkSize);
            long need = mapped * dp.Rf, free = dp.Query().FreeBytes;
            if (need > free)
                throw new NoSpaceException($"no room in pool '{dpool}' for image {UserText.Quote(source)}: it maps {mapped} bytes, {need} bytes at rf {dp.Rf}, and the pool has {free} bytes free; nothing was created");
            int cs = chunkSize != 0 ? chunkSize : scs >= dp.Header.MinChunkSize ? scs : 0;
            // Created linked (one commit): a crash before the source names it leaves a destination resume removes.
            var dest = await dp.CreateImageAsync(dcont, dimage, size, cs,
                [(ImageMigration.Props.Source, source), (ImageMigration.Props.State, "prepared")]).ConfigureAwait(false);
            var m = new ImageMigration(new Image(sp, smeta.Id, scont, simage), dest, ImageMigrationState.Prepared, 0, null);
            dp.AddMigrationDestination(m);
            try
            {
                // The link and the redirect under all of the source's locks: no write is half-way through.
                await sp.QuiescedAsync(smeta.Id, async () =>
                {
                    await sp.Log.CommitAsync([
                        MetaRecords.ImageSetProp(smeta.Id, ImageMigration.Props.Destination, destination),
                        MetaRecords.ImageSetProp(smeta.Id, ImageMigration.Props.State, "prepared")]).ConfigureAwait(false);
                    sp.AddMigrationSource(m);
                }).ConfigureAwait(false);
            }
            catch
            {
                dp.RemoveMigrationDestination(m);
                await dp.RemoveImageLockedAsync(dest.Id).ConfigureAwait(false);
                throw;
            }
            lock (_migrations)
                _migrations.Add(m);
            EmitMigration(ImageMigrationRasIds.Prepared, RasSeverity.Notice, m, $"image {source} prepared for migration to {destination}");
            return m.Status();
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    /// <summary>`execute`: starts (or restarts after an error) the background copy; returns at once.</summary>
    public async Task<ImageMigrationStatus> ExecuteMigrationAsync(string image)
    {
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (FindImport(image) is { } imp)
                return await ExecuteImportAsync(imp).ConfigureAwait(false);
            var m = FindMigration(image) ?? throw new NotFoundException($"image {UserText.Quote(image)} is not migrating; prepare it first");
            var s = m.State;
            if (s is not (ImageMigrationState.Prepared or ImageMigrationState.Executing or ImageMigrationState.Error)
                && !(s == ImageMigrationState.Executed && m.FirstDiverged != null))
                throw new InvalidRequestException($"migration {m.SourceName} -> {m.DestinationName} is {ImageMigration.Name(s)}; execute needs prepared (or error, to retry)");
            if (s != ImageMigrationState.Executing)
            {
                await m.Destination.Pool.SetImagePropInternalAsync(m.Destination.Id, ImageMigration.Props.State, "executing").ConfigureAwait(false);
                m.SetState(ImageMigrationState.Executing);
            }
            m.StartJob(CopyAsync);
            return m.Status();
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    /// <summary>
    /// The background copy: source chunks from the cursor, each under the source chunk's exclusive
    /// lock (verified read into a DMA buffer, CRC-checked and written to the destination at the same
    /// offset; Image.CopyChunkAsync), paced by the destination pool's migrate_rate, with at most
    /// <see cref="MigrationOptions.InFlightPerTarget"/> chunks per destination target in flight (the
    /// migration loop's bounds); a flush and a durable cursor every CursorEvery chunks, the cursor
    /// naming the first chunk not known copied (chunks complete in order).
    /// </summary>
    private async Task CopyAsync(ImageMigration m, CancellationToken ct)
    {
        var dp = m.Destination.Pool;
        try
        {
            long chunks = await CopyChunksAsync(m, ct).ConfigureAwait(false);
            // Chunks a failed mirrored write may have left different, behind the cursor: copied again.
            while (m.FirstDiverged is long d)
            {
                ct.ThrowIfCancellationRequested();
                await m.Source.CopyChunkAsync(d, m.Destination).ConfigureAwait(false);
                m.Converged(d);
            }
            await dp.Log.CommitAfterFlushAsync([
                MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Cursor, chunks.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.State, "executed")]).ConfigureAwait(false);
            m.SetState(ImageMigrationState.Executed);
            EmitMigration(ImageMigrationRasIds.Executed, RasSeverity.Notice, m, $"migration {m.SourceName} -> {m.DestinationName} executed: every chunk copied");
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Stopped (engine stop, abort): the saved cursor is where a restart resumes.
        }
        catch (Exception e) when (e is StoreException or IOException or Interop.DeviceException)
        {
            m.SetState(ImageMigrationState.Error, e.Message);
            EmitMigration(ImageMigrationRasIds.Failed, RasSeverity.Error, m, $"migration {m.SourceName} -> {m.DestinationName} stopped at chunk {m.Cursor}: {e.Message}; 'strata image migrate execute' retries, 'abort' keeps the source");
            try
            {
                await dp.Log.CommitAsync([
                    MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.State, "error"),
                    MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Error, e.Message)]).ConfigureAwait(false);
            }
            catch (Exception again) when (again is StoreException or IOException)
            {
                // The pool failed too: it reopens in the last durable state (executing), which resumes.
            }
        }
    }

    /// <summary>
    /// The copy itself, from the cursor to the end; returns the source's chunk count. At most
    /// maxWindow copies run at once, and a new one starts as soon as any of them finishes (one slow
    /// chunk does not hold the others' places); the cursor advances in chunk order, over a queue of
    /// at most four windows of started chunks. While the throttle paces the copy (clients are active
    /// under `auto`, or a rate is set) at most <see cref="PacedCopies"/> run at once.
    /// </summary>
    private static async Task<long> CopyChunksAsync(ImageMigration m, CancellationToken ct)
    {
        var src = m.Source;
        var dp = m.Destination.Pool;
        var throttle = new MigrationThrottle(dp, src.Pool, MigrateRate.AutoImageCopyBytes);
        int cs = src.ChunkSizeOrZero();
        long chunks = SizeLimits.ChunkCount(src.SourceSize, cs);
        int maxWindow = Math.Max(1, new MigrationOptions().InFlightPerTarget * dp.TargetCount);
        int maxQueue = 4 * maxWindow;
        using var running = new SemaphoreSlim(maxWindow, maxWindow);
        using var paced = new SemaphoreSlim(PacedCopies, PacedCopies);
        var window = new Queue<(Task<long> Copy, long Index)>();
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(ct);
        int since = 0;
        m.CopyStarts(m.Cursor);
        try
        {
            for (long i = m.Cursor; i < chunks; i++)
            {
                ct.ThrowIfCancellationRequested();
                // Client writes of chunk i are mirrored from here on (ImageMigration.CopiesLater).
                m.CopyReaches(i);
                if (!src.IsChunkMapped(i))
                {
                    if (m.Destination.MapsAny(i * cs, Math.Min(cs, src.SourceSize - i * cs)))
                    {
                        // A hole the destination maps bytes of (mirrored writes, or a trim a crash cut off
                        // after the source's half): the copy trims them there, under the source chunk's lock.
                        await StartAsync(i).ConfigureAwait(false);
                        continue;
                    }
                    // A hole: done as soon as the chunks before it are.
                    if (window.Count == 0)
                    {
                        m.Advanced(i + 1, 0);
                        continue;
                    }
                    while (window.Count >= maxQueue)
                        await DrainOneAsync().ConfigureAwait(false);
                    window.Enqueue((HoleCopied, i));
                    continue;
                }
                // Nothing is held while the throttle waits: the chunks in flight finish first.
                if (throttle.MustWait(cs))
                    while (window.Count > 0)
                        await DrainOneAsync().ConfigureAwait(false);
                await throttle.TakeAsync(cs, ct).ConfigureAwait(false);
                await StartAsync(i).ConfigureAwait(false);
            }
            while (window.Count > 0)
                await DrainOneAsync().ConfigureAwait(false);
            return chunks;
        }
        catch (Exception) when (window.Count > 0)
        {
            // Nothing of this run may go on after it: the chunks in flight finish or fail first.
            await abort.CancelAsync().ConfigureAwait(false);
            while (window.Count > 0)
                await ((Task)window.Dequeue().Copy).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            throw;
        }

        async Task StartAsync(long index)
        {
            while (window.Count >= maxQueue)
                await DrainOneAsync().ConfigureAwait(false);
            await running.WaitAsync(ct).ConfigureAwait(false);
            bool gated = throttle.Paced;
            if (gated)
            {
                try
                {
                    await paced.WaitAsync(ct).ConfigureAwait(false);
                }
                catch
                {
                    running.Release();
                    throw;
                }
            }
            window.Enqueue((CopyReleasingAsync(index, gated), index));
            while (window.Count > 0 && window.Peek().Copy.IsCompleted)
                await DrainOneAsync().ConfigureAwait(false);
        }

        async Task<long> CopyReleasingAsync(long index, bool gated)
        {
            try
            {
                return await CopyOneAsync(src, index, m.Destination, abort.Token).ConfigureAwait(false);
            }
            finally
            {
                running.Release();
                if (gated)
                    paced.Release();
            }
        }

        async Task DrainOneAsync()
        {
            var (copy, index) = window.Dequeue();
            long bytes = await copy.ConfigureAwait(false);
            m.Advanced(index + 1, bytes);
            if (bytes > 0 && ++since >= ImageMigration.CursorEvery)
            {
                since = 0;
                await dp.Log.FlushAsync().ConfigureAwait(false);
                await dp.SetImagePropInternalAsync(m.Destination.Id, ImageMigration.Props.Cursor, (index + 1).ToString(System.Globalization.CultureInfo.InvariantCulture)).ConfigureAwait(false);
            }
        }
    }

    private static readonly Task<long> HoleCopied = Task.FromResult(0L);

    /// <summary>
    /// Copies at once while the copy is paced. A client's durable write flushes the destination's disk,
    /// and the flush waits for every copy write in flight there: one 1 MiB write at a time keeps that
    /// wait short, and at `auto`'s 128 MiB/s one chunk is due every 8 ms, longer than a copy takes.
    /// </summary>
    internal const int PacedCopies = 1;

    private static async Task<long> CopyOneAsync(Image source, long index, Image destination, CancellationToken ct)
    {
        await Task.Yield();
        ct.ThrowIfCancellationRequested();
        return await source.CopyChunkAsync(index, destination).ConfigureAwait(false);
    }

    /// <summary>
    /// `commit`: needs executed (refused with the progress otherwise). Switches every handle of the
    /// source to the destination, removes the source and leaves its name as an alias of the destination.
    /// </summary>
    public async Task<ImageMigrationStatus> CommitMigrationAsync(string image)
    {
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (FindImport(image) is { } imp)
                return await CommitImportAsync(imp).ConfigureAwait(false);
            var m = FindMigration(image) ?? throw new NotFoundException($"image {UserText.Quote(image)} is not migrating");
            var st = m.Status();
            if (m.State is not (ImageMigrationState.Executed or ImageMigrationState.Committing))
                throw new InvalidRequestException($"cannot commit migration {m.SourceName} -> {m.DestinationName}: it is {st.Summary}, {st.ChunksDone} of {st.Chunks} chunks copied; commit needs executed ('strata image migrate status {image} --wait')");
            if (m.State == ImageMigrationState.Executed && m.FirstDiverged is long d)
                throw new InvalidRequestException($"cannot commit migration {m.SourceName} -> {m.DestinationName}: a write that failed may have left chunk {d} different on the two images; 'strata image migrate execute {image}' copies it again");
            var dp = m.Destination.Pool;
            // Every acknowledged write durable on the destination before committing says it is the image.
            await m.CloseLagAsync().ConfigureAwait(false);
            await dp.SetImagePropInternalAsync(m.Destination.Id, ImageMigration.Props.State, "committing").ConfigureAwait(false);
            m.SetState(ImageMigrationState.Committing);
            await FinishCommitAsync(m).ConfigureAwait(false);
            return m.Status();
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    /// <summary>From committing (recorded) to committed: also what a restart in committing does.</summary>
    private async Task FinishCommitAsync(ImageMigration m)
    {
        var sp = m.Source.Pool;
        var dp = m.Destination.Pool;
        await sp.Log.FlushAsync().ConfigureAwait(false);
        await dp.Log.FlushAsync().ConfigureAwait(false);
        if (sp.HasImage(m.Source.Id))
        {
            // Under all of the source's locks: no source I/O is in flight; later ones forward.
            await sp.QuiescedAsync(m.Source.Id, async () =>
            {
                // A mirrored write that failed since commit began may have left a chunk different.
                while (m.FirstDiverged is long d)
                {
                    await m.Source.CopyChunkLockedAsync(d, m.Destination).ConfigureAwait(false);
                    m.Converged(d);
                }
                m.SetState(ImageMigrationState.Committed);
                sp.AddMigrationSource(m);
                await sp.RemoveImageInQuiesceAsync(m.Source.Id).ConfigureAwait(false);
            }).ConfigureAwait(false);
        }
        m.SetState(ImageMigrationState.Committed);
        await dp.Log.CommitAsync([
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Alias, m.SourceName),
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Source, ""),
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.State, ""),
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Cursor, ""),
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Lag, ""),
            MetaRecords.ImageSetProp(m.Destination.Id, ImageMigration.Props.Error, "")]).ConfigureAwait(false);
        dp.RemoveMigrationDestination(m);
        lock (_migrations)
            _migrations.Remove(m);
        EmitMigration(ImageMigrationRasIds.Committed, RasSeverity.Notice, m, $"migration {m.SourceName} -> {m.DestinationName} committed; {m.SourceName} is an alias of the destination");
    }

    /// <summary>`abort`: stops the copy and removes the destination; the source holds every acknowledged write.</summary>
    public async Task<ImageMigrationStatus> AbortMigrationAsync(string image)
    {
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (FindImport(image) is { } imp)
                return await AbortImportAsync(imp).ConfigureAwait(false);
            var m = FindMigration(image) ?? throw new NotFoundException($"image {UserText.Quote(image)} is not migrating");
            if (m.State is ImageMigrationState.Committing or ImageMigrationState.Committed)
                throw new InvalidRequestException($"cannot abort migration {m.SourceName} -> {m.DestinationName}: it is {ImageMigration.Name(m.State)} (the source is being removed)");
            await m.Source.Pool.SetImagePropInternalAsync(m.Source.Id, ImageMigration.Props.State, "aborting").ConfigureAwait(false);
            m.SetState(ImageMigrationState.Aborting);
            await m.StopJobAsync().ConfigureAwait(false);
            await FinishAbortAsync(m).ConfigureAwait(false);
            return m.Status();
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    private async Task FinishAbortAsync(ImageMigration m)
    {
        var sp = m.Source.Pool;
        var dp = m.Destination.Pool;
        // Stop mirroring under all of the source's locks (no mirror in flight), then drop the destination.
        await sp.QuiescedAsync(m.Source.Id, () =>
        {
            sp.RemoveMigrationSource(m);
            return Task.CompletedTask;
        }).ConfigureAwait(false);
        await m.StopLagAsync().ConfigureAwait(false);
        dp.RemoveMigrationDestination(m);
        if (dp.HasImage(m.Destination.Id))
            await dp.RemoveImageLockedAsync(m.Destination.Id).ConfigureAwait(false);
        await sp.Log.CommitAsync([
            MetaRecords.ImageSetProp(m.Source.Id, ImageMigration.Props.Destination, ""),
            MetaRecords.ImageSetProp(m.Source.Id, ImageMigration.Props.State, "")]).ConfigureAwait(false);
        lock (_migrations)
            _migrations.Remove(m);
        EmitMigration(ImageMigrationRasIds.Aborted, RasSeverity.Notice, m, $"migration {m.SourceName} -> {m.DestinationName} aborted; the destination was removed, the source has every write");
    }

    /// <summary>
    /// After the pools opened (engine start, tests' reopen): picks up every migration from the
    /// migration.* properties (ImageMigration.RecoveryCases) and restarts copies that were executing.
    /// </summary>
    public async Task ResumeMigrationsAsync()
    {
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            foreach (var dp in OpenPools())
                foreach (var (destId, spec) in dp.ImagesWithProp(ImageMigration.Props.Import))
                    if (dp.ImportOf(destId) == null)
                        await ResumeImportAsync(dp, destId, spec).ConfigureAwait(false);
            foreach (var dp in OpenPools())
            {
                foreach (var (destId, sourceName) in dp.ImagesWithProp(ImageMigration.Props.Source))
                {
                    if (dp.MigrationTo(destId) != null)
                        continue;
                    await ResumeOneAsync(dp, destId, sourceName).ConfigureAwait(false);
                }
            }
            // A source left in aborting whose destination is already gone: finish clearing it.
            foreach (var sp in OpenPools())
            {
                foreach (var (srcId, _) in sp.ImagesWithProp(ImageMigration.Props.Destination))
                {
                    if (sp.MigrationOf(srcId) != null || sp.ImagePropOrEmpty(srcId, ImageMigration.Props.State) != "aborting")
                        continue;
                    await sp.Log.CommitAsync([
                        MetaRecords.ImageSetProp(srcId, ImageMigration.Props.Destination, ""),
                        MetaRecords.ImageSetProp(srcId, ImageMigration.Props.State, "")]).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    private async Task ResumeOneAsync(Pool dp, uint destId, string sourceName)
    {
        var dest = dp.HandleById(destId);
        string destName = $"{dp.Label}/{dest.Container}/{dest.Label}";
        string state = dp.ImagePropOrEmpty(destId, ImageMigration.Props.State);
        var (spool, scont, simage) = ParseImageName(sourceName, "source");
        var sp = OpenPools().FirstOrDefault(p => p.Label == spool);
        if (sp == null)
            return; // Its source pool is not open: resumed when it is (the next ResumeMigrationsAsync).
        ImageMeta? smeta = null;
        try
        {
            smeta = sp.FindImage(scont, simage);
        }
        catch (NotFoundException)
        {
        }
        var source = smeta != null ? new Image(sp, smeta.Id, scont, simage) : null;
        // Recovery cases (docs/migration.md "States"): what was found -> what resuming does.
        if (state == "committing")
        {
            // committing: the source may or may not be gone yet; finish the commit.
            var m = new ImageMigration(source ?? new Image(sp, uint.MaxValue, scont, simage), dest, ImageMigrationState.Committing, 0, null);
            if (source != null)
                sp.AddMigrationSource(m);
            await FinishCommitAsync(m).ConfigureAwait(false);
            return;
        }
        string linked = smeta == null ? "" : sp.ImagePropOrEmpty(smeta.Id, ImageMigration.Props.Destination);
        string sourceState = smeta == null ? "" : sp.ImagePropOrEmpty(smeta.Id, ImageMigration.Props.State);
        if (source == null || linked != destName || sourceState == "aborting")
        {
            // preparing (the source never named this destination) or aborting: the destination goes.
            var m = new ImageMigration(source ?? new Image(sp, uint.MaxValue, scont, simage), dest, ImageMigrationState.Aborting, 0, null);
            if (source != null && linked == destName)
            {
                sp.AddMigrationSource(m);
                await FinishAbortAsync(m).ConfigureAwait(false);
            }
            else
            {
                await dp.RemoveImageLockedAsync(destId).ConfigureAwait(false);
            }
            return;
        }
        long cursor = long.TryParse(dp.ImagePropOrEmpty(destId, ImageMigration.Props.Cursor), out long c) ? c : 0;
        var s = state switch
        {
            "executing" => ImageMigrationState.Executing,
            "executed" => ImageMigrationState.Executed,
            "error" => ImageMigrationState.Error,
            _ => ImageMigrationState.Prepared,
        };
        // The lag mark: durable writes may have been acknowledged with destination halves a crash
        // lost, anywhere behind the cursor, so the copy starts again from chunk 0 (an executed
        // migration copies again before commit). A clean stop cleared the mark.
        bool lagged = dp.ImagePropOrEmpty(destId, ImageMigration.Props.Lag) == "1";
        if (lagged)
        {
            cursor = 0;
            if (s == ImageMigrationState.Executed)
                s = ImageMigrationState.Executing;
        }
        var mig = new ImageMigration(source, dest, s, cursor, s == ImageMigrationState.Error ? dp.ImagePropOrEmpty(destId, ImageMigration.Props.Error) : null);
        if (lagged)
            mig.LagArmedAtOpen();
        dp.AddMigrationDestination(mig);
        sp.AddMigrationSource(mig);
        lock (_migrations)
            _migrations.Add(mig);
        if (s == ImageMigrationState.Executing)
            mig.StartJob(CopyAsync);
        EmitMigration(ImageMigrationRasIds.Resumed, RasSeverity.Notice, mig, $"migration {mig.SourceName} -> {mig.DestinationName} resumed {ImageMigration.Name(s)} at chunk {cursor}" +
            (lagged ? " (the engine did not stop cleanly while clients wrote: the copy starts again from chunk 0, since the destination may lack writes the source has)" : ""));
    }

    /// <summary>Stops every background copy (engine stop): each resumes at its saved cursor on the next start.</summary>
    private async Task StopMigrationJobsAsync()
    {
        List<ImageMigration> all;
        lock (_migrations)
            all = _migrations.ToList();
        foreach (var m in all)
        {
            await m.StopJobAsync().ConfigureAwait(false);
            if (m.State is ImageMigrationState.Committing or ImageMigrationState.Committed or ImageMigrationState.Aborting)
                continue;
            try
            {
                // A clean stop leaves no lag: the next start resumes at the cursor, not at chunk 0.
                // Bounded: a write held at a frozen destination would keep the quiesce waiting, and
                // a mark left set costs only a copy from chunk 0.
                await m.CloseLagAsync().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is StoreException or IOException or Interop.DeviceException or NotFoundException or TimeoutException)
            {
                // The mark stays: the next start copies from chunk 0 again, which loses nothing.
            }
        }
        List<ImageImport> imports;
        lock (_migrations)
            imports = _imports.ToList();
        foreach (var i in imports)
        {
            await i.StopJobAsync().ConfigureAwait(false);
            if (i.Source != null)
                await i.Source.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Refuses destroying a pool that holds either end of a migration.</summary>
    public void ThrowIfPoolMigrating(string label)
    {
        ImageMigration? m;
        ImageImport? i;
        lock (_migrations)
        {
            m = _migrations.FirstOrDefault(x => x.Source.Pool.Label == label || x.Destination.Pool.Label == label);
            i = _imports.FirstOrDefault(x => x.Destination.Pool.Label == label);
        }
        if (i != null)
            throw new BusyException($"pool '{label}' holds image {i.DestinationName}, being imported from {i.SourceName}; commit or abort the import first");
        if (m != null)
            throw new BusyException($"pool '{label}' holds an end of migration {m.SourceName} -> {m.DestinationName} ({ImageMigration.Name(m.State)}); commit or abort it first");
    }

    /// <summary>The image a committed migration left this name to ("pool/container/image"), or null.</summary>
    public (string Pool, string Container, string Image)? ResolveAlias(string name)
    {
        foreach (var p in OpenPools())
        {
            foreach (var (id, alias) in p.ImagesWithProp(ImageMigration.Props.Alias))
            {
                if (alias == name && p.ImageNames(id) is { } n)
                    return (p.Label, n.Container, n.Label);
            }
        }
        return null;
    }

    /// <summary>The migrated source name that resolves to this image, or null.</summary>
    public string? AliasOf(string pool, string container, string image)
    {
        var p = OpenPools().FirstOrDefault(x => x.Label == pool);
        if (p == null)
            return null;
        try
        {
            string a = p.ImagePropOrEmpty(p.FindImage(container, image).Id, ImageMigration.Props.Alias);
            return a.Length == 0 ? null : a;
        }
        catch (NotFoundException)
        {
            return null;
        }
    }

    /// <summary>The status of the migration with this image at either end, or null.</summary>
    public ImageMigrationStatus? MigrationStatusOrNull(string image) => FindImport(image)?.Status() ?? FindMigration(image)?.Status();

    /// <summary>`image migrate remove-alias IMAGE`: the source's old name stops resolving.</summary>
    public async Task RemoveAliasAsync(string image)
    {
        var (pool, cont, label) = ParseImageName(image, "image");
        var p = await OpenPoolAsync(pool).ConfigureAwait(false);
        var meta = p.FindImage(cont, label);
        if (p.ImagePropOrEmpty(meta.Id, ImageMigration.Props.Alias).Length == 0)
            throw new NotFoundException($"image {UserText.Quote(image)} has no alias");
        await p.SetImagePropInternalAsync(meta.Id, ImageMigration.Props.Alias, "").ConfigureAwait(false);
    }

    private void EmitMigration(string id, RasSeverity severity, ImageMigration m, string message) =>
        Ras.Emit(new RasEvent(id, severity, RasType.StateChange, message, Pool: m.Source.Pool.Label, Image: m.Source.Label));
}
