using Strata.Perf.Common;
using Strata.Perf.Device;
using Strata.Perf.Nbd;
using Strata.Perf.Store;
using Strata.Perf.Upgrade;

namespace Strata.Perf;

/// <summary>
/// Entry point: one subcommand per benchmark (device, store, nbd). Each subcommand runs Strata and a reference tool on the same
/// machine and prints ratios.
/// </summary>
public static class Program
{
    private static readonly (string Name, string Summary, Func<CommandLine, Task<int>> Run)[] Commands =
    [
        ("device", "Strata's device layer vs fio (io_uring, O_DIRECT) on the same file", DeviceBenchmark.RunAsync),
        ("store", "image I/O through the store (checksums, COW, log) vs fio on the raw target files", StoreBenchmark.RunAsync),
        ("upgrade", "the I/O pause of a metadata-only pool upgrade vs pool size (smallest pool as reference)", UpgradeBenchmark.RunAsync),
        ("migrate", "placement_v2 migration rate (unthrottled) vs fio reading and writing the same target files", MigrateBenchmark.RunAsync),
        ("image-migrate", "`image migrate execute` rate vs qemu-img convert of the same bytes; --latency: client p99 during execute", ImageMigrateBenchmark.RunAsync),
        ("wal-format", "WAL v1 vs v2 framing: log bytes and CPU per commit batch of 4 KiB writes (in memory)", WalFormatBenchmark.RunAsync),
        ("nbd", "fio's nbd engine against Strata's NBD server, qemu-nbd and nbdkit (file plugin) on one machine", NbdBenchmark.RunAsync),
        ("nbd-copy", "nbdcopy and qemu-img convert copying a half-full sparse image out of Strata, qemu-nbd and nbdkit", NbdCopyBenchmark.RunAsync),
    ];

    public static async Task<int> Main(string[] args)
    {
        // As strata-engine does (the nbd subcommand runs the daemon's NBD server in this process).
        Strata.Engine.Nbd.SocketCompletions.PreferInline();
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            PrintUsage();
            return args.Length == 0 ? 2 : 0;
        }
        var command = Array.Find(Commands, c => c.Name == args[0]);
        if (command.Name is null)
        {
            Console.Error.WriteLine($"strata-perf: unknown command '{args[0]}' (known: {string.Join(", ", Commands.Select(c => c.Name))})");
            return 2;
        }
        try
        {
            var cl = CommandLine.Parse(args.AsSpan(1).ToArray());
            if (cl.Has("help"))
            {
                Console.WriteLine(command.Name switch { "store" => StoreBenchmark.Usage, "upgrade" => UpgradeBenchmark.Usage, "migrate" => MigrateBenchmark.Usage, "image-migrate" => ImageMigrateBenchmark.Usage, "wal-format" => WalFormatBenchmark.Usage, "nbd" => NbdBenchmark.Usage, "nbd-copy" => NbdCopyBenchmark.Usage, _ => DeviceBenchmark.Usage });
                return 0;
            }
            return await command.Run(cl);
        }
        catch (PerfUsageException e)
        {
            // Expected operator errors: one line, no stack trace.
            Console.Error.WriteLine($"strata-perf {command.Name}: {e.Message}");
            return 2;
        }
    }

    private static void PrintUsage()
    {
        Console.WriteLine("usage: Strata.Perf <command> [options]   (dotnet run -c Release --project perf/Strata.Perf -- <command> ...)");
        foreach (var c in Commands)
            Console.WriteLine($"  {c.Name,-8} {c.Summary}");
        Console.WriteLine();
        Console.WriteLine(DeviceBenchmark.Usage);
        Console.WriteLine(StoreBenchmark.Usage);
        Console.WriteLine(UpgradeBenchmark.Usage);
        Console.WriteLine(MigrateBenchmark.Usage);
        Console.WriteLine(ImageMigrateBenchmark.Usage);
        Console.WriteLine(WalFormatBenchmark.Usage);
        Console.WriteLine(NbdBenchmark.Usage);
    }
}
