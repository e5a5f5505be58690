using System.Diagnostics;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>Ceph's migration states (docs/migration.md, "Image migration").</summary>
public enum ImageMigrationState { Prepared, Executing, Executed, Committing, Committed, Aborting, Error }

/// <summary>What `image migrate status` shows.</summary>
public sealed record ImageMigrationStatus(string Source, string Destination, string State, long ChunksDone, long Chunks,
    long BytesCopied, double RateBytesPerSecond, double? EtaSeconds, string? Error)
{
    public int PercentComplete => Chunks == 0 ? 100 : (int)(ChunksDone * 100 / Chunks);

    /// <summary>"executing (32% complete)", "prepared", ...</summary>
    public string Summary => State == "executing" ? $"executing ({PercentComplete}% complete)" : State;
}

/// <summary>
/// One live migration of a source image to a destination image (same or another pool). The
/// source pool routes every I/O of the source through it (<see cref="Pool.MigrationOf"/>):
/// reads stay on the source until commit, writes and trims reach both, source first, under the
/// source chunk locks; after commit every I/O goes to the destination. The durable state is
/// the images' migration.* properties (<see cref="Props"/>).
/// </summary>
public sealed class ImageMigration
{
    /// <summary>Reserved image property names (not settable through `image set-prop`, which takes user.* only).</summary>
    public static class Props
    {
        public const string Destination = "migration.destination";
        public const string Source = "migration.source";
        public const string State = "migration.state";
        public const string Cursor = "migration.cursor";
        public const string Error = "migration.error";
        public const string Alias = "migration.alias";
        public const string Import = "migration.import";
        /// <summary>"1" while durable mirrored writes may be acknowledged with the destination's half writeback (<see cref="MirrorWriteAsync"/>).</summary>
        public const string Lag = "migration.lag";
    }

    /// <summary>Chunks copied between cursor commits (each preceded by a flush of the destination pool).</summary>
    internal const int CursorEvery = 256;

    private readonly object _sync = new();
    private ImageMigrationState _state;
    private string? _error;
    private long _cursor;
    private long _bytesCopied;
    private long _started;
    private Task? _job;
    private CancellationTokenSource? _stop;

    internal ImageMigration(Image source, Image destination, ImageMigrationState state, long cursor, string? error)
    {
        Source = source;
        // Through the destination pool's gate like any handle (a barrier, prepare or read-only state
        // there holds or refuses mirrored writes and the copy), unless both ends share one pool: the
        // source's pass covers it, and entering the same gate again could wait on a close that waits
        // for that pass.
        Destination = new Image(destination.Pool, destination.Id, destination.Container, destination.Label,
            ungated: ReferenceEquals(source.Pool, destination.Pool));
        Forward = new Image(destination.Pool, destination.Id, destination.Container, destination.Label);
        _state = state;
        _cursor = cursor;
        _error = error;
        _frontier = state is ImageMigrationState.Prepared or ImageMigrationState.Executing or ImageMigrationState.Error ? cursor : long.MaxValue;
    }

    /// <summary>The source image, a handle of the engine's own (client handles route through the pool's table).</summary>
    public Image Source { get; }

    /// <summary>The destination image, a handle of the engine's own (the destination refuses other opens); gated unless in the source's pool.</summary>
    public Image Destination { get; }

    /// <summary>The destination as the source's old handles reach it after commit (through the destination pool's gate).</summary>
    internal Image Forward { get; }

    public string SourceName => $"{Source.Pool.Label}/{Source.Container}/{Source.Label}";

    public string DestinationName => $"{Destination.Pool.Label}/{Destination.Container}/{Destination.Label}";

    public ImageMigrationState State
    {
        get
        {
            lock (_sync)
                return _state;
        }
    }

    /// <summary>True once commit switched every handle to the destination.</summary>
    internal bool Committed => State is ImageMigrationState.Committed;

    internal long Cursor => Interlocked.Read(ref _cursor);

    internal static string Name(ImageMigrationState s) => s.ToString().ToLowerInvariant();

    internal void SetState(ImageMigrationState s, string? error = null)
    {
        lock (_sync)
        {
            _state = s;
            _error = error;
        }
    }

    public ImageMigrationStatus Status()
    {
        ImageMigrationState s;
        string? error;
        lock (_sync)
            (s, error) = (_state, _error);
        long chunks = SizeLimits.ChunkCount(Source.Pool.State == PoolStatus.Closed || s == ImageMigrationState.Committed ? 0 : SafeSize(), Source.ChunkSizeOrZero());
        long done = s is ImageMigrationState.Executed or ImageMigrationState.Committing or ImageMigrationState.Committed ? chunks : Math.Min(Cursor, chunks);
        long bytes = Interlocked.Read(ref _bytesCopied);
        long started = Interlocked.Read(ref _started);
        double seconds = started == 0 ? 0 : Stopwatch.GetElapsedTime(started).TotalSeconds;
        double rate = seconds > 0 ? bytes / seconds : 0;
        double? eta = null;
        if (s == ImageMigrationState.Executing && rate > 0)
            eta = RemainingMappedBytes() / rate;
        return new ImageMigrationStatus(SourceName, DestinationName, Name(s), done, chunks, bytes, rate, eta, error);
    }

