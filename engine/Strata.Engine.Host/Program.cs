using System.CommandLine;
using Strata.Engine.Host;

// strata-engine [run] [--config FILE] [--data-dir DIR] | selfcheck. Without a subcommand the daemon runs.
// Before any socket exists: NBD's receive loops continue on the socket engine's thread (SocketCompletions).
Strata.Engine.Nbd.SocketCompletions.PreferInline();
var root = new RootCommand("strata-engine: the Strata storage engine daemon");

Option<FileInfo?> ConfigOption() => new("--config", "-c") { Description = "YAML configuration file (without it: the embedded default under --data-dir)" };
Option<DirectoryInfo?> DataDirOption() => new("--data-dir") { Description = "Data directory of the embedded default (targets, run/, ras/); default ./strata-data" };
Option<DirectoryInfo?> SocketDirOption() => new("--socket-dir") { Description = "Directory of the control socket (default DATA_DIR/run)" };
Option<int?> MetricsPortOption() => new("--metrics-port") { Description = "Also serve /metrics on this loopback TCP port" };
// Hidden, for tests and rollback drills: run as an older release whose catalog ends at N
// (it refuses newer pools exactly as that release would), and slow each upgrade step.
Option<uint?> MaxLayoutOption() => new("--max-layout") { Hidden = true, Description = "Run as a release that supports layout versions 1..N" };
Option<int?> UpgradeStepDelayOption() => new("--upgrade-step-delay-ms") { Hidden = true, Description = "Pause before each upgrade step (tests)" };
Option<bool> TakeoverOption() => new("--takeover") { Description = "Take over from the engine running on this data directory (hot swap): its sockets and NBD connections move here" };
Option<int?> UpgradeHoldAtStepOption() => new("--upgrade-hold-at-step") { Hidden = true, Description = "Hold the upgrade job before its Nth step until the engine stops (tests)" };

Command WithRunOptions(Command cmd)
{
    var config = ConfigOption();
    var dataDirOpt = DataDirOption();
    var socketDir = SocketDirOption();
    var metricsPort = MetricsPortOption();
    var maxLayout = MaxLayoutOption();
    var stepDelay = UpgradeStepDelayOption();
    var holdAt = UpgradeHoldAtStepOption();
    var takeover = TakeoverOption();
    cmd.Options.Add(takeover);
    cmd.Options.Add(maxLayout);
    cmd.Options.Add(stepDelay);
    cmd.Options.Add(holdAt);
    cmd.Options.Add(config);
    cmd.Options.Add(dataDirOpt);
    cmd.Options.Add(socketDir);
    cmd.Options.Add(metricsPort);
    cmd.SetAction((parse, ct) =>
    {
        EngineRelease.MaxLayout = parse.GetValue(maxLayout);
        if (EngineRelease.MaxLayout is { } n && (n < 1 || n > Strata.Engine.Layout.LayoutCatalog.Default.MaxSupported))
        {
            Console.Error.WriteLine($"strata-engine: --max-layout {n} is outside 1..{Strata.Engine.Layout.LayoutCatalog.Default.MaxSupported}");
            return Task.FromResult(2);
        }
        EngineRelease.UpgradeStepDelay = TimeSpan.FromMilliseconds(parse.GetValue(stepDelay) ?? 0);
        EngineRelease.UpgradeHoldAtStep = parse.GetValue(holdAt) ?? 0;
        return Daemon.RunAsync(parse.GetValue(config)?.FullName, parse.GetValue(dataDirOpt)?.FullName,
        parse.GetValue(socketDir)?.FullName, parse.GetValue(metricsPort), parse.GetValue(takeover));
    });
    return cmd;
}

WithRunOptions(root);
root.Subcommands.Add(WithRunOptions(new Command("run", "Run the engine: open the targets and serve the control API until SIGTERM/SIGINT")));

var dataDir = new Option<DirectoryInfo>("--data-dir")
{
    Description = "Directory of the embedded default's file-backed targets",
    DefaultValueFactory = _ => new DirectoryInfo(Path.Combine(Environment.CurrentDirectory, "strata-data")),
};
var targets = new Option<int>("--targets") { Description = "Number of file-backed targets", DefaultValueFactory = _ => 2 };
var size = new Option<string>("--target-size") { Description = "Size of each target file (sparse), e.g. 1G", DefaultValueFactory = _ => "1G" };

var selfCheck = new Command("selfcheck", "Open (creating when missing) the embedded default targets and check every device operation on each");
selfCheck.Options.Add(dataDir);
selfCheck.Options.Add(targets);
selfCheck.Options.Add(size);
selfCheck.SetAction(async (parse, ct) =>
    await SelfCheck.RunAsync(parse.GetValue(dataDir)!, parse.GetValue(targets), parse.GetValue(size)!, Console.Out, ct));
root.Subcommands.Add(selfCheck);

// `identify`: this binary's release as one JSON line; `strata system swap --binary` runs it to check what it swaps to.
var identify = new Command("identify", "Print this binary's release (version, newest layout, control API range) as JSON");
var identifyMaxLayout = MaxLayoutOption();
identify.Options.Add(identifyMaxLayout);
identify.SetAction(parse =>
{
    EngineRelease.MaxLayout = parse.GetValue(identifyMaxLayout);
    Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(new
    {
        engine = "strata-engine",
        version = EngineService.Version,
        maxLayout = EngineRelease.Catalog.MaxSupported,
        apiVersion = Strata.Engine.Control.Api.Version,
        apiMinVersion = Strata.Engine.Control.Api.MinVersion,
    }));
    return 0;
});
root.Subcommands.Add(identify);

// No ProcessTerminationTimeout: System.CommandLine would otherwise take SIGTERM/SIGINT itself and
// end the process with 143 two seconds later, in the middle of the daemon's clean stop (issue 18).
// The daemon handles the signals (Daemon.RunAsync); selfcheck keeps the default action.
return await root.Parse(args).InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
