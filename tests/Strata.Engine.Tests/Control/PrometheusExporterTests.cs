using System.Globalization;
using System.Text.RegularExpressions;
using Strata.Engine.Control;

namespace Strata.Engine.Tests.Control;

/// <summary>
/// The engine's Meter through prometheus-net: names, types and values as docs/operations.md
/// lists them. (The daemon's endpoint is scraped by CommandTests.Prometheus_*.)
/// </summary>
[TestClass]
public sealed class PrometheusExporterTests
{
    [TestMethod]
    public async Task Scrape_AfterIo_CountersMoveWithTheirDocumentedNamesAndTypes()
    {
        using var exporter = new PrometheusExporter(StrataMetrics.MeterName);
        using var metrics = new StrataMetrics(() => (1L << 30, 1L << 20, 4096), () => 3);
        string before = await exporter.ScrapeAsync();
        StringAssert.Contains(before, "# TYPE strata_io_bytes_total counter\n");
        StringAssert.Contains(before, "# TYPE strata_io_latency_milliseconds histogram\n");
        StringAssert.Contains(before, "# TYPE strata_space_total_bytes gauge\n");
        Assert.AreEqual(0, Value(before, "strata_ras_lost_total"), "an unlabelled counter shows 0 before its first event");
        Assert.AreEqual(1L << 30, Value(before, "strata_space_total_bytes"));
        Assert.AreEqual(3, Value(before, "strata_pools"));
        double readBefore = Value(before, "strata_io_bytes_total", "op=\"read\"", orZero: true);

        metrics.RecordIo(IoOps.Read, 65536, 0.3, ok: true);
        metrics.RecordIo(IoOps.Read, 4096, 7, ok: true);
        metrics.RecordIo(IoOps.Write, 512, 1, ok: false);
        metrics.RecordRasLost(2);
        string after = await exporter.ScrapeAsync();

        Assert.AreEqual(65536 + 4096, Value(after, "strata_io_bytes_total", "op=\"read\"") - readBefore);
        Assert.IsGreaterThanOrEqualTo(1, Value(after, "strata_io_errors_total", "op=\"write\""));
        Assert.IsGreaterThanOrEqualTo(2, Value(after, "strata_ras_lost_total"));
        Assert.IsGreaterThanOrEqualTo(1, Value(after, "strata_io_latency_milliseconds_bucket", "op=\"read\",le=\"0.5\""));
        Assert.IsGreaterThanOrEqualTo(2, Value(after, "strata_io_latency_milliseconds_bucket", "op=\"read\",le=\"10\""));
    }

    [TestMethod]
    public async Task Scrape_UpgradesOfTwoPools_OneSeriesPerPool()
    {
        using var exporter = new PrometheusExporter(StrataMetrics.MeterName);
        using var metrics = new StrataMetrics(() => (0, 0, 0), () => 2);
        static Strata.Engine.Layout.UpgradeJobStatus Job(string pool, long done) => new(pool, 5, "in progress", 6, 1, null,
            0, 1, done, 100, done * 4096, 100 * 4096, null, null, null, null, null, Running: true);
        metrics.ObserveUpgrades(() => [Job("a", 10), Job("b", 70)]);
        string text = await exporter.ScrapeAsync();
        // Without the pool label the two jobs wrote one unlabelled gauge and the last won.
        Assert.AreEqual(10, Value(text, "strata_upgrade_items_done", "pool=\"a\""));
        Assert.AreEqual(70, Value(text, "strata_upgrade_items_done", "pool=\"b\""));
        Assert.AreEqual(70 * 4096, Value(text, "strata_upgrade_bytes_done_bytes", "pool=\"b\""));
    }

    [TestMethod]
    public void RecordIo_WithTheExporterListening_AllocatesNothing()
    {
        using var exporter = new PrometheusExporter(StrataMetrics.MeterName);
        using var metrics = new StrataMetrics(() => (0, 0, 0), () => 0);
        for (int i = 0; i < 100; i++)
            metrics.RecordIo(IoOps.Write, 4096, 0.2, ok: true);
        long start = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10_000; i++)
            metrics.RecordIo(IoOps.Write, 4096, 0.2, ok: true);
        long bytes = GC.GetAllocatedBytesForCurrentThread() - start;
        Assert.IsLessThan(10_000, bytes, $"{bytes} bytes allocated by 10,000 I/Os: recording runs once per I/O and must not allocate");
    }

    /// <summary>The value of one sample line NAME{LABELS} VALUE.</summary>
    private static double Value(string text, string name, string? labels = null, bool orZero = false)
    {
        string series = labels == null ? Regex.Escape(name) : Regex.Escape(name + "{" + labels + "}");
        var m = Regex.Match(text, "^" + series + " (\\S+)$", RegexOptions.Multiline);
        if (!m.Success)
            return orZero ? 0 : throw new AssertFailedException($"no sample {name}{{{labels}}} in:\n{text}");
        return double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
