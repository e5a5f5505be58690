using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Perf.Common;

namespace Strata.Perf.Upgrade;

/// <summary>
/// The unthrottled rate of the placement_v2 migration (layout 3 -> 4) on two file targets against
/// the device's own copy limit: fio reading and writing the same target files at once (one
/// sequential 1 MiB reader and one writer per file, at the loop's depth per target). A chunk move
/// is one read and one write, so the limit is the smaller of fio's read and write rates. The
/// files are written fully with fio first, so neither side reads holes. The run uses this build's
/// catalog, layout 4's action given the chunks in flight per target asked for.
/// </summary>
public static class MigrateBenchmark
{
    public const string Usage = """
        migrate: placement_v2 migration rate (unthrottled) vs fio reading and writing the same files
          --dir DIR          target files DIR/migrate-target-N.dat (default /var/tmp/strata-perf)
          --size SIZE        each target file (default 2G)
          --data SIZE        image data written before the upgrade, 1 MiB chunks (default 1G)
          --in-flight N      chunks in flight per target, Strata's and fio's depth (default 4, the engine's)
          --runtime SEC      fio's run (default 10)
          --wait-idle SEC    before each run, wait up to SEC for the machine to be idle
          --runs N           N migrations, each followed by its fio run (the ratio of each pair), and the medians
          --keep             keep the target files, and take files of --size left by an earlier --keep as written
          --no-fio           the migrations only (to compare builds back to back on the same files)
          --stages           also print where the chunks' time went (per stage of a move; migrate and --rebuild)
          --latency          instead: client 4 KiB random write QD 8 p99 before and during the
                             migration, for each --rates value (migrate_rate; default 0,auto,256M,64M;
                             auto, the pool's default: 128 MiB/s while clients do I/O, else 0 = unthrottled)
          --rate VALUE       --rebuild: the pool's migrate_rate (default auto; 0 = unthrottled)
          --seconds SEC      --latency: how long the writers run before each upgrade (default 3)
          --rebuild          instead: the rebuild after `storage exclude-target` on three files (rf 2,
                             migrate_rate --rate, default auto: 128 MiB/s while the writers run) vs fio on the two left, and the client's 4 KiB random
                             write QD 8 p99 before and during it (--size default 1G, --data 256M)
          --writers N        --rebuild: client 4 KiB writers running before and during the rebuild (default 8,
                             and 0 with --rate 0: the unthrottled rebuild alone on the disk, as fio's copy is)
          --runs N           --rebuild too: N rebuilds on freshly written files, each followed by its fio run
          --extend           instead: `pool extend` from two target files to three, on a layout-1 pool
                             (placement v1) and a layout-4 pool (placement v2) side by side: the fraction
                             of replicas the dry run says move and the job moved, and the job's rate
                             (--size per file, default 2G; --data, default 1G; --rf N, default 1)
        """;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        if (cl.Has("latency"))
            return await LatencyCurveAsync(cl);
        if (cl.Has("rebuild"))
            return await RebuildAsync(cl);
        if (cl.Has("extend"))
            return await ExtendAsync(cl);
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        long size = CommandLine.ParseBytes(cl.String("size") ?? "2G", "--size");
        long data = CommandLine.ParseBytes(cl.String("data") ?? "1G", "--data");
        int runtime = cl.Int("runtime", 10);
        int inFlight = cl.Int("in-flight", new Strata.Engine.Migration.MigrationOptions().InFlightPerTarget);
        var idle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero;
        int runs = cl.Int("runs", 1);
        bool keep = cl.Flag("keep"), noFio = cl.Flag("no-fio");
        var stages = StagesIf(cl);
        cl.ThrowIfUnused();
        if (runs < 1)
            throw new PerfUsageException($"--runs {runs}: give at least 1");
        Fio.RequireInstalled();
        Directory.CreateDirectory(dir);
        var paths = Enumerable.Range(0, 2).Select(i => Path.Combine(dir, $"migrate-target-{i}.dat")).ToArray();
        var table = new TablePrinter("run", "engine", "MB/s", "ratio", "detail");
        string cmd = "";
        var ratios = new List<double>();
        var rates = new List<double>();
        try
        {
            // Written fully once, so neither engine reads holes or allocates file blocks as it writes;
            // with --keep, files of the size asked for are taken as written by an earlier run.
            foreach (var p in paths)
                if (!keep || !File.Exists(p) || new FileInfo(p).Length != size)
                    Precondition(p, size);
            for (int run = 1; run <= runs; run++)
            {
                if (idle > TimeSpan.Zero)
                    await HostIdle.WaitAsync(idle);
                var cpu0 = HostCpuSample.Now();
                var (moved, seconds, cpu) = await MigrateAsync(paths, size, data, inFlight, stages);
                double others = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
                double strata = moved / seconds;
                rates.Add(strata);
                string detail = string.Create(CultureInfo.InvariantCulture,
                    $"{moved >> 20} MiB moved in {seconds:0.00} s (its process {cpu / seconds * 100:0}% of a CPU, the machine {others:0}% busy, load {LoadAverage()})");
                if (noFio)
                {
                    table.Add(run.ToString(CultureInfo.InvariantCulture), "strata", Mb(strata), "-", detail);
                    continue;
                }
                if (idle > TimeSpan.Zero)
                    await HostIdle.WaitAsync(idle);
                (double read, double write, cmd) = FioCopyLimit(paths, size, runtime, inFlight);
                double limit = Math.Min(read, write);
                ratios.Add(strata / limit);
                table.Add(run.ToString(CultureInfo.InvariantCulture), "strata", Mb(strata), (strata / limit).ToString("0.00x", CultureInfo.InvariantCulture), detail);
                table.Add(run.ToString(CultureInfo.InvariantCulture), "fio", Mb(limit), "1.00x", $"read {Mb(read)} MB/s + write {Mb(write)} MB/s at once, load {LoadAverage()}");
            }
            Console.WriteLine("strata: StorageEngine on file:...?direct=1 targets (2); pool layout 3, rf 1, 1 MiB chunks; upgrade to 4 with migrate_rate auto (no client: unthrottled)");
            Console.WriteLine(table);
            if (runs > 1)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"median of {runs}: strata {Mb(Median(rates))} MB/s{(ratios.Count > 0 ? $", ratio {Median(ratios):0.00}x (each run against the fio run just after it)" : "")}"));
            if (cmd.Length > 0)
                Console.WriteLine(cmd);
            PrintStages(stages);
            return 0;
        }
        finally
        {
            if (!keep)
                foreach (var p in paths)
                    File.Delete(p);
        }
    }

    private static double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);

    private static string LoadAverage() => File.ReadAllText("/proc/loadavg").Split(' ')[0];

    private static void Precondition(string path, long size)
    {
        File.Delete(path);
        Fio.RunJob(["--name=precondition", "--filename=" + path, "--size=" + size.ToString(CultureInfo.InvariantCulture), "--rw=write", "--bs=1M", "--iodepth=16",
            "--ioengine=io_uring", "--direct=1", "--end_fsync=1"], TimeSpan.FromMinutes(30));
    }

    private static Strata.Engine.Migration.MigrationStageTimes? StagesIf(CommandLine cl) =>
        cl.Has("stages") ? new Strata.Engine.Migration.MigrationStageTimes() : null;

    private static void PrintStages(Strata.Engine.Migration.MigrationStageTimes? stages)
    {
        if (stages == null)
            return;
        Console.WriteLine("where the moved chunks' time went (ms), and each stage's mean occupancy (chunks in it at once):");
        Console.WriteLine(stages);
        Console.WriteLine($"during the job, {stages.Commits}");
    }

    /// <summary>
    /// The curve of the client's 4 KiB random write p99 (QD 8, into the image being migrated) during
    /// the placement_v2 migration against the same p99 just before it, one fresh pool per migrate_rate.
    /// </summary>
    private static async Task<int> LatencyCurveAsync(CommandLine cl)
    {
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        long size = CommandLine.ParseBytes(cl.String("size") ?? "1G", "--size");
        long data = CommandLine.ParseBytes(cl.String("data") ?? "256M", "--data");
        int seconds = cl.Int("seconds", 3);
        var rates = (cl.String("rates") ?? "0,auto,256M,64M").Split(',').Select(r => r.Trim()).ToList();
        foreach (var r in rates)
            Strata.Engine.Migration.MigrateRate.Normalize(r); // refused here with its one line, before any pool is made
        cl.ThrowIfUnused();
        Directory.CreateDirectory(dir);
        var paths = Enumerable.Range(0, 2).Select(i => Path.Combine(dir, $"migrate-lat-{i}.dat")).ToArray();
        var table = new TablePrinter("migrate_rate", "job s", "MiB moved", "p99 before ms", "p99 during ms", "ratio", "writes during");
        var cpu0 = HostCpuSample.Now();
        try
        {
            foreach (var rate in rates)
            {
                string text = rate;
                var r = await LatencyRunAsync(paths, size, data, rate, seconds);
                table.Add(text, r.JobSeconds.ToString("0.0", CultureInfo.InvariantCulture), (r.Moved >> 20).ToString(CultureInfo.InvariantCulture),
                    r.P99Before.ToString("0.00", CultureInfo.InvariantCulture), r.P99During.ToString("0.00", CultureInfo.InvariantCulture),
                    (r.P99During / r.P99Before).ToString("0.00x", CultureInfo.InvariantCulture), r.WritesDuring.ToString(CultureInfo.InvariantCulture));
            }
        }
        finally
        {
            foreach (var p in paths)
                File.Delete(p);
        }
        double busy = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
        Console.WriteLine($"strata: StorageEngine on file:...?direct=1 targets (2); pool layout 3, rf 1, 1 MiB chunks, {data >> 20} MiB; upgrade to 4 (placement_v2); 8 writers of 4 KiB at random offsets of the same image");
        Console.WriteLine(table);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"machine busy {busy:0}% during the runs (load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]})"));
        return 0;
    }

    private static async Task<(double JobSeconds, long Moved, double P99Before, double P99During, int WritesDuring)> LatencyRunAsync(string[] paths, long size, long data, string rate, int seconds)
    {
        foreach (var p in paths)
            File.Delete(p);
        string sz = size.ToString(CultureInfo.InvariantCulture);
        var bench = Targets(paths, sz);
        var devs = bench.Devices;
        try
        {
            var engine = await StorageEngine.FormatAsync(devs);
            var pool = await engine.CreatePoolAsync("bench", (size - (128L << 20)) * 2, 1, new PoolCreateOptions { LayoutVersion = 3 });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "v", data, 1 << 20);
            await ImageFill.FillAsync(image);
            await pool.SetPropertyAsync(Strata.Engine.Migration.MigrateRate.Property, rate);
            var writers = RandomWriters.Start(image, data);
            await Task.Delay(TimeSpan.FromSeconds(seconds));
            long start = Stopwatch.GetTimestamp();
            await pool.UpgradeAsync(4, dryRun: false);
            await pool.WaitForUpgradeAsync();
            long end = Stopwatch.GetTimestamp();
            await writers.StopAsync();
            var status = pool.GetUpgradeStatus();
            if (status.Status != "completed")
                throw new InvalidOperationException($"upgrade ended {status.Status}: {status.Reason}");
            var (before, during, count) = writers.P99(start, end);
            await engine.DisposeAsync();
            return (Stopwatch.GetElapsedTime(start, end).TotalSeconds, status.BytesDone, before, during, count);
        }
        finally
        {
            bench.Dispose();
        }
    }

    /// <summary>
    /// The rebuild (issue 14): a pool at rf 2 on three target files, filled; 8 writers of 4 KiB at
    /// random offsets run for --seconds, then target 2 is excluded and the rebuild copies its replicas
    /// onto the two others (migrate_rate auto, the default: 128 MiB/s while the writers run). Its bytes moved per second against fio's
    /// copy limit on the two files left, and the writers' p99 before and during it.
    /// </summary>
    private static async Task<int> RebuildAsync(CommandLine cl)
    {
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        long size = CommandLine.ParseBytes(cl.String("size") ?? "1G", "--size");
        long data = CommandLine.ParseBytes(cl.String("data") ?? "256M", "--data");
        int runtime = cl.Int("runtime", 10);
        int seconds = cl.Int("seconds", 3);
        string rate = Strata.Engine.Migration.MigrateRate.Normalize(cl.String("rate") ?? Strata.Engine.Migration.MigrateRate.Auto);
        // The unthrottled rate is compared with fio's copy alone, so by default nothing else runs then.
        int writerCount = cl.Int("writers", rate == "0" ? 0 : 8);
        if (writerCount < 0)
            throw new PerfUsageException("--writers must be 0 or more");
        int runs = cl.Int("runs", 1);
        if (runs < 1)
            throw new PerfUsageException($"--runs {runs}: give at least 1");
        int inFlight = new Strata.Engine.Migration.MigrationOptions().InFlightPerTarget;
        var idle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero;
        var stages = StagesIf(cl);
        cl.ThrowIfUnused();
        Fio.RequireInstalled();
        Directory.CreateDirectory(dir);
        var paths = Enumerable.Range(0, 3).Select(i => Path.Combine(dir, $"rebuild-target-{i}.dat")).ToArray();
        string sz = size.ToString(CultureInfo.InvariantCulture);
        var table = new TablePrinter("run", "engine", "MB/s", "ratio", "detail");
        var ratios = new List<double>();
        var steadyRatios = new List<double>();
        var p99s = new List<string>();
        string cmd = "";
        try
        {
            for (int run = 1; run <= runs; run++)
            {
                string r = run.ToString(CultureInfo.InvariantCulture);
                foreach (var p in paths)
                    Precondition(p, size);
                if (idle > TimeSpan.Zero)
                    await HostIdle.WaitAsync(idle);
                var cpu0 = HostCpuSample.Now();
                var (moved, jobSeconds, timeline, excludedMs, p99) = await RebuildOnceAsync(paths, sz, size, data, rate, writerCount, seconds, stages);
                double others = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
                if (p99 != null)
                    p99s.Add(p99);
                if (idle > TimeSpan.Zero)
                    await HostIdle.WaitAsync(idle);
                (double read, double write, cmd) = FioCopyLimit(paths[..2], size, runtime, inFlight);
                double strata = moved / jobSeconds, limit = Math.Min(read, write);
                ratios.Add(strata / limit);
                table.Add(r, "strata rebuild", Mb(strata), (strata / limit).ToString("0.00x", CultureInfo.InvariantCulture),
                    string.Create(CultureInfo.InvariantCulture, $"{moved >> 20} MiB moved in {jobSeconds:0.00} s with {writerCount} writers (machine busy {others:0}%, load {LoadAverage()})"));
                if (timeline.Steady(moved) is { } steady)
                {
                    steadyRatios.Add(steady.Rate / limit);
                    table.Add(r, "strata steady", Mb(steady.Rate), (steady.Rate / limit).ToString("0.00x", CultureInfo.InvariantCulture),
                        string.Create(CultureInfo.InvariantCulture, $"10%-90% of the bytes, {steady.Seconds:0.00} s; the exclusion took {excludedMs:0} ms, the first chunk was done at {timeline.FirstMs():0} ms"));
                }
                table.Add(r, "fio", Mb(limit), "1.00x", $"read {Mb(read)} MB/s + write {Mb(write)} MB/s at once, two files");
            }
            Console.WriteLine($"strata: StorageEngine on file:...?direct=1 targets (3); pool rf 2, 1 MiB chunks, {data >> 20} MiB; exclude-target 2, rebuild with migrate_rate {rate}" +
                (rate == Strata.Engine.Migration.MigrateRate.Auto ? " (the writers run: 128 MiB/s)" : "") +
                (writerCount > 0 ? $"; {writerCount} client writers of 4 KiB run before and during it" : "; nothing else runs (fio's copy runs alone too)"));
            Console.WriteLine(table);
            if (runs > 1)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"median of {runs}: ratio {Median(ratios):0.00}x{(steadyRatios.Count > 0 ? $", steady {Median(steadyRatios):0.00}x" : "")} (each run against the fio run just after it)"));
            foreach (var line in p99s)
                Console.WriteLine(line);
            Console.WriteLine(cmd);
            PrintStages(stages);
            return 0;
        }
        finally
        {
            foreach (var p in paths)
                File.Delete(p);
        }
    }

    /// <summary>
    /// `pool extend` (issue 14) on placement v1 (layout 1) and v2 (layout 4) side by side: two target
    /// files, a pool filled with --data of 1 MiB chunks, a third file added as a target, then the
    /// dry run and the job unthrottled. The fraction moved is replicas moved / replicas mapped;
    /// placement v2 should move about 1/3 going from two targets to three, v1 most of them.
    /// </summary>
    private static async Task<int> ExtendAsync(CommandLine cl)
    {
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        long size = CommandLine.ParseBytes(cl.String("size") ?? "2G", "--size");
        long data = CommandLine.ParseBytes(cl.String("data") ?? "1G", "--data");
        int rf = cl.Int("rf", 1);
        if (rf is < 1 or > 2)
            throw new PerfUsageException($"--rf {rf}: give 1 or 2");
        var idle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero;
        cl.ThrowIfUnused();
        Fio.RequireInstalled();
        Directory.CreateDirectory(dir);
        var paths = Enumerable.Range(0, 3).Select(i => Path.Combine(dir, $"extend-target-{i}.dat")).ToArray();
        string sz = size.ToString(CultureInfo.InvariantCulture);
        var table = new TablePrinter("layout", "placement", "replicas", "dry run: moving", "job: moved", "fraction", "job s", "MB/s");
        try
        {
            foreach (uint layout in new uint[] { 1, 4 })
            {
                foreach (var p in paths)
                    Precondition(p, size);
                if (idle > TimeSpan.Zero)
                    await HostIdle.WaitAsync(idle);
                var bench = Targets(paths, sz);
                try
                {
                    var devs = bench.Devices;
                    var engine = await StorageEngine.FormatAsync(devs[..2], new StorageEngineOptions { Catalog = UpTo4(4) }, force: true);
                    var pool = await engine.CreatePoolAsync("bench", (size - (256L << 20)) * 2, rf, new PoolCreateOptions { LayoutVersion = layout });
                    await pool.CreateContainerAsync("c");
                    var image = await pool.CreateImageAsync("c", "v", data, 1 << 20);
                    await ImageFill.FillAsync(image);
                    await engine.AddTargetAsync(devs[2]);
                    var dry = await pool.ExtendAsync(dryRun: true);
                    await pool.SetPropertyAsync(Strata.Engine.Migration.MigrateRate.Property, "0");
                    long t0 = Stopwatch.GetTimestamp();
                    await pool.ExtendAsync(dryRun: false);
                    await pool.WaitForJobAsync();
                    double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    var job = CompletedJob(pool, "extend");
                    table.Add(layout.ToString(CultureInfo.InvariantCulture), layout >= 4 ? "v2" : "v1",
                        dry.Replicas.ToString(CultureInfo.InvariantCulture),
                        string.Create(CultureInfo.InvariantCulture, $"{dry.MovingReplicas} ({dry.MovingFraction:P1})"),
                        string.Create(CultureInfo.InvariantCulture, $"{job.BytesDone >> 20} MiB"),
                        string.Create(CultureInfo.InvariantCulture, $"{(double)job.BytesDone / ((long)dry.Replicas << 20):P1}"),
                        seconds.ToString("0.00", CultureInfo.InvariantCulture), Mb(job.BytesDone / seconds));
                    await engine.DisposeAsync();
                }
                finally
                {
                    bench.Dispose();
                }
            }
            Console.WriteLine($"strata: StorageEngine on file:...?direct=1 targets (2, then 3 after `storage add-target`); pool rf {rf}, 1 MiB chunks, {data >> 20} MiB; `pool extend` unthrottled");
            Console.WriteLine(table);
            Console.WriteLine("fraction = bytes the job moved / bytes of every replica mapped before the extend (about 1/3 is all placement v2 needs from two targets to three)");
            return 0;
        }
        finally
        {
            foreach (var p in paths)
                File.Delete(p);
        }
    }

    /// <summary>One rebuild on freshly written files: bytes moved, seconds, its timeline, the exclusion's ms and the writers' p99 line (null without writers).</summary>
    private static async Task<(long Moved, double Seconds, JobTimeline Timeline, double ExcludedMs, string? P99)> RebuildOnceAsync(
        string[] paths, string sz, long size, long data, string rate, int writerCount, int seconds, Strata.Engine.Migration.MigrationStageTimes? stages)
    {
        var bench = Targets(paths, sz);
        try
        {
            var engine = await StorageEngine.FormatAsync(bench.Devices);
            var pool = await engine.CreatePoolAsync("bench", (size - (256L << 20)) * 3, 2, new PoolCreateOptions());
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "v", data, 1 << 20);
            await ImageFill.FillAsync(image);
            await pool.SetPropertyAsync(Strata.Engine.Migration.MigrateRate.Property, rate);
            var writers = RandomWriters.Start(image, data, writerCount);
            if (writerCount > 0)
                await Task.Delay(TimeSpan.FromSeconds(seconds));
            Strata.Engine.Migration.MigrationStageTimes.Current = stages;
            stages?.Begin();
            var c0 = pool.Log.Stats;
            long start = Stopwatch.GetTimestamp();
            await engine.ExcludeTargetAsync(2);
            double excludedMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            var timeline = await JobTimeline.FollowAsync(pool, start);
            long end = Stopwatch.GetTimestamp();
            stages?.End();
            Strata.Engine.Migration.MigrationStageTimes.Current = null;
            if (stages != null)
                stages.Commits = Strata.Perf.Store.StoreBenchmark.CommitSummary(c0, pool.Log.Stats) + (writerCount > 0 ? " (the writers' commits too)" : "");
            await writers.StopAsync();
            var job = CompletedJob(pool, "rebuild");
            var (p99Before, p99During, writesDuring) = writers.P99(start, end);
            string? p99 = writerCount > 0
                ? string.Create(CultureInfo.InvariantCulture,
                    $"client 4 KiB random write QD {writerCount} p99: before {p99Before:0.00} ms, during the rebuild {p99During:0.00} ms ({p99During / p99Before:0.00}x, {writesDuring} writes during)")
                : null;
            await engine.DisposeAsync();
            return (job.BytesDone, Stopwatch.GetElapsedTime(start, end).TotalSeconds, timeline, excludedMs, p99);
        }
        finally
        {
            bench.Dispose();
        }
    }

    /// <summary>The pool's job once it ended; throws unless it completed (<paramref name="what"/> names it).</summary>
    private static PoolJobStatus CompletedJob(Pool pool, string what)
    {
        var job = pool.JobStatus ?? throw new InvalidOperationException($"no {what} ran");
        if (job.State != "completed")
            throw new InvalidOperationException($"{what} ended {job.State}: {job.Reason}");
        return job;
    }

    private static string Mb(double bytesPerSecond) => (bytesPerSecond / 1e6).ToString("0.0", CultureInfo.InvariantCulture);

    private static LayoutCatalog UpTo4(int inFlight)
    {
        var d = LayoutCatalog.Default;
        var action = new Strata.Engine.Migration.MigrationAction(
            pool => new Strata.Engine.Migration.PlacementMove(Strata.Engine.Store.PlacementV2.Instance, pool.TargetCount),
            new Strata.Engine.Migration.MigrationOptions { InFlightPerTarget = inFlight });
        var v4 = d[4] with { Features = [d[4].Features[0] with { Action = action }] };
        return new LayoutCatalog([.. d.Versions.Take(3), v4, .. d.Versions.Skip(4)], d.Releases);
    }

    /// <summary>Fills a layout-3 pool, upgrades it to 4 unthrottled; returns the bytes the job moved, its seconds and the process's CPU seconds meanwhile.</summary>
    private static async Task<(long Moved, double Seconds, double Cpu)> MigrateAsync(string[] paths, long size, long data, int inFlight, Strata.Engine.Migration.MigrationStageTimes? stages)
    {
        var bench = Targets(paths, size.ToString(CultureInfo.InvariantCulture));
        var devs = bench.Devices;
        try
        {
            var engine = await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Catalog = UpTo4(inFlight) }, force: true);
            var pool = await engine.CreatePoolAsync("bench", (size - (256L << 20)) * 2, 1, new PoolCreateOptions { LayoutVersion = 3 });
            await pool.CreateContainerAsync("c");
            var image = await pool.CreateImageAsync("c", "v", data, 1 << 20);
            await ImageFill.FillAsync(image);
            Strata.Engine.Migration.MigrationStageTimes.Current = stages;
            stages?.Begin();
            var c0 = pool.Log.Stats;
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            var t0 = Stopwatch.GetTimestamp();
            await pool.UpgradeAsync(4, dryRun: false);
            await pool.WaitForUpgradeAsync();
            double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            stages?.End();
            Strata.Engine.Migration.MigrationStageTimes.Current = null;
            if (stages != null)
                stages.Commits = Strata.Perf.Store.StoreBenchmark.CommitSummary(c0, pool.Log.Stats);
            var status = pool.GetUpgradeStatus();
            if (status.Status != "completed")
                throw new InvalidOperationException($"upgrade ended {status.Status}: {status.Reason}");
            await engine.DisposeAsync();
            return (status.BytesDone, seconds, cpu);
        }
        finally
        {
            bench.Dispose();
        }
    }

    /// <summary>A job's bytes done, sampled every 20 ms from the start until it ends.</summary>
    private sealed class JobTimeline
    {
        private readonly List<(double Seconds, long Bytes)> _points = new();

        public static async Task<JobTimeline> FollowAsync(Pool pool, long start)
        {
            var t = new JobTimeline();
            var job = pool.WaitForJobAsync();
            while (!job.IsCompleted)
            {
                if (pool.JobStatus is { } s)
                    t._points.Add((Stopwatch.GetElapsedTime(start).TotalSeconds, s.BytesDone));
                await Task.WhenAny(job, Task.Delay(20));
            }
            await job;
            return t;
        }

        /// <summary>The rate between the samples at 10% and at 90% of <paramref name="total"/> bytes; null when too few samples.</summary>
        public (double Rate, double Seconds)? Steady(long total)
        {
            var a = _points.FirstOrDefault(p => p.Bytes >= total / 10);
            var b = _points.FirstOrDefault(p => p.Bytes >= total * 9 / 10);
            return b.Seconds > a.Seconds && b.Bytes > a.Bytes ? ((b.Bytes - a.Bytes) / (b.Seconds - a.Seconds), b.Seconds - a.Seconds) : null;
        }

        public double FirstMs()
        {
            var first = _points.FirstOrDefault(p => p.Bytes > 0);
            return first.Bytes > 0 ? first.Seconds * 1000 : double.NaN;
        }
    }

    /// <summary>Clients writing 4 KiB at random offsets of an image (one write each at a time, durable writes), each write's latency kept.</summary>
    private sealed class RandomWriters
    {
        private readonly System.Collections.Concurrent.ConcurrentQueue<(long At, double Ms)> _marks = new();
        private readonly CancellationTokenSource _stop = new();
        private Task[] _writers = [];

        public static RandomWriters Start(Image image, long bytes, int count = 8)
        {
            var w = new RandomWriters();
            var payload = new byte[4096];
            Random.Shared.NextBytes(payload);
            long blocks = bytes / 4096;
            w._writers = [.. Enumerable.Range(0, count).Select(n => Task.Run(async () =>
            {
                var rng = new Random(n);
                while (!w._stop.IsCancellationRequested)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    await image.WriteAsync(rng.NextInt64(blocks) * 4096, payload);
                    w._marks.Enqueue((t0, Stopwatch.GetElapsedTime(t0).TotalMilliseconds));
                }
            }))];
            return w;
        }

        public async Task StopAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAll(_writers);
            _stop.Dispose();
        }

        /// <summary>The p99 (ms) of writes begun before <paramref name="start"/>, of those begun in [start, end], and how many those were.</summary>
        public (double Before, double During, int WritesDuring) P99(long start, long end)
        {
            var during = _marks.Where(m => m.At >= start && m.At <= end).Select(m => m.Ms).ToArray();
            return (Percentile99([.. _marks.Where(m => m.At < start).Select(m => m.Ms)]), Percentile99(during), during.Length);
        }

        private static double Percentile99(double[] v) => v.Length == 0 ? 0 : v.Order().ElementAt((int)(v.Length * 0.99));
    }

    /// <summary>
    /// The target files, polled as the engine polls file targets (EngineService): one polling thread
    /// shared by both. A thread per device kept both cores of a 2-core machine spinning, and the
    /// migration's own work waited for a CPU (measured: 530 MB/s, the pollers 1.4 cores of the job).
    /// </summary>
    private static BenchDevices Targets(string[] paths, string size) =>
        new(paths.Select(p => $"file:{p}?create=1&size={size}&direct=1&qd=128"), pollers: 1, pollerThreads: 1, busyPollMicros: null);

    /// <summary>fio: per file one sequential 1 MiB reader (first half) and one writer (second half), QD <paramref name="depth"/> each, at once.</summary>
    private static (double Read, double Write, string Command) FioCopyLimit(string[] paths, long size, int runtime, int depth)
    {
        string half = (size / 2 >> 20).ToString(CultureInfo.InvariantCulture) + "M";
        var args = new List<string>
        {
            "--ioengine=io_uring", "--direct=1", "--bs=1M", $"--iodepth={depth}", "--time_based", $"--runtime={runtime}",
            "--ramp_time=1", $"--size={half}",
        };
        foreach (var p in paths)
        {
            args.AddRange([$"--name=r-{Path.GetFileName(p)}", $"--filename={p}", "--rw=read", "--offset=0"]);
            args.AddRange([$"--name=w-{Path.GetFileName(p)}", $"--filename={p}", "--rw=write", $"--offset={half}"]);
        }
        args.Add("--output-format=json");
        var (code, stdout, stderr) = Fio.Run(args, TimeSpan.FromSeconds(runtime + 60));
        string cmd = "fio " + string.Join(' ', args.Where(a => a != "--output-format=json"));
        if (code != 0)
            throw new PerfUsageException($"fio failed (exit {code}): {stderr.Trim()} [{cmd}]");
        using var doc = JsonDocument.Parse(stdout.AsMemory(stdout.IndexOf('{')));
        double read = 0, write = 0;
        foreach (var job in doc.RootElement.GetProperty("jobs").EnumerateArray())
        {
            read += job.GetProperty("read").GetProperty("bw_bytes").GetDouble();
            write += job.GetProperty("write").GetProperty("bw_bytes").GetDouble();
        }
        return (read, write, cmd);
    }
}
