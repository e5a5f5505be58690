using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Perf.Common;

namespace Strata.Perf.Upgrade;

/// <summary>
/// How long a metadata-only pool upgrade (layout 1 -> 2) makes the pool unavailable, as the
/// pool grows: pools with more images and mapped chunks on file targets, a client writing at
/// QD 8 throughout. Reports the engine's measured pause (metadata changes held for one log batch)
/// and the client's slowest write during the upgrade against its p99 before it, with the
/// smallest pool as the reference row (the ratio shows whether the pause grows with size).
/// </summary>
public static class UpgradeBenchmark
{
    public const string Usage = """
        upgrade: the I/O pause of a metadata-only pool upgrade (1 -> 2), or of the wal_v2 switch, vs pool size
          --feature NAME     pool_props_v2 (default: 1 -> 2, quiesce) or wal_v2 (2 -> wal_v2: opens and I/O refused while every shard is checkpointed)
          --dir DIR          target files DIR/upgrade-target-N.dat (default /var/tmp/strata-perf)
          --images LIST      images per pool, comma-separated (default 1,100,1000)
          --chunks N         4 KiB chunks written in the largest pool (default 100000; smaller pools get N * images / max)
        """;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        var images = (cl.String("images") ?? "1,100,1000").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int maxChunks = cl.Int("chunks", 100_000);
        string feature = cl.String("feature") ?? "pool_props_v2";
        cl.ThrowIfUnused();
        if (feature is not ("pool_props_v2" or LayoutCatalog.WalV2Feature))
            throw new PerfUsageException($"--feature {feature}: use pool_props_v2 or {LayoutCatalog.WalV2Feature}");
        var (catalog, from, to) = feature == LayoutCatalog.WalV2Feature ? WalV2Catalog() : (LayoutCatalog.Default, 1u, 2u);
        Directory.CreateDirectory(dir);
        Console.WriteLine($"strata: StorageEngine on file:...?direct=1 targets (2 x 2 GiB); pool layout {from} -> {to} ({feature}), 4 KiB chunks, rf 1; a QD 8 writer runs through the upgrade");
        var table = new TablePrinter("images", "chunks", "pause ms", "ratio to smallest", "client p99 before ms", "client max during ms", "job ms");
        double? reference = null;
        foreach (int n in images)
        {
            long chunks = (long)maxChunks * n / images.Max();
            var r = await MeasureAsync(dir, n, chunks, catalog, from, to, feature == LayoutCatalog.WalV2Feature);
            reference ??= r.PauseMs;
            table.Add(n.ToString(CultureInfo.InvariantCulture), chunks.ToString(CultureInfo.InvariantCulture), r.PauseMs.ToString("0.00", CultureInfo.InvariantCulture),
                (r.PauseMs / reference.Value).ToString("0.00x", CultureInfo.InvariantCulture), r.P99Before.ToString("0.00", CultureInfo.InvariantCulture),
                r.MaxDuring.ToString("0.00", CultureInfo.InvariantCulture), r.JobMs.ToString("0", CultureInfo.InvariantCulture));
        }
        Console.WriteLine(table);
        return 0;
    }

    /// <summary>This build's catalog and the layouts wal_v2 takes a pool between (4 -> 5).</summary>
    private static (LayoutCatalog Catalog, uint From, uint To) WalV2Catalog()
    {
        var d = LayoutCatalog.Default;
        uint v = d.Find(LayoutCatalog.WalV2Feature)!.Version;
        return (d, v - 1, v);
    }

    private static async Task<(double PauseMs, double P99Before, double MaxDuring, double JobMs)> MeasureAsync(string dir, int imageCount, long chunks,
        LayoutCatalog catalog, uint from, uint to, bool exclusive)
    {
        var paths = Enumerable.Range(0, 2).Select(i => Path.Combine(dir, $"upgrade-target-{i}.dat")).ToArray();
        foreach (var p in paths)
            File.Delete(p);
        var devs = paths.Select(p => NativeBlockDevice.Open($"file:{p}?create=1&size=2G&direct=1&qd=128", new DeviceOptions { Pollers = 1 })).ToArray();
        try
        {
            var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Catalog = catalog });
            var pool = await engine.CreatePoolAsync("bench", 3L << 30, 1, new PoolCreateOptions { MinChunkSize = 4096, LayoutVersion = from });
            await pool.CreateContainerAsync("c");
            var imgs = new List<Image>();
            for (int i = 0; i < imageCount; i++)
                imgs.Add(await pool.CreateImageAsync("c", $"i{i}", 64L << 20, 4096));
            var payload = new byte[4096];
            Random.Shared.NextBytes(payload);
            long perImage = Math.Max(1, chunks / imageCount);
            await Parallel.ForEachAsync(Enumerable.Range(0, (int)Math.Min(chunks, perImage * imageCount)), new ParallelOptions { MaxDegreeOfParallelism = 32 },
                async (k, _) => await imgs[(int)(k / perImage)].WriteAsync(k % perImage * 4096, payload));

            var lat = new List<double>();
            using var stop = new CancellationTokenSource();
            var marks = new System.Collections.Concurrent.ConcurrentQueue<(long At, double Ms)>();
            var writers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
            {
                var rng = new Random(w);
                while (!stop.IsCancellationRequested)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    // Refused while an exclusive action runs: the client retries (its write's latency includes the wait).
                    while (true)
                    {
                        try
                        {
                            await imgs[rng.Next(imgs.Count)].WriteAsync(rng.Next(0, 16384) * 4096L, payload);
                            break;
                        }
                        catch (Strata.Engine.Store.PoolBusyException)
                        {
                            await Task.Delay(1);
                        }
                    }
                    marks.Enqueue((t0, Stopwatch.GetElapsedTime(t0).TotalMilliseconds));
                }
            })).ToArray();
            await Task.Delay(2000);
            long upgradeStart = Stopwatch.GetTimestamp();
            await pool.UpgradeAsync(to, dryRun: false);
            await pool.WaitForUpgradeAsync();
            double jobMs = Stopwatch.GetElapsedTime(upgradeStart).TotalMilliseconds;
            long upgradeEnd = Stopwatch.GetTimestamp();
            await Task.Delay(500);
            await stop.CancelAsync();
            await Task.WhenAll(writers);
            var status = pool.GetUpgradeStatus();
            if (status.Status != "completed")
                throw new InvalidOperationException($"upgrade ended {status.Status}: {status.Reason}");
            var before = marks.Where(m => m.At < upgradeStart).Select(m => m.Ms).Order().ToArray();
            double p99 = before.Length == 0 ? 0 : before[(int)(before.Length * 0.99)];
            double maxDuring = marks.Where(m => m.At >= upgradeStart && m.At <= upgradeEnd || m.At < upgradeStart && m.At + (long)(m.Ms * Stopwatch.Frequency / 1000) >= upgradeStart)
                .Select(m => m.Ms).DefaultIfEmpty(0).Max();
            await engine.DisposeAsync();
            return ((exclusive ? pool.LastExclusivePauseMs : status.LongestPauseMs) ?? 0, p99, maxDuring, jobMs);
        }
        finally
        {
            foreach (var d in devs)
                await d.DisposeAsync();
            foreach (var p in paths)
                File.Delete(p);
        }
    }
}
