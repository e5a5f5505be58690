using System.CommandLine;
using Strata.Cli;
using Strata.Cli.Commands.Cont;
using Strata.Cli.Commands.Engine;
using Strata.Cli.Commands.Image;
using Strata.Cli.Commands.Pool;
using Strata.Cli.Commands.Storage;
using Strata.Cli.Commands.SystemGroup;

var root = new RootCommand("strata: administer a Strata storage engine (a thin client of its control API on a Unix socket)");
root.Options.Add(Cli.Socket);
root.Options.Add(Cli.DataDir);
root.Options.Add(Cli.Json);
root.Subcommands.Add(SystemCommands.Create());
root.Subcommands.Add(StorageCommands.Create());
root.Subcommands.Add(PoolCommands.Create());
root.Subcommands.Add(ContCommands.Create());
root.Subcommands.Add(ImageCommands.Create());
root.Subcommands.Add(EngineCommands.Create());

var parse = root.Parse(args);
if (parse.Errors.Count > 0)
{
    foreach (var e in parse.Errors)
        Console.Error.WriteLine($"strata: {e.Message}");
    Console.Error.WriteLine("strata: see 'strata --help'");
    return ExitCodes.Usage;
}
return await parse.InvokeAsync();
