using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;
using Prometheus;

namespace Strata.Engine.Control;

/// <summary>
/// Serves one Meter in the Prometheus text format through prometheus-net: a MeterListener
/// feeds each instrument into a prometheus-net counter, gauge or histogram of its own
/// registry, and prometheus-net writes the exposition. Names: dots become underscores, the
/// unit suffix is added, counters end in `_total`. prometheus-net's own MeterAdapter is not
/// used because it names `strata_engine_strata_io_bytes` and exports counters as gauges
/// (docs/operations.md, "Metrics").
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
    private readonly IMetricFactory _factory;

    public PrometheusExporter(string meterName)
    {
        _factory = Metrics.WithCustomRegistry(_registry);
        _listener.InstrumentPublished = (inst, l) =>
        {
            if (inst.Meter.Name == meterName)
                l.EnableMeasurementEvents(inst, Series.For(inst, _factory));
        };
        _listener.SetMeasurementEventCallback<long>((_, v, tags, state) => ((Series)state!).Record(v, tags));
        _listener.SetMeasurementEventCallback<int>((_, v, tags, state) => ((Series)state!).Record(v, tags));
        _listener.SetMeasurementEventCallback<double>((_, v, tags, state) => ((Series)state!).Record(v, tags));
        _listener.Start();
        _registry.AddBeforeCollectCallback(_listener.RecordObservableInstruments);
    }

    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>The exposition text (observable gauges are sampled now).</summary>
    public async Task<string> ScrapeAsync(CancellationToken ct = default)
    {
        using var ms = new MemoryStream();
        await _registry.CollectAndExportAsTextAsync(ms, ct).ConfigureAwait(false);
        return Encoding.UTF8.GetString(ms.GetBuffer(), 0, (int)ms.Length);
    }

    public void Dispose() => _listener.Dispose();

    /// <summary>Prometheus name of an instrument: strata.io.bytes (By) is strata_io_bytes, and counters add _total.</summary>
    public static string MetricName(Instrument inst)
    {
        string n = new(inst.Name.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_').ToArray());
        string? unit = inst.Unit switch
        {
            "By" => "bytes",
            "ms" => "milliseconds",
            "s" => "seconds",
            _ => null,
        };
        return unit != null && !n.EndsWith(unit, StringComparison.Ordinal) ? n + "_" + unit : n;
    }

    /// <summary>
    /// One instrument's prometheus-net metric, made when the instrument is published with the
    /// label names <see cref="StrataMetrics.LabelNames"/> declares (so a counter shows 0
    /// before its first event). Children are cached by tag value: recording, once per I/O,
    /// allocates nothing.
    /// </summary>
    private abstract class Series
    {
        private readonly ConcurrentDictionary<string, object> _oneLabel = new(StringComparer.Ordinal);
        private readonly string[] _labelNames;
        private object? _unlabelled;

        protected Series(Instrument inst)
        {
            Name = MetricName(inst);
            Help = inst.Description ?? inst.Name;
            _labelNames = StrataMetrics.LabelNames.GetValueOrDefault(inst.Name, []);
            LabelNames = _labelNames.Select(l => new string(l.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_').ToArray())).ToArray();
        }

        protected string Name { get; }

        protected string Help { get; }

        protected string[] LabelNames { get; }

        public static Series For(Instrument inst, IMetricFactory factory)
        {
            Series s = inst switch
            {
                Counter<long> or Counter<int> or Counter<double> => new CounterSeries(inst, observable: false),
                ObservableCounter<long> or ObservableCounter<int> or ObservableCounter<double> => new CounterSeries(inst, observable: true),
                Histogram<double> h => new HistogramSeries(inst, h.Advice?.HistogramBucketBoundaries),
                Histogram<long> h => new HistogramSeries(inst, h.Advice?.HistogramBucketBoundaries?.Select(b => (double)b).ToList()),
                _ => new GaugeSeries(inst, delta: inst is UpDownCounter<long> or UpDownCounter<int> or UpDownCounter<double>),
            };
            s.Create(factory);
            return s;
        }

        public void Record(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            object child;
            if (_labelNames.Length == 0)
                child = _unlabelled!;
            else if (_labelNames.Length == 1 && tags.Length == 1 && tags[0].Value is string one)
                child = _oneLabel.TryGetValue(one, out var c) ? c : _oneLabel.GetOrAdd(one, Child([one]));
            else
                child = Child(Values(tags));
            Apply(child, value);
        }

        /// <summary>The tag values in the declared label order; a tag that is missing is "".</summary>
        private string[] Values(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var values = new string[_labelNames.Length];
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = "";
                foreach (var t in tags)
                    if (t.Key == _labelNames[i])
                        values[i] = Convert.ToString(t.Value, CultureInfo.InvariantCulture) ?? "";
            }
            return values;
        }

        private void Create(IMetricFactory factory)
        {
            Metric = Make(factory);
            if (_labelNames.Length == 0)
                _unlabelled = Child([]);
        }

        protected object Metric { get; private set; } = null!;

        protected abstract object Make(IMetricFactory factory);

        protected abstract object Child(string[] labelValues);

        protected abstract void Apply(object child, double value);
    }

    private sealed class CounterSeries(Instrument inst, bool observable) : Series(inst)
    {
        protected override object Make(IMetricFactory factory) => factory.CreateCounter(Name + "_total", Help, LabelNames);

        protected override object Child(string[] labelValues) => ((Counter)Metric).WithLabels(labelValues);

        protected override void Apply(object child, double value)
        {
            if (observable)
                ((Counter.Child)child).IncTo(value);
            else
                ((Counter.Child)child).Inc(value);
        }
    }

    private sealed class GaugeSeries(Instrument inst, bool delta) : Series(inst)
    {
        protected override object Make(IMetricFactory factory) => factory.CreateGauge(Name, Help, LabelNames);

        protected override object Child(string[] labelValues) => ((Gauge)Metric).WithLabels(labelValues);

        protected override void Apply(object child, double value)
        {
            if (delta)
                ((Gauge.Child)child).Inc(value);
            else
                ((Gauge.Child)child).Set(value);
        }
    }

    private sealed class HistogramSeries(Instrument inst, IReadOnlyList<double>? buckets) : Series(inst)
    {
        protected override object Make(IMetricFactory factory) =>
            factory.CreateHistogram(Name, Help, LabelNames, new HistogramConfiguration { Buckets = [.. buckets ?? StrataMetrics.LatencyBucketsMs] });

        protected override object Child(string[] labelValues) => ((Histogram)Metric).WithLabels(labelValues);

        protected override void Apply(object child, double value) => ((Histogram.Child)child).Observe(value);
    }
}
