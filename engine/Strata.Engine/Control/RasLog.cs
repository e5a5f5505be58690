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
/// queued up and fsyncs once per batch. Order is the sequence order: when the queue is full (the
/// disk is far behind) the emitter waits. <see cref="FlushAsync"/> and <see cref="Dispose"/>
/// (clean stop) return once everything emitted before them is on disk, or waits in memory.
/// Sequence numbers continue across restarts.
/// <para>
/// A write that fails (a full disk) leaves no partial line, not even for a moment: each batch's
/// space is reserved before it is written (<see cref="FileSpace"/>), a write that fails anyway is
/// cut back to the last whole line, and the events wait in memory (at most
/// <see cref="BacklogCapacity"/>), are shown by <see cref="ReadAllAsync"/>, and are written in
/// order when a retry succeeds (every <see cref="RetryInterval"/>). The outage is reported by two events of its own,
/// `ras_log_write_failed` and, once written, `ras_log_write_resumed` ("N events could not be
/// written between T1 and T2 (no space left on device)"), which also counts any event beyond the
/// bound, dropped from the file (never from subscribers and the EventSource). docs/operations.md.
/// </para>
/// </summary>
public sealed class RasLog : IRasSink, IDisposable
{
    /// <summary>Events queued for the writer before an emitter has to wait.</summary>
    public const int QueueCapacity = 16384;

    /// <summary>Events kept in memory while the log cannot be written; later ones are counted as lost.</summary>
    public const int BacklogCapacity = 65536;

    /// <summary>How often a failed write is retried while events wait.</summary>
    public static readonly TimeSpan RetryInterval = TimeSpan.FromSeconds(1);

    private const int MaxBatch = 1024;

