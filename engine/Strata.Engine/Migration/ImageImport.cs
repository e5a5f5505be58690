using System.Diagnostics;
using Strata.Engine.Pools;

namespace Strata.Engine.Migration;

/// <summary>A read of an import's source failed: the client sees EIO, the job pauses until the source answers again.</summary>
public sealed class ImportSourceLostException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>
/// An import into a destination image from outside (docs/migration.md, "Import"): the destination
/// is served at once; a chunk is imported once the copy or a client write brought it whole into
/// the destination (below the cursor, mapped, or marked since); reads of other chunks go to the
/// source, a client write copies its chunk up first.
/// </summary>
public sealed class ImageImport
{
    private readonly object _sync = new();
    private readonly HashSet<long> _imported = new();
    private ImageMigrationState _state;
    private string? _error;
    private bool _paused;
    private long _cursor;
    private long _bytesCopied;
    private long _started;
    private Task? _job;
    private CancellationTokenSource? _stop;

    internal ImageImport(string spec, ImportSource? source, Image destination, ImageMigrationState state, long cursor, string? error)
    {
        Spec = spec;
        Source = source;
        Destination = destination;
        _state = state;
        _cursor = cursor;
        _error = error;
    }

    public string Spec { get; }

    /// <summary>Null while the source could not be opened (after a restart): reads of chunks not imported fail with EIO.</summary>
    internal ImportSource? Source { get; set; }

    public Image Destination { get; }

    public string DestinationName => $"{Destination.Pool.Label}/{Destination.Container}/{Destination.Label}";

    public string SourceName => Source?.Describe ?? $"import source {Spec}";

    public ImageMigrationState State
    {
        get
        {
            lock (_sync)
                return _state;
        }
    }

    internal long Cursor => Interlocked.Read(ref _cursor);

    internal void SetState(ImageMigrationState s, string? error = null)
    {
        lock (_sync)
            (_state, _error) = (s, error);
    }

    internal void SetPaused(bool paused, string? reason)
    {
        lock (_sync)
            (_paused, _error) = (paused, reason);
    }

    internal bool IsImported(long index)
    {
        if (index < Cursor)
            return true;
        lock (_sync)
            if (_imported.Contains(index))
                return true;
        return Destination.IsChunkMapped(index);
    }

    internal void MarkImported(long index)
    {
        lock (_sync)
            _imported.Add(index);
    }

    internal void Advanced(long cursor, long bytes)
    {
        Interlocked.Exchange(ref _cursor, cursor);
        Interlocked.Add(ref _bytesCopied, bytes);
        lock (_sync)
            _imported.RemoveWhere(i => i < cursor);
    }

    /// <summary>Reads from the source, as a lost source (EIO) when it fails.</summary>
    internal async Task ReadSourceAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        var s = Source ?? throw new ImportSourceLostException($"{SourceName} is not connected; the import of {DestinationName} is paused");
        try
        {
            await s.ReadAsync(offset, destination, ct).ConfigureAwait(false);
        }
        catch (IOException e) when (e is not ImportSourceLostException)
        {
            throw new ImportSourceLostException($"{SourceName}: {e.Message}", e);
        }
    }

    public ImageMigrationStatus Status()
    {
        ImageMigrationState s;
        string? error;
        bool paused;
        lock (_sync)
            (s, error, paused) = (_state, _error, _paused);
        int cs = Destination.ChunkSizeOrZero();
        long chunks = SizeLimits.ChunkCount(Destination.SourceSize, cs);
        long done = s == ImageMigrationState.Executed ? chunks : Math.Min(Cursor, chunks);
        long bytes = Interlocked.Read(ref _bytesCopied);
        long started = Interlocked.Read(ref _started);
        double seconds = started == 0 ? 0 : Stopwatch.GetElapsedTime(started).TotalSeconds;
        double rate = seconds > 0 ? bytes / seconds : 0;
        double? eta = s == ImageMigrationState.Executing && rate > 0 && done > 0 ? (chunks - done) * (double)cs * bytes / Math.Max(1, done * (double)cs) / rate : null;
        return new ImageMigrationStatus(SourceName, DestinationName, ImageMigration.Name(s), done, chunks, bytes, rate, eta,
            paused ? $"paused, source lost: {error}" : error);
    }

    internal void StartJob(Func<ImageImport, CancellationToken, Task> body)
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

    internal Task Job
    {
        get
        {
            lock (_sync)
                return _job ?? Task.CompletedTask;
        }
    }
}
