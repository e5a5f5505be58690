using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Pools;
using Strata.Perf.Common;

namespace Strata.Perf.Upgrade;

/// <summary>
/// Issue 15's figures for `image migrate execute`, with the engine in this process as the daemon
/// runs it: the copy rate of an image from one pool into another on the same two file targets
/// against `qemu-img convert` of the same bytes between two raw files on the same filesystem, and a
/// client's 4 KiB random read and write p99 on the migrating image before and during execute.
/// </summary>
public static class ImageMigrateBenchmark
{
    public const string Usage = """
        image-migrate: `image migrate execute` rate vs `qemu-img convert -t none -T none` of the same bytes
          --dir DIR          target files DIR/image-migrate-target-N.dat and the raw files (default /var/tmp/strata-perf)
          --size SIZE        each of the two target files (default 2G); pools src and dst each get half
          --data SIZE        the image, written fully with random bytes (default 1G; --latency 256M)
          --chunk-size SIZE  the image's chunk size, source and destination (default 1M)
          --runs N           copies per side, interleaved; the fastest counts (default 3)
          --wait-idle SEC    before each measured run, wait up to SEC for the machine to be idle
          --busy-poll US     the poller's busy-poll window (default: the engine's, spin while any I/O is in
                             flight, so its CPU is the run's wall time); 1 makes its CPU the work done on it
          --latency          instead: 4 readers and 4 writers of 4 KiB at random offsets of the migrating
                             image (QD 1 each, durable writes); p99 before prepare, while prepared and
                             during execute, for each --rates value (the destination pool's migrate_rate;
                             default auto,0,256M,64M,16M; auto, the pool's default: 128 MiB/s while
                             clients do I/O on either pool; 0 = unthrottled)
          --seconds SEC      --latency: how long the clients run before prepare and before execute (default 3)
        """;

    private const string Source = "src/c/v", Destination = "dst/c/v";

    public static async Task<int> RunAsync(CommandLine cl)
    {
        bool latency = cl.Has("latency");
        string dir = cl.String("dir") ?? "/var/tmp/strata-perf";
        long size = CommandLine.ParseBytes(cl.String("size") ?? "2G", "size");
        long data = CommandLine.ParseBytes(cl.String("data") ?? (latency ? "256M" : "1G"), "data");
        int chunk = checked((int)CommandLine.ParseBytes(cl.String("chunk-size") ?? "1M", "chunk-size"));
        var idle = cl.Has("wait-idle") ? TimeSpan.FromSeconds(cl.Seconds("wait-idle", 60)) : TimeSpan.Zero;
        int? busyPoll = cl.Has("busy-poll") ? cl.Int("busy-poll", 0) : null;
        int runs = 0, seconds = 0;
        List<(string Text, long Bytes)> rates = [];
        if (latency)
        {
            seconds = cl.Int("seconds", 3);
            rates = [.. (cl.String("rates") ?? "auto,0,256M,64M,16M").Split(',').Select(r => (Text: r.Trim(),
                Bytes: r.Trim() is "0" or "auto" ? 0L : CommandLine.ParseBytes(r, "rates")))];
            if (seconds == 0)
                throw new PerfUsageException("--seconds must be at least 1");
        }
        else
        {
            runs = cl.Int("runs", 3);
            if (runs == 0)
                throw new PerfUsageException("--runs must be at least 1");
        }
        cl.ThrowIfUnused();
        if (chunk < 4096 || (chunk & (chunk - 1)) != 0)
            throw new PerfUsageException($"--chunk-size {chunk} is not a power of two of at least 4K");
        // Each pool gets half of each target less room for its metadata (logs, checkpoints).
        long pool = size - (256L << 20);
        if (data > pool * 3 / 4)
            throw new PerfUsageException($"--data {data >> 20} MiB does not fit a pool of {pool >> 20} MiB (half of two --size {size >> 20} MiB targets, less metadata) with room; give at most {pool * 3 / 4 >> 20}M or a larger --size");
        Fio.RequireInstalled();
        if (!latency)
            RequireQemuImg();
        Directory.CreateDirectory(dir);
        var paths = Enumerable.Range(0, 2).Select(i => Path.Combine(dir, $"image-migrate-target-{i}.dat")).ToArray();
        string srcRaw = Path.Combine(dir, "image-migrate-src.raw"), dstRaw = Path.Combine(dir, "image-migrate-dst.raw");
        try
        {
            if (busyPoll is int us)
                Console.WriteLine($"poller: busy-polls {us} us without a completion, then waits in the kernel (not the engine's default)");
            // Written fully once, so neither side reads holes or allocates file blocks as it writes.
            foreach (var p in paths)
                Precondition(p, size);
            var bench = new BenchDevices(paths.Select(p => $"file:{p}?create=1&size={size}&direct=1&qd=128"), pollers: 1, pollerThreads: 1, busyPollMicros: busyPoll);
            try
            {
                var engine = await StorageEngine.FormatAsync(bench.Devices);
                var sp = await engine.CreatePoolAsync("src", pool, 1);
                var dp = await engine.CreatePoolAsync("dst", pool, 1);
                await sp.CreateContainerAsync("c");
                await dp.CreateContainerAsync("c");
                var image = await sp.CreateImageAsync("c", "v", data, chunk);
                await ImageFill.FillAsync(image);
                await image.FlushAsync();
                Console.WriteLine($"strata: StorageEngine on file:...?direct=1 targets (2, {size >> 20} MiB each, one shared poller); pools src and dst, rf 1; image {data >> 20} MiB, {chunk >> 10} KiB chunks, random bytes");
                if (latency)
                    await LatencyAsync(engine, sp, dp, data, rates, seconds, idle);
                else
                    await RateAsync(engine, data, runs, idle, srcRaw, dstRaw, paths);
                await engine.DisposeAsync();
            }
            finally
            {
                bench.Dispose();
            }
            return 0;
        }
        finally
        {
            foreach (var p in paths.Append(srcRaw).Append(dstRaw))
                File.Delete(p);
        }
    }

