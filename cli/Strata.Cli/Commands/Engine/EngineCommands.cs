using System.CommandLine;
using System.Diagnostics.Tracing;
using System.Globalization;
using Microsoft.Diagnostics.NETCore.Client;
using Microsoft.Diagnostics.Tracing;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Engine;

/// <summary>
/// `strata engine counters`: the engine's live Meter read through EventPipe, as dotnet-counters
/// does: the engine's pid comes from `system query`, then a System.Diagnostics.Metrics session
/// publishes each instrument's value every --interval seconds.
/// </summary>
public static class EngineCommands
{
    private const string MetricsProvider = "System.Diagnostics.Metrics";
    private const string MeterName = "Strata.Engine";

    private static readonly Option<int> Interval = new("--interval") { Description = "Seconds between samples", DefaultValueFactory = _ => 1 };
    private static readonly Option<int> Count = new("--count", "-n") { Description = "Stop after this many samples (0: until --duration or Ctrl-C)", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> Duration = new("--duration") { Description = "Stop after this many seconds (0: until --count or Ctrl-C)", DefaultValueFactory = _ => 0 };

    public static Command Create()
    {
        var counters = new Command("counters", "Show the engine's live metrics (I/O operations, bytes, latency, space, RAS events) through EventPipe");
        counters.Options.Add(Interval);
        counters.Options.Add(Count);
        counters.Options.Add(Duration);
        counters.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            int interval = Math.Max(1, parse.GetValue(Interval));
            int count = parse.GetValue(Count), duration = parse.GetValue(Duration);
            if (count == 0 && duration == 0 && Console.IsOutputRedirected)
                count = 3;
            var sys = await client.GetAsync<SystemInfo>("system");
            return await RunAsync(sys.Pid, interval, count, duration, json, ct);
        }));
        return Cli.Group("engine", "The engine process itself", counters);
    }

    private sealed record Sample(string Time, string Instrument, string Tags, string Unit, string Kind, double? Rate, double? Value, double? Count, double? Sum);

    private static async Task<int> RunAsync(int pid, int interval, int count, int duration, bool json, CancellationToken ct)
    {
        var diag = new DiagnosticsClient(pid);
        string sessionId = Guid.NewGuid().ToString();
        var provider = new EventPipeProvider(MetricsProvider, EventLevel.Informational, 0x7, new Dictionary<string, string>
        {
            ["SessionId"] = sessionId,
            ["Metrics"] = MeterName,
            ["RefreshInterval"] = interval.ToString(CultureInfo.InvariantCulture),
            ["MaxTimeSeries"] = "1000",
            ["MaxHistograms"] = "20",
        });
        EventPipeSession session;
        try
        {
            session = await diag.StartEventPipeSessionAsync([provider], requestRundown: false, circularBufferMB: 16, ct);
        }
        catch (Exception e) when (e is ServerNotAvailableException or UnauthorizedAccessException or DiagnosticsClientException)
        {
            throw new CliException(ExitCodes.Unreachable, $"cannot open the engine's diagnostics channel (pid {pid}): {e.Message} (run as the engine's user or root, with the same TMPDIR)");
        }

        var current = new SortedDictionary<string, Sample>(StringComparer.Ordinal);
        int samples = 0;
        var done = new CancellationTokenSource();
        using var _ = ct.Register(done.Cancel);
        if (duration > 0)
            done.CancelAfter(TimeSpan.FromSeconds(duration));
        string? firstKey = null;
        var gate = new object();

        void Flush()
        {
            if (current.Count == 0 || (count > 0 && samples >= count))
                return;
            samples++;
            if (json)
            {
                foreach (var s in current.Values)
                    Cli.PrintJson(s);
            }
            else
            {
                Console.Out.WriteLine($"[{MeterName}] {DateTime.Now:HH:mm:ss}");
                var t = new Table("Instrument", "Tags", "Unit", "Rate/s", "Value");
                foreach (var s in current.Values)
                    t.Add(s.Instrument, s.Tags.Length == 0 ? "-" : s.Tags, s.Unit, s.Rate is { } r ? (r / interval).ToString("0.##", CultureInfo.InvariantCulture) : "-",
                        s.Kind == "histogram" ? $"count {s.Count:0} sum {s.Sum:0.###}" : s.Value?.ToString("0.##", CultureInfo.InvariantCulture) ?? "-");
                t.Write(Console.Out);
                Console.Out.WriteLine();
            }
            Console.Out.Flush();
            current.Clear();
            if (count > 0 && samples >= count)
                done.Cancel();
        }

        var source = new EventPipeEventSource(session.EventStream);
        source.Dynamic.All += e =>
        {
            if (e.ProviderName != MetricsProvider || e.PayloadByName("sessionId") as string != sessionId)
                return;
            if (e.EventName is "Error" or "MultipleSessionsNotSupportedError" or "MultipleSessionsConfiguredIncorrectlyError")
                return;
            if (e.PayloadByName("meterName") as string != MeterName)
                return;
            string inst = (string)e.PayloadByName("instrumentName");
            string tags = e.PayloadByName("tags") as string ?? "";
            string unit = e.PayloadByName("unit") as string ?? "";
            string time = DateTimeOffset.Now.ToString("o", CultureInfo.InvariantCulture);
            Sample? s = e.EventName switch
            {
                "CounterRateValuePublished" or "UpDownCounterRateValuePublished" =>
                    new Sample(time, inst, tags, unit, "counter", Num(e, "rate"), Num(e, "value"), null, null),
                "GaugeValuePublished" => new Sample(time, inst, tags, unit, "gauge", null, Num(e, "lastValue"), null, null),
                "HistogramValuePublished" => new Sample(time, inst, tags, unit, "histogram", null, null, Num(e, "count"), Num(e, "sum")),
                _ => null,
            };
            if (s == null)
                return;
            lock (gate)
            {
                string key = inst + "|" + tags;
                // A refresh publishes every time series once: seeing the first one again starts a new sample.
                if (firstKey == null)
                    firstKey = key;
                else if (key == firstKey)
                    Flush();
                current[key] = s;
            }
        };
        var processing = Task.Run(() => source.Process());
        try
        {
            await Task.Delay(Timeout.Infinite, done.Token);
        }
        catch (OperationCanceledException)
        {
        }
        try
        {
            await session.StopAsync(CancellationToken.None);
        }
        catch (Exception e) when (e is ServerNotAvailableException or IOException or TimeoutException)
        {
        }
        await Task.WhenAny(processing, Task.Delay(5000));
        lock (gate)
            if (count == 0 || samples < count)
                Flush();
        session.Dispose();
        return samples > 0 ? ExitCodes.Ok : throw new CliException(ExitCodes.Failed, "the engine published no metrics during the session");
    }

    private static double? Num(TraceEvent e, string name)
    {
        object? v = e.PayloadByName(name);
        return v switch
        {
            null => null,
            string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
            string => null,
            IConvertible c => c.ToDouble(CultureInfo.InvariantCulture),
            _ => null,
        };
    }
}