    private long SafeSize()
    {
        try
        {
            return Source.SourceSize;
        }
        catch (NotFoundException)
        {
            return 0;
        }
    }

    private long RemainingMappedBytes()
    {
        try
        {
            return Source.MappedBytesFrom(Cursor);
        }
        catch (NotFoundException)
        {
            return 0;
        }
    }

    // The copy's frontier (docs/migration.md, "A mirrored write's cost"): every source chunk at or past
    // it is still to be copied, by the running pass or by the next one (which starts at the cursor, at
    // most here). A pass sets it to its start, then past each chunk before it looks at the chunk.
    private long _frontier;

    /// <summary>
    /// Whether a client write of source chunks <paramref name="first"/>..<paramref name="last"/> may go to
    /// the source alone (called under their locks, before the write): the copy has not looked at any of
    /// them yet in its pass, and each is mapped, so the copy will read it whole from the source, this
    /// write included, and write it to the destination before the migration can be executed. A chunk the
    /// source does not map is mirrored: the copy checks for holes without the lock, and a hole it passes
    /// is not copied. Mapped stays mapped while the locks are held, and the frontier is read with a full
    /// fence after they were taken, so a copy that moves past a chunk after this read sees it mapped.
    /// </summary>
    internal bool CopiesLater(long first, long last)
    {
        if (first < Interlocked.Read(ref _frontier))
            return false;
        for (long i = first; i <= last; i++)
            if (!Source.IsChunkMapped(i))
                return false;
        return true;
    }

    /// <summary>A copy pass starts at chunk <paramref name="start"/>: every chunk from there is copied again.</summary>
    internal void CopyStarts(long start) => Interlocked.Exchange(ref _frontier, start);

    /// <summary>The copy is about to look at chunk <paramref name="index"/> (a full fence before it reads the chunk's map).</summary>
    internal void CopyReaches(long index) => Interlocked.Exchange(ref _frontier, index + 1);

    // The destination's lag (docs/migration.md, "A mirrored write's cost"): Off, Arming (the durable
    // mark is being committed), Armed (durable writes take the destination's half as writeback), or
    // Closed (commit or a clean stop began: every half durable again, never armed again).
    private const int LagOff = 0, LagArming = 1, LagArmed = 2, LagClosed = 3;
    private int _lag;
    private Task _arming = Task.CompletedTask;

    /// <summary>
    /// Mirrors a client write the source just took (called under the source chunk locks). A durable
    /// write's destination half is a writeback write once the destination carries the durable mark
    /// <see cref="Props.Lag"/>: the write is acknowledged when the source's half is durable, which
    /// holds every acknowledged write until commit (abort keeps the source). A crash may lose
    /// destination halves behind the copy's cursor, so a resume that finds the mark copies from
    /// chunk 0 again (StorageEngine.ResumeOneAsync); commit and a clean stop flush the destination
    /// and clear the mark first (<see cref="CloseLagAsync"/>). The first durable write arms the mark
    /// in the background and is itself mirrored durably.
    /// </summary>
    internal ValueTask MirrorWriteAsync(long offset, ReadOnlyMemory<byte> data, bool durable)
    {
        if (durable)
        {
            int lag = Volatile.Read(ref _lag);
            if (lag == LagArmed)
                return Destination.WriteAsync(offset, data, durable: false);
            if (lag == LagOff)
                ArmLag();
        }
        return Destination.WriteAsync(offset, data, durable);
    }

    /// <summary>Whether the durable lag mark is set and durable writes take the destination's half as writeback now.</summary>
    internal bool IsLagArmed => Volatile.Read(ref _lag) == LagArmed;

    /// <summary>The commit of the mark, once a durable write started it (tests wait for it).</summary>
    internal Task ArmingCommit
    {
        get
        {
            lock (_sync)
                return _arming;
        }
    }

    /// <summary>At a resume that found the mark: it is durable already.</summary>
    internal void LagArmedAtOpen() => SetLagIf(LagOff, LagArmed);

    private void SetLagIf(int from, int to)
    {
        lock (_sync)
            if (_lag == from)
                Volatile.Write(ref _lag, to);
    }