    private readonly object _sync = new();      // sequence numbers, queue order, subscribers
    private readonly object _fileLock = new();  // the file and the backlog: the writer's appends and rotation, ReadAllAsync
    private readonly string _path;
    private readonly long _maxBytes;
    private readonly int _keep;
    private readonly string _host = Environment.MachineName;
    private readonly int _pid = Environment.ProcessId;
    private readonly List<Channel<RasRecord>> _subscribers = new();
    private readonly Channel<Pending> _queue = Channel.CreateBounded<Pending>(
        new BoundedChannelOptions(QueueCapacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly Thread _writer;
    // Writer thread (under _fileLock where ReadAllAsync looks): events taken from the queue and not
    // yet in the file, in sequence order, and how many at its end have not failed a write yet.
    private readonly List<byte[]> _backlog = new();
    private int _uncounted;
    private int _failedToReport;
    private readonly MemoryStream _batch = new();
    private readonly Queue<(RasEvent Event, IReadOnlyDictionary<string, string> Data)> _notices = new();
    private Outage? _outage;
    private DateTime _nextRetry;
    private FileStream? _file;   // null after a rotation that could not open the new file
    private long _length;        // bytes of whole lines in the file: a failed write is cut back to it
    private long _seq;
    private bool _stopped;

    public RasLog(string path, long maxBytes = 16 << 20, int keep = 4)
    {
        _path = Path.GetFullPath(path);
        _maxBytes = Math.Max(4096, maxBytes);
        _keep = Math.Max(1, keep);
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        _seq = ReadLastSeq();
        _file = OpenLog();
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "strata-ras-writer" };
        _writer.Start();
    }

    public string FilePath => _path;

    /// <summary>Raised when an event is emitted (queued for the log; metrics count them by severity).</summary>
    public event Action<RasRecord>? Emitted;

    /// <summary>Raised on the writer thread with the number of events that could not be written when they came (they wait in memory).</summary>
    public event Action<int>? WriteFailed;

    /// <summary>Raised on the writer thread with the number of events dropped from the file because <see cref="BacklogCapacity"/> events already waited.</summary>
    public event Action<int>? EventsLost;

    /// <summary>After <see cref="Dispose"/>: events that were still waiting for the disk when the log closed.</summary>
    public int UnwrittenAtStop { get; private set; }

    public void Emit(RasEvent e) => Emit(e, container: null, data: null);

    public RasRecord Emit(RasEvent e, string? container, IReadOnlyDictionary<string, string>? data)
    {
        RasRecord rec;
        lock (_sync)
        {
            rec = NewRecord(e, container, data);
            // After Dispose the log is closed: the event still reaches the EventSource.
            if (!_stopped)
            {
                Enqueue(new Pending(rec.Seq, JsonSerializer.SerializeToUtf8Bytes(rec, Api.Json), null));
                Publish(rec);
            }
        }
        Announce(rec);
        return rec;
    }

    /// <summary>Called under _sync.</summary>
    private RasRecord NewRecord(RasEvent e, string? container, IReadOnlyDictionary<string, string>? data) => new()
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

    /// <summary>Called under _sync, so subscribers see the sequence order.</summary>
    private void Publish(RasRecord rec)
    {
        foreach (var s in _subscribers)
            s.Writer.TryWrite(rec);
    }

    private void Announce(RasRecord rec)
    {
        RasEventSource.Log.Event(rec.Id, rec.Severity, rec.Type, rec.Msg, rec.Pool ?? "", rec.Cont ?? "", rec.Image ?? "", rec.Seq);
        Emitted?.Invoke(rec);
    }

    /// <summary>
    /// The writer's own events (outage reports). It must wait neither for _sync, which an emitter
    /// waiting for room in the queue holds, nor for room in the queue it drains: false, try later.
    /// </summary>
    private bool TryEmitFromWriter(RasEvent e, IReadOnlyDictionary<string, string> data)
    {
        if (!Monitor.TryEnter(_sync))
            return false;
        RasRecord rec;
        try
        {
            if (_stopped || _queue.Reader.Count >= QueueCapacity)
                return false;
            rec = NewRecord(e, null, data);
            bool queued = _queue.Writer.TryWrite(new Pending(rec.Seq, JsonSerializer.SerializeToUtf8Bytes(rec, Api.Json), null));
            System.Diagnostics.Debug.Assert(queued, "only emitters holding _sync write to the queue");
            Publish(rec);
        }
        finally
        {
            Monitor.Exit(_sync);
        }
        Announce(rec);
        return true;
    }

    /// <summary>Completes when every event emitted before the call is in the file and fsynced, or (the disk refused it) waits in memory.</summary>
    public Task FlushAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sync)
        {
            if (_stopped)
                return Task.CompletedTask;
            Enqueue(new Pending(0, null, done));
        }
        return done.Task;
    }

    /// <summary>Events in the log (oldest rotated file first), then those waiting in memory for the disk, filtered; everything emitted before the call is included.</summary>
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
            foreach (var line in _backlog)
                if (JsonSerializer.Deserialize<RasRecord>(line, Api.Json) is { } r && Matches(r, since, minSeverity))
                    result.Add(r);
        }
        return result;
    }

    /// <summary>Called under _sync, so the queue holds events in sequence order.</summary>
    private void Enqueue(Pending p)
    {
        if (_queue.Writer.TryWrite(p))
            return;
        // The writer is QueueCapacity events behind: wait for room rather than lose an event. The
        // writer thread never waits for _sync, so this cannot deadlock; other emitters wait their turn.
        _queue.Writer.WriteAsync(p).AsTask().GetAwaiter().GetResult();
    }

    private void WriteLoop()
    {
        var reader = _queue.Reader;
        var flushed = new List<TaskCompletionSource>();
        while (true)
        {
            bool open = WaitForWork(reader);
            lock (_fileLock)
            {
                for (int n = 0; n < MaxBatch && reader.TryRead(out var p); n++)
                {
                    if (p.Line != null)
                        Take(p);
                    else
                        flushed.Add(p.Flushed!);
                }
                if (!open)
                    TakeNoticesAtStop();
                if (_backlog.Count > 0 && (_outage == null || DateTime.UtcNow >= _nextRetry || !open))
                    WriteBacklog();
                if (!open)
                    UnwrittenAtStop = _backlog.Count;
            }
            if (_failedToReport > 0)
            {
                WriteFailed?.Invoke(_failedToReport);
                _failedToReport = 0;
            }
            while (_notices.TryPeek(out var notice) && TryEmitFromWriter(notice.Event, notice.Data))
                _notices.Dequeue();
            foreach (var f in flushed)
                f.TrySetResult();
            flushed.Clear();
            if (!open)
                return;
        }
    }

    /// <summary>False once the queue is completed and empty (clean stop); wakes for a retry while events wait.</summary>
    private bool WaitForWork(ChannelReader<Pending> reader)
    {
        TimeSpan? wait = _notices.Count > 0 ? TimeSpan.FromMilliseconds(10)
            : _backlog.Count > 0 ? _nextRetry - DateTime.UtcNow
            : null;
        if (wait == null)
            return reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult();
        if (wait <= TimeSpan.Zero)
            return !reader.Completion.IsCompleted;
        using var timer = new CancellationTokenSource(wait.Value);
        try
        {
            return reader.WaitToReadAsync(timer.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            return true;
        }
    }

    private void Take(Pending p)
    {
        if (_backlog.Count >= BacklogCapacity)
        {
            // Only while the disk refuses writes (the backlog is empty after every good write).
            var o = _outage!;
            o.Lost++;
            o.FirstLost ??= p.Seq;
            o.LastLost = p.Seq;
            EventsLost?.Invoke(1);
            return;
        }
        _backlog.Add(p.Line!);
        if (_outage != null)
        {
            // Arrived while the disk refuses writes: it waits without a write of its own being tried.
            _outage.Unwritten++;
            _failedToReport++;
        }
        else
        {
            _uncounted++;
        }
    }

    /// <summary>At a clean stop the queue is closed: outage reports not yet raised go straight to the backlog.</summary>
    private void TakeNoticesAtStop()
    {
        while (_notices.TryDequeue(out var n))
        {
            RasRecord rec;
            lock (_sync)
                rec = NewRecord(n.Event, null, n.Data);
            Take(new Pending(rec.Seq, JsonSerializer.SerializeToUtf8Bytes(rec, Api.Json), null));
            Announce(rec);
        }
    }

    /// <summary>Appends the backlog in whole lines; on failure cuts the file back to its last whole line and keeps what was not written.</summary>
    private void WriteBacklog()
    {
        int written = 0;
        try
        {
            if (_file == null)
                _file = OpenLog();
            else if (_file.Length != _length)
                CutBack(_file);
            while (written < _backlog.Count)
            {
                if (_length > 0 && _length + _backlog[written].Length + 1 > _maxBytes)
                    Rotate();
                _batch.SetLength(0);
                int end = written;
                do
                {
                    _batch.Write(_backlog[end]);
                    _batch.WriteByte((byte)'\n');
                    end++;
                }
                while (end < _backlog.Count && _length + _batch.Length + _backlog[end].Length + 1 <= _maxBytes);
                FileSpace.Reserve(_file!.SafeFileHandle, _length, _batch.Length);
                _file.Position = _length;
                _file.Write(_batch.GetBuffer(), 0, (int)_batch.Length);
                _file.Flush(flushToDisk: true);
                _length += _batch.Length;
                written = end;
            }
            if (_outage is { } o)
            {
                _outage = null;
                _notices.Enqueue(o.Resumed(DateTimeOffset.UtcNow));
            }
            _uncounted = 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try
            {
                if (_file != null)
                    CutBack(_file);
            }
            catch (Exception again) when (again is IOException or UnauthorizedAccessException)
            {
                // Cut back before the next write instead.
            }
            int failed = Math.Min(_uncounted, _backlog.Count - written);
            _uncounted = 0;
            if (_outage == null)
            {
                _outage = new Outage(DateTimeOffset.UtcNow, Describe(e));
                _notices.Enqueue(_outage.Failed(_path));
            }
            _outage.Unwritten += failed;
            _failedToReport += failed;
            _nextRetry = DateTime.UtcNow + RetryInterval;
        }
        finally
        {
            _backlog.RemoveRange(0, written);
            _uncounted = Math.Min(_uncounted, _backlog.Count);
        }
    }

    private void CutBack(FileStream f)
    {
        if (f.Length != _length)
        {
            f.SetLength(_length);
            f.Flush(flushToDisk: true);
        }
    }

    private static string Describe(Exception e) => e.HResult switch
    {
        28 => "no space left on device",   // ENOSPC
        122 => "disk quota exceeded",       // EDQUOT
        _ => e.Message,
    };

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
            _file?.Dispose();
    }

    private void Rotate()
    {
        _file!.Dispose();
        _file = null;
        for (int i = _keep - 1; i >= 1; i--)
            if (File.Exists($"{_path}.{i}"))
                File.Move($"{_path}.{i}", $"{_path}.{i + 1}", overwrite: true);
        File.Move(_path, $"{_path}.1", overwrite: true);
        _file = OpenLog();
    }

    /// <summary>Opens the log for appending, after its last whole line: a crash or a failed write may have left part of one.</summary>
    private FileStream OpenLog()
    {
        var f = new FileStream(_path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read | FileShare.Delete, bufferSize: 0, FileOptions.None);
        try
        {
            _length = WholeLinesLength(f);
            CutBack(f);
            return f;
        }
        catch
        {
            f.Dispose();
            throw;
        }
    }

    private static long WholeLinesLength(FileStream f)
    {
        var chunk = new byte[65536];
        for (long end = f.Length; end > 0;)
        {
            int n = (int)Math.Min(chunk.Length, end);
            f.Position = end - n;
            f.ReadExactly(chunk, 0, n);
            int nl = chunk.AsSpan(0, n).LastIndexOf((byte)'\n');
            if (nl >= 0)
                return end - n + nl + 1;
            end -= n;
        }
        return 0;
    }

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

    private sealed record Pending(long Seq, byte[]? Line, TaskCompletionSource? Flushed);

    /// <summary>A time the disk refused the log's writes: from the first failure to the next good write.</summary>
    private sealed class Outage(DateTimeOffset since, string error)
    {
        public long Unwritten, Lost;
        public long? FirstLost;
        public long LastLost;

        public (RasEvent, IReadOnlyDictionary<string, string>) Failed(string path) => (
            new RasEvent(ControlRasIds.RasLogWriteFailed, RasSeverity.Warning, RasType.StateChange,
                $"the RAS log {path} cannot be written ({error}): events wait in memory (at most {BacklogCapacity}) and are written when a retry succeeds")
            { Timestamp = since },
            new Dictionary<string, string> { ["error"] = error, ["since"] = FormatTimestamp(since) });

        public (RasEvent, IReadOnlyDictionary<string, string>) Resumed(DateTimeOffset until)
        {
            string lost = Lost == 0 ? "; they waited in memory and are in the log now"
                : $"; {Unwritten} waited in memory and are in the log now, {Lost} (seq {FirstLost}..{LastLost}) were lost: {BacklogCapacity} events already waited";
            return (
                new RasEvent(ControlRasIds.RasLogWriteResumed, Lost == 0 ? RasSeverity.Notice : RasSeverity.Error, RasType.StateChange,
                    $"{Unwritten + Lost} event(s) could not be written between {FormatTimestamp(since)} and {FormatTimestamp(until)} ({error}){lost}"),
                new Dictionary<string, string>
                {
                    ["error"] = error,
                    ["since"] = FormatTimestamp(since),
                    ["until"] = FormatTimestamp(until),
                    ["unwritten"] = Unwritten.ToString(CultureInfo.InvariantCulture),
                    ["lost"] = Lost.ToString(CultureInfo.InvariantCulture),
                });
        }
    }

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
