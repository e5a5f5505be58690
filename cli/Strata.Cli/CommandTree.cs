using System.CommandLine;
using Strata.Cli.Commands.Cont;
using Strata.Cli.Commands.Engine;
using Strata.Cli.Commands.Image;
using Strata.Cli.Commands.Pool;
using Strata.Cli.Commands.Storage;
using Strata.Cli.Commands.SystemGroup;

namespace Strata.Cli;

/// <summary>The whole command tree, built in one place (Program, completion scripts and help examples walk it).</summary>
public static class CommandTree
{
    public static RootCommand Build()
    {
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
        root.Subcommands.Add(Completion.Create(root));
        Examples.Apply(root);
        return root;
    }

    /// <summary>"strata pool create" for a command.</summary>
    public static string PathOf(Command cmd)
    {
        var names = new List<string>();
        for (Symbol? s = cmd; s != null; s = s.Parents.FirstOrDefault())
            names.Add(s is RootCommand ? "strata" : s.Name);
        names.Reverse();
        return string.Join(' ', names);
    }

    /// <summary>Every command under <paramref name="cmd"/>, depth first (the root excluded).</summary>
    public static IEnumerable<Command> Descendants(Command cmd)
    {
        foreach (var c in cmd.Subcommands)
        {
            yield return c;
            foreach (var d in Descendants(c))
                yield return d;
        }
    }

    /// <summary>The first line of a description (the summary without its example).</summary>
    public static string Summary(Command cmd) => (cmd.Description ?? "").Split('\n')[0];
}