    /// <summary>
    /// The copy rate: per run, prepare src/c/v -> dst/c/v, then execute timed from the call until the
    /// job ended (every chunk copied, the destination flushed, "executed" recorded), then abort (the
    /// destination goes, the source stays for the next run). qemu-img runs between, on a raw file of
    /// the same bytes in the same directory, into a new file (as an operator would run it).
    /// </summary>
    private static async Task RateAsync(StorageEngine engine, long data, int runs, TimeSpan idle, string srcRaw, string dstRaw, string[] targets)
    {
        // The same bytes as a raw file: read back through the engine, written with O_DIRECT.
        await WriteRawCopyAsync(engine, srcRaw, data);
        string[] qemuArgs = ["convert", "-f", "raw", "-O", "raw", "-t", "none", "-T", "none", srcRaw, dstRaw];
        var strata = new List<(double Seconds, long Bytes, double Busy)>();
        var qemu = new List<(double Seconds, double Busy)>();
        for (int run = 0; run < runs; run++)
        {
            HostWriteback.Sync();
            if (idle > TimeSpan.Zero)
                await HostIdle.WaitAsync(idle);
            await engine.PrepareMigrationAsync(Source, Destination);
            var cpu0 = HostCpuSample.Now();
            var own0 = OwnCpu();
            double poll0 = PollerCpu();
            long t0 = Stopwatch.GetTimestamp();
            await engine.ExecuteMigrationAsync(Source);
            await engine.WaitForMigrationJobAsync(Source);
            double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            double cpu = (OwnCpu() - own0).TotalSeconds, poll = PollerCpu() - poll0;
            double busy = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
            var st = engine.MigrationStatus(Source);
            if (st.State != "executed")
                throw new InvalidOperationException($"execute ended {st.State}: {st.Error}");
            await engine.AbortMigrationAsync(Source);
            strata.Add((s, st.BytesCopied, busy));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  execute          run {run + 1}: {st.BytesCopied >> 20} MiB in {s:0.000} s, {Mb(st.BytesCopied / s)} MB/s, cpu {cpu:0.00} s (engine process; its poller thread {poll:0.00} s), machine busy {busy:0}% of a CPU"));

            File.Delete(dstRaw);
            HostWriteback.Sync();
            if (idle > TimeSpan.Zero)
                await HostIdle.WaitAsync(idle);
            cpu0 = HostCpuSample.Now();
            var children0 = ChildrenCpu();
            t0 = Stopwatch.GetTimestamp();
            // qemu-img flushes the new file when it closes it, as execute flushes the destination pool.
            var (code, _, err) = ExternalTool.Run("qemu-img", qemuArgs, TimeSpan.FromMinutes(30));
            s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            cpu = ChildrenCpu() - children0;
            busy = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
            if (code != 0)
                throw new PerfUsageException($"qemu-img convert failed (exit {code}): {err.Trim()}");
            if (new FileInfo(dstRaw).Length != data)
                throw new InvalidOperationException($"qemu-img convert wrote {new FileInfo(dstRaw).Length} bytes, not {data}");
            qemu.Add((s, busy));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  qemu-img convert run {run + 1}: {data >> 20} MiB in {s:0.000} s, {Mb(data / s)} MB/s, cpu {cpu:0.00} s (qemu-img), machine busy {busy:0}% of a CPU"));
        }
        var bs = strata.MinBy(r => r.Seconds);
        var bq = qemu.MinBy(r => r.Seconds);
        double rs = bs.Bytes / bs.Seconds, rq = data / bq.Seconds;
        Console.WriteLine();
        var table = new TablePrinter("copy", "MB/s", "ratio", "detail");
        table.Add("strata execute", Mb(rs), (rs / rq).ToString("0.00x", CultureInfo.InvariantCulture),
            string.Create(CultureInfo.InvariantCulture, $"{bs.Bytes >> 20} MiB src -> dst in {bs.Seconds:0.000} s, fastest of {runs} (machine busy {bs.Busy:0}%)"));
        table.Add("qemu-img convert", Mb(rq), "1.00x",
            string.Create(CultureInfo.InvariantCulture, $"{data >> 20} MiB raw -> new raw file in {bq.Seconds:0.000} s, fastest of {runs} (machine busy {bq.Busy:0}%)"));
        Console.WriteLine(table);
        Console.WriteLine($"qemu-img {string.Join(' ', qemuArgs)}    (same filesystem as {Path.GetDirectoryName(targets[0])}; ratio = strata / qemu-img, higher is better)");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]} at the end"));
    }

    /// <summary>
    /// The clients' p99 per migrate_rate: the clients run on the source image (opened before prepare,
    /// as a connected NBD client's handle is) for --seconds, then prepare; --seconds more; then execute
    /// until the job ends; then they stop and the migration is aborted (the source keeps every write).
    /// </summary>
    private static async Task LatencyAsync(StorageEngine engine, Pool sp, Pool dp, long data, List<(string Text, long Bytes)> rates, int seconds, TimeSpan idle)
    {
        var table = new TablePrinter("migrate_rate", "job s", "MiB", "read p99 before/prepared/during ms", "ratio", "write p99 before/prepared/during ms", "ratio", "reads/writes during");
        // Warm-up, not counted: the first seconds of the clients (compilation, the first log commits) are slower.
        var warm = RandomClients.Start(sp.OpenImage("c", "v"), data, 4);
        await Task.Delay(TimeSpan.FromSeconds(seconds));
        await warm.StopAsync();
        var cpu0 = HostCpuSample.Now();
        var ioLines = new List<string>();
        foreach (var (text, rate) in rates)
        {
            if (idle > TimeSpan.Zero)
                await HostIdle.WaitAsync(idle);
            await dp.SetPropertyAsync(Strata.Engine.Migration.MigrateRate.Property, text == "auto" ? text : rate.ToString(CultureInfo.InvariantCulture));
            var io0 = ProcIo.Now();
            var clients = RandomClients.Start(sp.OpenImage("c", "v"), data, 4);
            await Task.Delay(TimeSpan.FromSeconds(seconds));
            var io1 = ProcIo.Now();
            long prepared = Stopwatch.GetTimestamp();
            await engine.PrepareMigrationAsync(Source, Destination);
            await Task.Delay(TimeSpan.FromSeconds(seconds));
            var io2 = ProcIo.Now();
            long start = Stopwatch.GetTimestamp();
            await engine.ExecuteMigrationAsync(Source);
            await engine.WaitForMigrationJobAsync(Source);
            long end = Stopwatch.GetTimestamp();
            var io3 = ProcIo.Now();
            await clients.StopAsync();
            var st = engine.MigrationStatus(Source);
            if (st.State != "executed")
                throw new InvalidOperationException($"execute ended {st.State}: {st.Error}");
            await engine.AbortMigrationAsync(Source);
            var r = (Before: clients.P99(write: false, 0, prepared), Prepared: clients.P99(write: false, prepared, start), During: clients.P99(write: false, start, end));
            var w = (Before: clients.P99(write: true, 0, prepared), Prepared: clients.P99(write: true, prepared, start), During: clients.P99(write: true, start, end));
            table.Add(text == "auto" ? "auto (default)" : text, Stopwatch.GetElapsedTime(start, end).TotalSeconds.ToString("0.00", CultureInfo.InvariantCulture),
                (st.BytesCopied >> 20).ToString(CultureInfo.InvariantCulture),
                $"{Ms(r.Before.P99)} / {Ms(r.Prepared.P99)} / {Ms(r.During.P99)}", Ratio(r.During.P99, r.Before.P99),
                $"{Ms(w.Before.P99)} / {Ms(w.Prepared.P99)} / {Ms(w.During.P99)}", Ratio(w.During.P99, w.Before.P99),
                $"{r.During.Count}/{w.During.Count}");
            // Device bytes per client operation (/proc/self/io, O_DIRECT file targets): what survives a busy machine.
            string PerOp(ProcIo a, ProcIo b, (double P99, int Count) reads, (double P99, int Count) writes, long copied) =>
                string.Create(CultureInfo.InvariantCulture,
                    $"{(b.Written - a.Written - copied) / 1024.0 / Math.Max(1, writes.Count):0} KiB written per write, {(b.Read - a.Read - copied) / 1024.0 / Math.Max(1, reads.Count + writes.Count):0} KiB read per op");
            ioLines.Add($"{text}: before {PerOp(io0, io1, r.Before, w.Before, 0)}; prepared {PerOp(io1, io2, r.Prepared, w.Prepared, 0)}; "
                + $"during, less the copy's {st.BytesCopied >> 20} MiB each way, {PerOp(io2, io3, r.During, w.During, st.BytesCopied)}");
        }
        double busy = HostCpuSample.BusyPercent(cpu0, HostCpuSample.Now());
        Console.WriteLine("clients: 4 readers and 4 writers of 4 KiB at random offsets of src/c/v (QD 1 each, durable writes); execute src/c/v -> dst/c/v; ratio = during / before");
        Console.WriteLine(table);
        foreach (var line in ioLines)
            Console.WriteLine(line);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"machine busy {busy:0}% of a CPU during the runs (load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]} at the end)"));
    }

    /// <summary>Writes the source image's bytes to a raw file (qemu-img reads it with O_DIRECT, so what is cached does not count).</summary>
    private static async Task WriteRawCopyAsync(StorageEngine engine, string path, long data)
    {
        var sp = await engine.OpenPoolAsync("src");
        var image = sp.OpenImage("c", "v");
        var buffer = new byte[1 << 20];
        using (var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            for (long at = 0; at < data; at += buffer.Length)
            {
                int n = (int)Math.Min(buffer.Length, data - at);
                await image.ReadAsync(at, buffer.AsMemory(0, n));
                await file.WriteAsync(buffer.AsMemory(0, n));
            }
            file.Flush(flushToDisk: true);
        }
    }

    private static void Precondition(string path, long size)
    {
        File.Delete(path);
        Fio.RunJob(["--name=precondition", "--filename=" + path, "--size=" + size.ToString(CultureInfo.InvariantCulture), "--rw=write", "--bs=1M", "--iodepth=16",
            "--ioengine=io_uring", "--direct=1", "--end_fsync=1"], TimeSpan.FromMinutes(30));
    }

    private static void RequireQemuImg()
    {
        try
        {
            var (code, _, err) = ExternalTool.Run("qemu-img", ["--version"], TimeSpan.FromSeconds(10));
            if (code != 0)
                throw new PerfUsageException($"qemu-img --version failed (exit {code}): {err.Trim()}");
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new PerfUsageException("qemu-img not found on PATH: install it (apt-get install qemu-utils) to run the comparison");
        }
    }

    /// <summary>This process's CPU time (every thread: the copy, the poller, the runtime).</summary>
    private static TimeSpan OwnCpu()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>
    /// CPU seconds of the benchmark's polling thread (/proc/self/task/*/stat utime + stime): the copy's
    /// continuations run inline on it (checksums, copies, submissions). It busy-polls while any I/O is
    /// in flight, so by default this is about the run's wall time; with --busy-poll 1 it is the work.
    /// </summary>
    private static double PollerCpu()
    {
        long ticks = 0;
        foreach (var task in Directory.EnumerateDirectories("/proc/self/task"))
        {
            try
            {
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                int open = stat.IndexOf('('), close = stat.LastIndexOf(')');
                if (!stat.AsSpan(open + 1, close - open - 1).StartsWith("bench-poll", StringComparison.Ordinal))
                    continue;
                var f = stat[(close + 2)..].Split(' ');
                ticks += long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }
        return ticks / 100.0;
    }

    /// <summary>CPU seconds of the child processes waited for so far (/proc/self/stat cutime + cstime).</summary>
    private static double ChildrenCpu()
    {
        string stat = File.ReadAllText("/proc/self/stat");
        var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // Fields 16 and 17 of stat(5); f[0] is field 3.
        return (long.Parse(f[13], CultureInfo.InvariantCulture) + long.Parse(f[14], CultureInfo.InvariantCulture)) / 100.0;
    }

    private static string Mb(double bytesPerSecond) => (bytesPerSecond / 1e6).ToString("0.0", CultureInfo.InvariantCulture);

    private static string Ms(double ms) => ms.ToString("0.00", CultureInfo.InvariantCulture);

    private static string Ratio(double during, double before) => before > 0 ? (during / before).ToString("0.00x", CultureInfo.InvariantCulture) : "-";

    /// <summary>This process's device bytes read and written so far (/proc/self/io read_bytes, write_bytes: O_DIRECT I/O included).</summary>
    private readonly record struct ProcIo(long Read, long Written)
    {
        public static ProcIo Now()
        {
            long read = 0, written = 0;
            foreach (var line in File.ReadLines("/proc/self/io"))
            {
                if (line.StartsWith("read_bytes:", StringComparison.Ordinal))
                    read = long.Parse(line.AsSpan("read_bytes:".Length).Trim(), CultureInfo.InvariantCulture);
                else if (line.StartsWith("write_bytes:", StringComparison.Ordinal))
                    written = long.Parse(line.AsSpan("write_bytes:".Length).Trim(), CultureInfo.InvariantCulture);
            }
            return new ProcIo(read, written);
        }
    }

    /// <summary>Readers and writers of 4 KiB at random offsets of one image, QD 1 each; every operation's start and latency kept.</summary>
    private sealed class RandomClients
    {
        private readonly ConcurrentQueue<(long At, double Ms, bool Write)> _marks = new();
        private readonly CancellationTokenSource _stop = new();
        private Task[] _tasks = [];

        public static RandomClients Start(Image image, long bytes, int each)
        {
            var c = new RandomClients();
            long blocks = bytes / 4096;
            c._tasks = [.. Enumerable.Range(0, 2 * each).Select(n => Task.Run(async () =>
            {
                bool write = n >= each;
                var rng = new Random(n);
                var buf = new byte[4096];
                rng.NextBytes(buf);
                while (!c._stop.IsCancellationRequested)
                {
                    long at = rng.NextInt64(blocks) * 4096;
                    long t0 = Stopwatch.GetTimestamp();
                    if (write)
                        await image.WriteAsync(at, buf);
                    else
                        await image.ReadAsync(at, buf);
                    c._marks.Enqueue((t0, Stopwatch.GetElapsedTime(t0).TotalMilliseconds, write));
                }
            }))];
            return c;
        }

        public async Task StopAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAll(_tasks);
            _stop.Dispose();
        }

        /// <summary>The p99 (ms) of the reads or writes begun in [from, to), and how many there were.</summary>
        public (double P99, int Count) P99(bool write, long from, long to)
        {
            var v = _marks.Where(m => m.Write == write && m.At >= from && m.At < to).Select(m => m.Ms).Order().ToArray();
            return (v.Length == 0 ? 0 : v[Math.Min(v.Length - 1, (int)(v.Length * 0.99))], v.Length);
        }
    }
}
