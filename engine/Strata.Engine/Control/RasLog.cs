using System.Diagnostics.Tracing;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Strata.Engine.Store;

namespace Strata.Engine.Control;

/// <summary>
/// The durable RAS log: one JSON object per line, rotated by size to events.jsonl.1 .. .N.
/// <see cref="Emit(RasEvent)"/> never touches the disk: the storage core raises events from I/O
/// continuations, possibly on a device poller thread, which must not wait for an fsync. It
/// numbers the event, hands it to live subscribers (`strata system events --follow`) and the
/// EventSource, and queues it for one background writer thread, which appends whatever has
/// queued up and fsyncs once per batch. Order is the sequence order; nothing is dropped: when
/// the queue is full (the disk is far behind) the emitter waits. <see cref="FlushAsync"/> and
/// <see cref="Dispose"/> (clean stop) return once everything emitted before them is on disk.
/// Sequence numbers continue across restarts.
/// </summary>
public sealed class RasLog : IRasSink, IDisposable
{
    /// <summary>Events queued for the writer before an emitter has to wait.</summary>
    public const int QueueCapacity = 16384;

    private const int MaxBatch = 1024;

    private readonly object _sync = new();      // sequence numbers, queue order, subscribers
    private readonly object _fileLock = new();  // the file: the writer's appends and rotation, ReadAllAsync
    private readonly string _path;
    private readonly long _maxBytes;
    private readonly int _keep;
    private readonly string _host = Environment.MachineName;
    private readonly int _pid = Environment.ProcessId;
    private readonly List<Channel<RasRecord>> _subscribers = new();
    private readonly Channel<Pending> _queue = Channel.CreateBounded<Pending>(
        new BoundedChannelOptions(QueueCapacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly Thread _writer;
    private FileStream _file;
    private long _seq;
    private bool _stopped;

    public RasLog(string path, long maxBytes = 16 << 20, int keep = 4)
    {
        _path = Path.GetFullPath(path);
        _maxBytes = Math.Max(4096, maxBytes);
        _keep = Math.Max(1, keep);
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        _seq = ReadLastSeq();
        _file = OpenForAppend();
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "strata-ras-writer" };
        _writer.Start();
    }

    public string FilePath => _path;

    /// <summary>Raised when an event is emitted (queued for the log; metrics count them by severity).</summary>
    public event Action<RasRecord>? Emitted;

    public void Emit(RasEvent e) => Emit(e, container: null, data: null);

    public RasRecord Emit(RasEvent e, string? container, IReadOnlyDictionary<string, string>? data)
    {
        RasRecord rec;
        lock (_sync)
        {
            rec = new RasRecord
            {
                Seq = ++_seq,
                Id = e.Id,
                Timestamp = FormatTimestamp(e.Timestamp),
                Host = _host,
                Type = e.Type == RasType.StateChange ? "STATE_CHANGE" : "INFO_ONLY",
                Severity = e.Severity.ToString().ToUpperInvariant(),
                Msg = e.Message,
                Pid = _pid,
                Tid = Environment.CurrentManagedThreadId,
                Pool = e.Pool,
                Cont = container,
                Image = e.Image,
                Target = e.Target,
                Device = e.Device,
                Offset = e.Offset,
                Data = data,
            };
            // After Dispose the log is closed: the event still reaches the EventSource.
            if (!_stopped)
            {
                Enqueue(new Pending(JsonSerializer.SerializeToUtf8Bytes(rec, Api.Json), null));
                foreach (var s in _subscribers)
                    s.Writer.TryWrite(rec);
            }
        }
        RasEventSource.Log.Event(rec.Id, rec.Severity, rec.Type, rec.Msg, rec.Pool ?? "", rec.Cont ?? "", rec.Image ?? "", rec.Seq);
        Emitted?.Invoke(rec);
        return rec;
    }

    /// <summary>Completes when every event emitted before the call is in the file and fsynced.</summary>
    public Task FlushAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sync)
        {
            if (_stopped)
                return Task.CompletedTask;
            Enqueue(new Pending(null, done));
        }
        return done.Task;
    }

    /// <summary>Events in the log (oldest rotated file first), filtered; everything emitted before the call is included.</summary>
    public async Task<IReadOnlyList<RasRecord>> ReadAllAsync(DateTimeOffset? since = null, string? minSeverity = null)
    {
        await FlushAsync().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var result = new List<RasRecord>();
        lock (_fileLock)
        {
            for (int i = _keep; i >= 0; i--)
            {
                string p = i == 0 ? _path : $"{_path}.{i}";
                if (!File.Exists(p))
                    continue;
                using var fs = new FileStream(p, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                using var reader = new StreamReader(fs, Encoding.UTF8);
                while (reader.ReadLine() is { } line)
                {
                    var r = TryParse(line);
                    if (r != null && Matches(r, since, minSeverity))
                        result.Add(r);
                }
            }
        }
        return result;
    }

    /// <summary>Called under _sync, so the queue holds events in sequence order.</summary>
    private void Enqueue(Pending p)
    {
        if (_queue.Writer.TryWrite(p))
            return;
        // The writer is QueueCapacity events behind: wait for room rather than lose an event. The
        // writer thread never takes _sync, so this cannot deadlock; other emitters wait their turn.
        _queue.Writer.WriteAsync(p).AsTask().GetAwaiter().GetResult();
    }

    private void WriteLoop()
    {
        var reader = _queue.Reader;
        var batch = new List<Pending>(MaxBatch);
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (batch.Count < MaxBatch && reader.TryRead(out var p))
                batch.Add(p);
            try
            {
                WriteBatch(batch);
            }
            finally
            {
                foreach (var p in batch)
                    p.Flushed?.TrySetResult();
                batch.Clear();
            }
        }
    }

    private void WriteBatch(List<Pending> batch)
    {
        lock (_fileLock)
        {
            bool wrote = false;
            try
            {
                foreach (var p in batch)
                {
                    if (p.Line == null)
                        continue;
                    if (_file.Length + p.Line.Length + 1 > _maxBytes && _file.Length > 0)
                    {
                        _file.Flush(flushToDisk: true);
                        Rotate();
                    }
                    _file.Write(p.Line);
                    _file.WriteByte((byte)'\n');
                    wrote = true;
                }
                if (wrote)
                    _file.Flush(flushToDisk: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // The events already reached the EventSource and subscribers; a full disk must not stop the engine.
            }
        }
    }

    /// <summary>A live feed of new events; dispose the subscription to stop it.</summary>
    public Subscription Subscribe()
    {
        var ch = Channel.CreateBounded<RasRecord>(new BoundedChannelOptions(4096) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (_sync)
            _subscribers.Add(ch);
        return new Subscription(this, ch);
    }

    public static bool Matches(RasRecord r, DateTimeOffset? since, string? minSeverity)
    {
        if (since != null && DateTimeOffset.TryParse(r.Timestamp, CultureInfo.InvariantCulture, DateTimeStyles.None, out var t) && t < since)
            return false;
        if (minSeverity != null && SeverityRank(r.Severity) > SeverityRank(minSeverity))
            return false;
        return true;
    }

    /// <summary>ERROR (0) is the most severe; an unknown name ranks below NOTICE.</summary>
    public static int SeverityRank(string severity) => severity.ToUpperInvariant() switch
    {
        "ERROR" => 0,
        "WARNING" => 1,
        "NOTICE" => 2,
        _ => 3,
    };

    public static string FormatTimestamp(DateTimeOffset t) =>
        t.ToLocalTime().ToString("yyyy-MM-dd'T'HH:mm:ss.ffffffzzz", CultureInfo.InvariantCulture);

    /// <summary>Stops taking events, writes and fsyncs everything queued (clean stop), closes the file.</summary>
    public void Dispose()
    {
        lock (_sync)
        {
            if (_stopped)
                return;
            _stopped = true;
            foreach (var s in _subscribers)
                s.Writer.TryComplete();
            _subscribers.Clear();
            _queue.Writer.TryComplete();
        }
        _writer.Join();
        lock (_fileLock)
            _file.Dispose();
    }

    private void Rotate()
    {
        _file.Dispose();
        for (int i = _keep - 1; i >= 1; i--)
            if (File.Exists($"{_path}.{i}"))
                File.Move($"{_path}.{i}", $"{_path}.{i + 1}", overwrite: true);
        File.Move(_path, $"{_path}.1", overwrite: true);
        _file = OpenForAppend();
    }

    private FileStream OpenForAppend() =>
        new(_path, FileMode.Append, FileAccess.Write, FileShare.Read | FileShare.Delete, 4096, FileOptions.None);

    private long ReadLastSeq()
    {
        if (!File.Exists(_path))
            return 0;
        long last = 0;
        foreach (var line in File.ReadLines(_path))
            if (TryParse(line) is { } r)
                last = Math.Max(last, r.Seq);
        return last;
    }

    private static RasRecord? TryParse(string line)
    {
        try
        {
            return JsonSerializer.Deserialize<RasRecord>(line, Api.Json);
        }
        catch (JsonException)
        {
            return null; // a torn last line after a crash
        }
    }

    private void Unsubscribe(Channel<RasRecord> ch)
    {
        lock (_sync)
            _subscribers.Remove(ch);
        ch.Writer.TryComplete();
    }

    private sealed record Pending(byte[]? Line, TaskCompletionSource? Flushed);

    public sealed class Subscription(RasLog log, Channel<RasRecord> channel) : IDisposable
    {
        public ChannelReader<RasRecord> Reader => channel.Reader;

        public void Dispose() => log.Unsubscribe(channel);
    }
}

/// <summary>RAS events as an EventSource ("Strata-Ras"), for dotnet-trace and EventPipe consumers.</summary>
[EventSource(Name = "Strata-Ras")]
public sealed class RasEventSource : EventSource
{
    public static readonly RasEventSource Log = new();

    [Event(1, Level = EventLevel.Informational, Message = "{0} {1}: {3}")]
    public void Event(string id, string severity, string type, string message, string pool, string container, string image, long seq) =>
        WriteEvent(1, id, severity, type, message, pool, container, image, seq);
}
