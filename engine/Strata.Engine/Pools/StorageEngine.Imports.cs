using System.Buffers;
using System.Globalization;
using Strata.Engine.Migration;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// Import from outside (`image migrate prepare --import-only --source-spec JSON DST`;
/// docs/migration.md, "Import"): the destination is served at once, execute copies the rest.
/// </summary>
public sealed partial class StorageEngine
{
    /// <summary>Opens the source (a malformed spec or an unreachable source is refused before anything is created), then creates DST at its size.</summary>
    public async Task<ImageMigrationStatus> PrepareImportAsync(string spec, string destination, int chunkSize = 0, int rf = 0)
    {
        var (dpool, dcont, dimage) = ParseImageName(destination, "destination");
        ImportSource source;
        try
        {
            source = await ImportSource.OpenAsync(spec).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            throw new InvalidRequestException($"import source unreachable, nothing was created: {e.Message}");
        }
        await _migrationLock.WaitAsync().ConfigureAwait(false);
        try
        {
            var dp = await OpenPoolAsync(dpool).ConfigureAwait(false);
            dp.ThrowIfNotWritable();
            CheckDestination(dp, chunkSize, rf);
            long size = source.Size;
            if (size <= 0)
                throw new InvalidRequestException($"{source.Describe} is empty; nothing to import");
            long free = dp.Query().FreeBytes, need = size * dp.Rf;
            if (need > free)
                throw new NoSpaceException($"no room in pool '{dpool}' for the import of {source.Describe}: it is {size} bytes, {need} bytes at rf {dp.Rf} if fully allocated, and the pool has {free} bytes free; nothing was created");
            // Created with its import props (one commit): a crash never leaves a plain empty image behind.
            var dest = await dp.CreateImageAsync(dcont, dimage, size, chunkSize,
                [(ImageMigration.Props.Import, spec), (ImageMigration.Props.State, "prepared")]).ConfigureAwait(false);
            var imp = new ImageImport(spec, source, dest, ImageMigrationState.Prepared, 0, null);
            dp.SetImport(dest.Id, imp);
            lock (_migrations)
                _imports.Add(imp);
            EmitImport(ImageMigrationRasIds.Prepared, RasSeverity.Notice, imp, $"image {destination} prepared for import from {source.Describe}");
            return imp.Status();
        }
        catch
        {
            await source.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        finally
        {
            _migrationLock.Release();
        }
    }

    private async Task<ImageMigrationStatus> ExecuteImportAsync(ImageImport imp)
    {
        var s = imp.State;
        if (s is not (ImageMigrationState.Prepared or ImageMigrationState.Executing or ImageMigrationState.Error))
            throw new InvalidRequestException($"import into {imp.DestinationName} is {ImageMigration.Name(s)}; execute needs prepared (or error, to retry)");
        if (s != ImageMigrationState.Executing)
        {
            await imp.Destination.Pool.SetImagePropInternalAsync(imp.Destination.Id, ImageMigration.Props.State, "executing").ConfigureAwait(false);
            imp.SetState(ImageMigrationState.Executing);
        }
        imp.StartJob(ImportAsync);
        return imp.Status();
    }

    /// <summary>
    /// The import job: chunks from the cursor, each under the destination chunk's lock, skipped when
    /// a client write imported it already, all-zero chunks left unmapped. A source that stops
    /// answering pauses the job (RAS image_migration_source_lost) until it answers again.
    /// </summary>
    private async Task ImportAsync(ImageImport imp, CancellationToken ct)
    {
        var dest = imp.Destination;
        var dp = dest.Pool;
        var throttle = new MigrationThrottle(dp);
        int cs = dest.ChunkSizeOrZero();
        long chunks = SizeLimits.ChunkCount(dest.SourceSize, cs);
        var buffer = ArrayPool<byte>.Shared.Rent(cs);
        try
        {
            int since = 0;
            for (long i = imp.Cursor; i < chunks; i++)
            {
                ct.ThrowIfCancellationRequested();
                long bytes;
                try
                {
                    await throttle.TakeAsync(cs, ct).ConfigureAwait(false);
                    bytes = await dest.ImportChunkAsync(imp, i, buffer, ct).ConfigureAwait(false);
                }
                catch (ImportSourceLostException e)
                {
                    await WaitForSourceAsync(imp, e, ct).ConfigureAwait(false);
                    i--;
                    continue;
                }
                imp.Advanced(i + 1, bytes);
                if (++since >= ImageMigration.CursorEvery)
                {
                    since = 0;
                    await dp.Log.FlushAsync().ConfigureAwait(false);
                    await dp.SetImagePropInternalAsync(dest.Id, ImageMigration.Props.Cursor, (i + 1).ToString(CultureInfo.InvariantCulture)).ConfigureAwait(false);
                }
            }
            await dp.Log.FlushAsync().ConfigureAwait(false);
            await dp.Log.CommitAsync([
                MetaRecords.ImageSetProp(dest.Id, ImageMigration.Props.Cursor, chunks.ToString(CultureInfo.InvariantCulture)),
                MetaRecords.ImageSetProp(dest.Id, ImageMigration.Props.State, "executed")]).ConfigureAwait(false);
            imp.SetState(ImageMigrationState.Executed);
            EmitImport(ImageMigrationRasIds.Executed, RasSeverity.Notice, imp, $"import into {imp.DestinationName} executed: every chunk imported");
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception e) when (e is StoreException or IOException)
        {
            imp.SetState(ImageMigrationState.Error, e.Message);
            EmitImport(ImageMigrationRasIds.Failed, RasSeverity.Error, imp, $"import into {imp.DestinationName} stopped at chunk {imp.Cursor}: {e.Message}");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Pauses until the source answers again: reconnects with a growing interval (0.1 s to 5 s).</summary>
    private async Task WaitForSourceAsync(ImageImport imp, Exception lost, CancellationToken ct)
    {
        imp.SetPaused(true, lost.Message);
        EmitImport(ImageMigrationRasIds.SourceLost, RasSeverity.Warning, imp, $"import into {imp.DestinationName} paused: {lost.Message}; it resumes when the source answers (reads of chunks not imported yet fail with EIO meanwhile)");
        var wait = TimeSpan.FromMilliseconds(100);
        while (true)
        {
            await Task.Delay(wait, ct).ConfigureAwait(false);
            try
            {
                if (imp.Source == null)
                    imp.Source = await ImportSource.OpenAsync(imp.Spec, ct).ConfigureAwait(false);
                else
                    await imp.Source.ReconnectAsync(ct).ConfigureAwait(false);
                break;
            }
            catch (IOException)
            {
                wait = TimeSpan.FromMilliseconds(Math.Min(5000, wait.TotalMilliseconds * 2));
            }
        }
        imp.SetPaused(false, null);
        EmitImport(ImageMigrationRasIds.SourceBack, RasSeverity.Notice, imp, $"import into {imp.DestinationName} resumed: {imp.SourceName} answers again");
    }

    private async Task<ImageMigrationStatus> CommitImportAsync(ImageImport imp)
    {
        var st = imp.Status();
        if (imp.State != ImageMigrationState.Executed)
            throw new InvalidRequestException($"cannot commit the import into {imp.DestinationName}: it is {st.Summary}, {st.ChunksDone} of {st.Chunks} chunks imported; commit needs executed");
        var dp = imp.Destination.Pool;
        await dp.Log.FlushAsync().ConfigureAwait(false);
        // Under all of the image's locks: no read is choosing between source and destination meanwhile.
        await dp.QuiescedAsync(imp.Destination.Id, async () =>
        {
            await dp.Log.CommitAsync([
                MetaRecords.ImageSetProp(imp.Destination.Id, ImageMigration.Props.Import, ""),
                MetaRecords.ImageSetProp(imp.Destination.Id, ImageMigration.Props.State, ""),
                MetaRecords.ImageSetProp(imp.Destination.Id, ImageMigration.Props.Cursor, "")]).ConfigureAwait(false);
            dp.SetImport(imp.Destination.Id, null);
        }).ConfigureAwait(false);
        imp.SetState(ImageMigrationState.Committed);
        lock (_migrations)
            _imports.Remove(imp);
        if (imp.Source != null)
            await imp.Source.DisposeAsync().ConfigureAwait(false);
        EmitImport(ImageMigrationRasIds.Committed, RasSeverity.Notice, imp, $"import into {imp.DestinationName} committed; the source is no longer used");
        return imp.Status();
    }

    private async Task<ImageMigrationStatus> AbortImportAsync(ImageImport imp)
    {
        imp.SetState(ImageMigrationState.Aborting);
        await imp.StopJobAsync().ConfigureAwait(false);
        var dp = imp.Destination.Pool;
        await dp.QuiescedAsync(imp.Destination.Id, async () =>
        {
            dp.SetImport(imp.Destination.Id, null);
            await dp.RemoveImageInQuiesceAsync(imp.Destination.Id).ConfigureAwait(false);
        }).ConfigureAwait(false);
        lock (_migrations)
            _imports.Remove(imp);
        if (imp.Source != null)
            await imp.Source.DisposeAsync().ConfigureAwait(false);
        EmitImport(ImageMigrationRasIds.Aborted, RasSeverity.Notice, imp, $"import into {imp.DestinationName} aborted; the destination was removed");
        return imp.Status();
    }

    private async Task ResumeImportAsync(Pool dp, uint destId, string spec)
    {
        var dest = dp.HandleById(destId);
        string state = dp.ImagePropOrEmpty(destId, ImageMigration.Props.State);
        long cursor = long.TryParse(dp.ImagePropOrEmpty(destId, ImageMigration.Props.Cursor), out long c) ? c : 0;
        var s = state switch
        {
            "executing" => ImageMigrationState.Executing,
            "executed" => ImageMigrationState.Executed,
            _ => ImageMigrationState.Prepared,
        };
        ImportSource? source = null;
        string? error = null;
        try
        {
            source = await ImportSource.OpenAsync(spec).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidRequestException)
        {
            error = e.Message;
        }
        var imp = new ImageImport(spec, source, dest, s, cursor, error);
        dp.SetImport(destId, imp);
        lock (_migrations)
            _imports.Add(imp);
        if (s == ImageMigrationState.Executing)
            imp.StartJob(ImportAsync); // a source still gone pauses it at the first chunk it needs
        EmitImport(ImageMigrationRasIds.Resumed, RasSeverity.Notice, imp, $"import into {imp.DestinationName} resumed {ImageMigration.Name(s)} at chunk {cursor}{(error != null ? $" (source not answering: {error})" : "")}");
    }

    private void EmitImport(string id, RasSeverity severity, ImageImport imp, string message) =>
        Ras.Emit(new RasEvent(id, severity, RasType.StateChange, message, Pool: imp.Destination.Pool.Label, Image: imp.Destination.Label));
}
