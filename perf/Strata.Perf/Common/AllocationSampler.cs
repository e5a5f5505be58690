using System.Collections.Concurrent;
using System.Diagnostics.Tracing;

namespace Strata.Perf.Common;

/// <summary>
/// Where a row's managed allocations go (issue 17: "no managed allocation per I/O"): listens to the
/// runtime's GC AllocationTick events (one about every 100 KB allocated, naming the type that crossed
/// the mark) while it is open, and prints the types by sampled bytes. Sampling, not counting: a type
/// allocated often shows up in proportion to its bytes. Enabled by --alloc-types.
/// </summary>
internal sealed class AllocationSampler : EventListener
{
    private const EventKeywords GcKeyword = (EventKeywords)0x1;
    private readonly ConcurrentDictionary<string, long> _bytes = new();
    private readonly ConcurrentDictionary<string, int> _gcs = new();
    private volatile bool _on;

    /// <param name="start">Whether to sample from now on; otherwise from <see cref="Start"/>.</param>
    public AllocationSampler(bool start = true) => _on = start;

    /// <summary>Starts sampling (a row's measured window, without its warm-up).</summary>
    public void Start() => _on = true;

    protected override void OnEventSourceCreated(EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime")
            EnableEvents(source, EventLevel.Verbose, GcKeyword);
    }

    protected override void OnEventWritten(EventWrittenEventArgs e)
    {
        if (!_on || e.EventName is null || e.PayloadNames is null)
            return;
        if (e.EventName.StartsWith("GCStart", StringComparison.Ordinal))
        {
            int depth = e.PayloadNames.IndexOf("Depth"), reason = e.PayloadNames.IndexOf("Reason");
            if (depth >= 0 && reason >= 0)
                _gcs.AddOrUpdate($"gen {e.Payload![depth]}, reason {GcReason(Convert.ToInt32(e.Payload[reason], System.Globalization.CultureInfo.InvariantCulture))}", 1, (_, n) => n + 1);
            return;
        }
        if (!e.EventName.StartsWith("GCAllocationTick", StringComparison.Ordinal))
            return;
        int type = e.PayloadNames.IndexOf("TypeName"), amount = e.PayloadNames.IndexOf("AllocationAmount64"), kind = e.PayloadNames.IndexOf("AllocationKind");
        if (type < 0 || amount < 0)
            return;
        string name = e.Payload![type] as string ?? "?";
        if (kind >= 0 && Convert.ToInt32(e.Payload[kind], System.Globalization.CultureInfo.InvariantCulture) == 1)
            name += " (large object heap)";
        long bytes = Convert.ToInt64(e.Payload[amount], System.Globalization.CultureInfo.InvariantCulture);
        _bytes.AddOrUpdate(name, bytes, (_, b) => b + bytes);
    }

    /// <summary>Stops sampling and prints the top <paramref name="top"/> types, with their share of the sampled bytes.</summary>
    public void Report(string title, int top = 40)
    {
        _on = false;
        long total = _bytes.Values.Sum();
        Console.WriteLine($"    allocation samples ({title}): {total / 1024} KiB sampled");
        foreach (var (name, b) in _bytes.OrderByDescending(kv => kv.Value).Take(top))
            Console.WriteLine($"      {100.0 * b / Math.Max(1, total),5:F1}%  {name}");
        foreach (var (what, n) in _gcs.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            Console.WriteLine($"      collections: {n} x {what}");
    }

    /// <summary>The runtime's GC reason codes (GCStart's Reason), as its event manifest names them.</summary>
    private static string GcReason(int reason) => reason switch
    {
        0 => "small-object allocation",
        1 => "induced",
        2 => "low memory",
        3 => "empty",
        4 => "large-object allocation",
        5 => "out of small-object space",
        6 => "out of large-object space",
        7 => "induced, not forced",
        8 => "internal",
        9 => "induced, low memory",
        _ => reason.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