    /// <summary>Closes the lag for good; returns whether it was armed or arming, and the arming commit to wait for.</summary>
    private (bool Was, Task Arming) CloseLag()
    {
        lock (_sync)
        {
            bool was = _lag is LagArming or LagArmed;
            Volatile.Write(ref _lag, LagClosed);
            return (was, _arming);
        }
    }

    private void ArmLag()
    {
        lock (_sync)
        {
            if (_lag != LagOff || _state is not (ImageMigrationState.Prepared or ImageMigrationState.Executing or ImageMigrationState.Executed))
                return;
            Volatile.Write(ref _lag, LagArming);
            // Not awaited by the write, which holds source chunk locks; the commit takes no lock of the image.
            _arming = Task.Run(async () =>
            {
                try
                {
                    await Destination.Pool.Log.CommitAsync(MetaRecords.ImageSetProp(Destination.Id, Props.Lag, "1")).ConfigureAwait(false);
                    SetLagIf(LagArming, LagArmed);
                }
                catch (Exception e) when (e is StoreException or IOException or Strata.Interop.DeviceException)
                {
                    SetLagIf(LagArming, LagOff);
                }
            });
        }
    }

    /// <summary>
    /// Commit and a clean stop: from here every mirrored durable write is durable on both sides;
    /// the writes acknowledged with a writeback destination half are made durable by a flush of the
    /// destination pool, then the mark is cleared. Runs under the source's quiesce for the switch,
    /// so no mirrored write is between its two halves when the mode changes.
    /// </summary>
    internal async Task CloseLagAsync()
    {
        lock (_sync)
        {
            if (_lag is LagOff or LagClosed)
            {
                // Never armed: no write took a writeback half, none will.
                Volatile.Write(ref _lag, LagClosed);
                return;
            }
        }
        (bool Was, Task Arming) closed = (false, Task.CompletedTask);
        await Source.Pool.QuiescedAsync(Source.Id, () =>
        {
            closed = CloseLag();
            return Task.CompletedTask;
        }).ConfigureAwait(false);
        await closed.Arming.ConfigureAwait(false);
        if (!closed.Was)
            return;
        await Destination.Pool.Log.FlushAsync().ConfigureAwait(false);
        await Destination.Pool.Log.CommitAsync(MetaRecords.ImageSetProp(Destination.Id, Props.Lag, "")).ConfigureAwait(false);
    }

    /// <summary>Abort: never armed again, and no mark commit still running when the destination goes.</summary>
    internal Task StopLagAsync() => CloseLag().Arming;

    /// <summary>Mirrors a client trim the source just did (called under the source image's locks).</summary>
    internal Task MirrorTrimAsync(long offset, long length) => Destination.TrimAsync(offset, length);

    /// <summary>Starts the background copy from the cursor; a no-op when it runs already.</summary>
    internal void StartJob(Func<ImageMigration, CancellationToken, Task> body)
    {
        lock (_sync)
        {
            if (_job is { IsCompleted: false })
                return;
            _stop = new CancellationTokenSource();
            Interlocked.Exchange(ref _started, Stopwatch.GetTimestamp());
            Interlocked.Exchange(ref _bytesCopied, 0);
            var ct = _stop.Token;
            _job = Task.Run(() => body(this, ct), CancellationToken.None);
        }
    }

    /// <summary>Stops the background copy (engine stop, abort) and waits for it; the cursor stays where it was saved.</summary>
    internal async Task StopJobAsync()
    {
        Task? job;
        lock (_sync)
        {
            job = _job;
            _stop?.Cancel();
        }
        if (job != null)
        {
            try
            {
                await job.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    /// <summary>The running copy, for callers that wait for it (status --wait, tests).</summary>
    internal Task Job
    {
        get
        {
            lock (_sync)
                return _job ?? Task.CompletedTask;
        }
    }

    private readonly SortedSet<long> _diverged = [];

    /// <summary>
    /// A mirrored write failed on one side and the chunk could not be copied again at once: it may
    /// differ between source and destination until the copy job copies it again (commit waits).
    /// Kept in memory: after a crash the write was never acknowledged, and either image's bytes are
    /// what a crash may leave of it.
    /// </summary>
    internal void NoteDiverged(long chunk)
    {
        lock (_sync)
            _diverged.Add(chunk);
    }

    /// <summary>The first chunk noted by <see cref="NoteDiverged"/>, or null.</summary>
    internal long? FirstDiverged
    {
        get
        {
            lock (_sync)
                return _diverged.Count == 0 ? null : _diverged.Min;
        }
    }

    /// <summary>Clears one noted chunk once the copy job copied it again.</summary>
    internal void Converged(long chunk)
    {
        lock (_sync)
            _diverged.Remove(chunk);
    }

    internal void Advanced(long cursor, long bytes)
    {
        Interlocked.Exchange(ref _cursor, cursor);
        Interlocked.Add(ref _bytesCopied, bytes);
    }
}
