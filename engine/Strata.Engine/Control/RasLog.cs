using System.Diagnostics.Tracing;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Strata.Engine.Store;

namespace Strata.Engine.Control;

/// <summary>
/// The durable RAS log: one JSON object per line, fsynced per event (events are rare and
/// an operator needs the last one before a crash), rotated by size to events.jsonl.1 .. .N.
/// Every event also goes to <see cref="RasEventSource"/> and to live subscribers
/// (`strata system events --follow`). Sequence numbers continue across restarts.
/// </summary>
public sealed class RasLog : IRasSink, IDisposable
{
    private readonly object _sync = new();
    private readonly string _path;
    private readonly long _maxBytes;
    private readonly int _keep;
    private readonly string _host = Environment.MachineName;
    private readonly int _pid = Environment.ProcessId;
    private readonly List<Channel<RasRecord>> _subscribers = new();
    private FileStream _file;
    private long _seq;

    public RasLog(string path, long maxBytes = 16 << 20, int keep = 4)
    {
        _path = Path.GetFullPath(path);
        _maxBytes = Math.Max(4096, maxBytes);
        _keep = Math.Max(1, keep);
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        _seq = ReadLastSeq();
        _file = OpenForAppend();
    }

    public string FilePath => _path;

    /// <summary>Raised after an event is durable (metrics count them by severity).</summary>
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
            var line = JsonSerializer.SerializeToUtf8Bytes(rec, Api.Json);
            try
            {
                if (_file.Length + line.Length + 1 > _maxBytes && _file.Length > 0)
                    Rotate();
                _file.Write(line);
                _file.WriteByte((byte)'\n');
                _file.Flush(flushToDisk: true);
            }
            catch (IOException)
            {
                // The event still reaches the EventSource and subscribers; a full disk must not stop the engine.
            }
            foreach (var s in _subscribers)
                s.Writer.TryWrite(rec);
        }
        RasEventSource.Log.Event(rec.Id, rec.Severity, rec.Type, rec.Msg, rec.Pool ?? "", rec.Cont ?? "", rec.Image ?? "", rec.Seq);
        Emitted?.Invoke(rec);
        return rec;
    }

    /// <summary>Events already in the log (oldest rotated file first), filtered.</summary>
    public IReadOnlyList<RasRecord> ReadAll(DateTimeOffset? since = null, string? minSeverity = null)
    {
        var result = new List<RasRecord>();
        lock (_sync)
        {
            _file.Flush();
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

    public void Dispose()
    {
        lock (_sync)
        {
            foreach (var s in _subscribers)
                s.Writer.TryComplete();
            _subscribers.Clear();
            _file.Dispose();
        }
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
