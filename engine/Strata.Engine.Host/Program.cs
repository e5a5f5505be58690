using System.CommandLine;
using Strata.Engine.Host;

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

var root = new RootCommand("strata-engine: the Strata storage engine daemon");
root.Subcommands.Add(selfCheck);
return await root.Parse(args).InvokeAsync();
