using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;

namespace Strata.Engine.Control;

/// <summary>
/// Renders one Meter in the Prometheus text exposition format (version 0.0.4): counters
/// as `_total`, histograms as cumulative `_bucket{le=...}` with `_sum` and `_count`,
/// observable gauges sampled at scrape time. Names: dots become underscores, the unit suffix is added.
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<(Instrument, string), Series> _series = new();
    // Measurements with one string tag (every I/O instrument: op=read...) find their series here
    // without building the label text: recording runs once per I/O and must not allocate.
    private readonly ConcurrentDictionary<(Instrument, string, string), Series> _oneTag = new();
    private readonly List<Instrument> _instruments = new();
    private readonly object _scrape = new();

    public PrometheusExporter(string meterName)
    {
        _listener.InstrumentPublished = (inst, l) =>
        {
            if (inst.Meter.Name != meterName)
                return;
            lock (_instruments)
                _instruments.Add(inst);
            l.EnableMeasurementEvents(inst);
        };
        _listener.SetMeasurementEventCallback<long>((inst, v, tags, _) => Record(inst, v, tags));
        _listener.SetMeasurementEventCallback<int>((inst, v, tags, _) => Record(inst, v, tags));
        _listener.SetMeasurementEventCallback<double>((inst, v, tags, _) => Record(inst, v, tags));
        _listener.Start();
    }

    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    public string Scrape()
    {
        lock (_scrape)
        {
            _listener.RecordObservableInstruments();
            var sb = new StringBuilder();
            List<Instrument> instruments;
            lock (_instruments)
                instruments = _instruments.ToList();
            foreach (var inst in instruments)
            {
                string name = MetricName(inst);
                bool counter = inst is Counter<long> or Counter<int> or Counter<double>;
                bool histogram = inst is Histogram<double> or Histogram<long>;
                string type = counter ? "counter" : histogram ? "histogram" : "gauge";
                string full = counter ? name + "_total" : name;
                sb.Append("# HELP ").Append(full).Append(' ').Append(inst.Description ?? inst.Name).Append('\n');
                sb.Append("# TYPE ").Append(full).Append(' ').Append(type).Append('\n');
                var series = _series.Where(kv => kv.Key.Item1 == inst).OrderBy(kv => kv.Key.Item2, StringComparer.Ordinal).ToList();
                if (series.Count == 0 && !histogram)
                    sb.Append(full).Append(" 0\n");
                foreach (var (key, s) in series)
                {
                    lock (s)
                    {
                        if (histogram)
                        {
                            long cumulative = 0;
                            for (int i = 0; i < StrataMetrics.LatencyBucketsMs.Length; i++)
                            {
                                cumulative += s.Buckets[i];
                                sb.Append(name).Append("_bucket").Append(Labels(key.Item2, "le=\"" + Fmt(StrataMetrics.LatencyBucketsMs[i]) + "\"")).Append(' ').Append(cumulative).Append('\n');
                            }
                            sb.Append(name).Append("_bucket").Append(Labels(key.Item2, "le=\"+Inf\"")).Append(' ').Append(s.Count).Append('\n');
                            sb.Append(name).Append("_sum").Append(Labels(key.Item2, null)).Append(' ').Append(Fmt(s.Sum)).Append('\n');
                            sb.Append(name).Append("_count").Append(Labels(key.Item2, null)).Append(' ').Append(s.Count).Append('\n');
                        }
                        else
                        {
                            sb.Append(full).Append(Labels(key.Item2, null)).Append(' ').Append(Fmt(s.Value)).Append('\n');
                        }
                    }
                }
            }
            return sb.ToString();
        }
    }

    public void Dispose() => _listener.Dispose();

    private void Record(Instrument inst, double v, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        Series s;
        if (tags.Length == 1 && tags[0].Value is string one)
        {
            if (!_oneTag.TryGetValue((inst, tags[0].Key, one), out s!))
                s = _oneTag.GetOrAdd((inst, tags[0].Key, one), SeriesFor(inst, tags));
        }
        else
        {
            s = SeriesFor(inst, tags);
        }
        lock (s)
        {
            if (inst is Histogram<double> or Histogram<long>)
            {
                int i = 0;
                while (i < StrataMetrics.LatencyBucketsMs.Length && v > StrataMetrics.LatencyBucketsMs[i])
                    i++;
                if (i < s.Buckets.Length)
                    s.Buckets[i]++;
                s.Count++;
                s.Sum += v;
            }
            else if (inst.IsObservable)
            {
                s.Value = v;
            }
            else
            {
                s.Value += v;
            }
        }
    }

    /// <summary>The series of an instrument and tag set, keyed by its label text (what Scrape prints).</summary>
    private Series SeriesFor(Instrument inst, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var labels = new StringBuilder();
        foreach (var t in tags)
        {
            if (labels.Length > 0)
                labels.Append(',');
            labels.Append(Sanitize(t.Key)).Append("=\"").Append(Escape(Convert.ToString(t.Value, CultureInfo.InvariantCulture) ?? "")).Append('"');
        }
        return _series.GetOrAdd((inst, labels.ToString()), _ => new Series());
    }

    private static string MetricName(Instrument inst)
    {
        string n = Sanitize(inst.Name);
        string? unit = inst.Unit switch
        {
            "By" => "bytes",
            "ms" => "milliseconds",
            "s" => "seconds",
            _ => null,
        };
        return unit != null && !n.EndsWith(unit, StringComparison.Ordinal) ? n + "_" + unit : n;
    }

    private static string Labels(string labels, string? extra)
    {
        string all = extra == null ? labels : labels.Length == 0 ? extra : labels + "," + extra;
        return all.Length == 0 ? "" : "{" + all + "}";
    }

    private static string Sanitize(string s)
    {
        var chars = s.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (!(char.IsAsciiLetterOrDigit(chars[i]) || chars[i] == '_'))
                chars[i] = '_';
        return new string(chars);
    }

    private static string Escape(string s) => s.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");

    private static string Fmt(double d) => d.ToString("R", CultureInfo.InvariantCulture);

    private sealed class Series
    {
        public double Value;
        public double Sum;
        public long Count;
        public readonly long[] Buckets = new long[StrataMetrics.LatencyBucketsMs.Length];
    }
}
