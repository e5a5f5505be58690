using Strata.Cli;

var root = CommandTree.Build();
var parse = root.Parse(args);
if (parse.Errors.Count > 0)
    return UsageErrors.Report(parse, Console.Error);
return await parse.InvokeAsync();
