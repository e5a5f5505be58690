using System.CommandLine;
using System.CommandLine.Parsing;
using System.Text.RegularExpressions;
using Strata.Engine.Store;

namespace Strata.Cli;

/// <summary>
/// Parse errors as an operator reads them: an unknown command or option gets "did you mean"
/// (and a group's command list), a value of the wrong kind says what kind it wants, and no
/// .NET type name ever reaches the terminal. Exit code 2 (usage).
/// </summary>
public static partial class UsageErrors
{
    public static int Report(ParseResult parse, TextWriter err)
    {
        var cmd = parse.CommandResult.Command;
        string path = CommandTree.PathOf(cmd);
        string? unknown = parse.UnmatchedTokens.FirstOrDefault();
        if (unknown != null && unknown.StartsWith('-') && unknown.Length > 1)
        {
            var names = OptionsOf(cmd).SelectMany(o => o.Aliases.Prepend(o.Name)).Where(n => n.StartsWith("--", StringComparison.Ordinal)).Distinct();
            err.WriteLine($"strata: unknown option {UserText.Quote(unknown)} for '{path}'{DidYouMean(unknown, names)}");
            err.WriteLine($"strata: see '{path} --help'");
            return ExitCodes.Usage;
        }
        if (cmd.Subcommands.Count > 0)
        {
            // A group: an unknown command, or none at all.
            err.WriteLine(unknown != null
                ? $"strata: unknown command {UserText.Quote(unknown)} for '{path}'{DidYouMean(unknown, cmd.Subcommands.Where(c => !c.Hidden).Select(c => c.Name))}"
                : $"strata: '{path}' needs a command");
            WriteCommands(cmd, path, err);
            return ExitCodes.Usage;
        }
        if (unknown != null)
        {
            err.WriteLine($"strata: unexpected argument {UserText.Quote(unknown)} for '{path}'");
            err.WriteLine($"strata: see '{path} --help'");
            return ExitCodes.Usage;
        }
        foreach (var e in parse.Errors)
            err.WriteLine(MissingArgument().IsMatch(e.Message)
                ? $"strata: '{path}' needs {Needs(cmd)}"
                : $"strata: {Rewrite(e.Message)}");
        err.WriteLine($"strata: see '{path} --help'");
        return ExitCodes.Usage;
    }

    /// <summary>What a command's arguments are, as its usage names them: POOL, or a spec (POOL/CONT/IMAGE).</summary>
    private static string Needs(Command cmd)
    {
        var names = cmd.Arguments.Select(a => a.Name).ToList();
        if (names.Contains("cont"))
            return names.Contains("image") ? "POOL/CONT/IMAGE (or POOL CONT IMAGE)" : "POOL/CONT (or POOL CONT)";
        return string.Join(' ', cmd.Arguments.Where(a => a.Arity.MinimumNumberOfValues > 0).Select(a => a.Name.ToUpperInvariant()));
    }

    private static IEnumerable<Option> OptionsOf(Command cmd)
    {
        foreach (var o in cmd.Options)
            yield return o;
        foreach (var p in Ancestors(cmd))
            foreach (var o in p.Options.Where(o => o.Recursive))
                yield return o;
    }

    private static IEnumerable<Command> Ancestors(Command cmd)
    {
        for (var s = cmd.Parents.FirstOrDefault(); s != null; s = s.Parents.FirstOrDefault())
            if (s is Command c)
                yield return c;
    }

    private static void WriteCommands(Command group, string path, TextWriter err)
    {
        var subs = group.Subcommands.Where(c => !c.Hidden).ToList();
        int width = subs.Max(c => c.Name.Length);
        err.WriteLine($"Commands of '{path}':");
        foreach (var c in subs)
            err.WriteLine($"  {c.Name.PadRight(width)}  {CommandTree.Summary(c)}");
        err.WriteLine($"See '{path} COMMAND --help'.");
    }

    /// <summary>"; did you mean 'list'?" for the closest candidate within a few edits, else "".</summary>
    public static string DidYouMean(string typed, IEnumerable<string> candidates)
    {
        string? best = null;
        int bestDistance = int.MaxValue;
        foreach (var c in candidates)
        {
            int d = c.StartsWith(typed, StringComparison.Ordinal) ? 0 : Distance(typed, c);
            if (d < bestDistance)
                (best, bestDistance) = (c, d);
        }
        return best != null && bestDistance <= Math.Max(2, typed.Length / 3) ? $"; did you mean '{best}'?" : "";
    }

    /// <summary>Optimal string alignment distance (Levenshtein with transpositions: "lsit" is one edit from "list").</summary>
    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++)
            d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++)
            d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
            }
        return d[a.Length, b.Length];
    }

    [GeneratedRegex(@"^Cannot parse argument '(?<value>.*)' for (?<kind>option|command) '(?<name>.*?)' as expected type '(?<type>[^']*)'\.", RegexOptions.Singleline)]
    private static partial Regex CannotParse();

    [GeneratedRegex(@"^Cannot parse argument '(?<value>.*)' as expected type '(?<type>[^']*)'\.", RegexOptions.Singleline)]
    private static partial Regex CannotParseBare();

    [GeneratedRegex(@"^Required argument missing for command: '")]
    private static partial Regex MissingArgument();

    [GeneratedRegex(@"'?\bSystem\.[A-Za-z0-9_.`\[\]]+'?")]
    private static partial Regex TypeName();

    /// <summary>System.CommandLine's texts without .NET type names.</summary>
    public static string Rewrite(string message)
    {
        if (CannotParse().Match(message) is { Success: true } m)
        {
            string who = m.Groups["kind"].Value == "option" ? m.Groups["name"].Value : $"argument of '{m.Groups["name"].Value}'";
            return $"{who} {UserText.Quote(m.Groups["value"].Value)} is not {Kind(m.Groups["type"].Value)}";
        }
        if (CannotParseBare().Match(message) is { Success: true } b)
            return $"{UserText.Quote(b.Groups["value"].Value)} is not {Kind(b.Groups["type"].Value)}";
        return TypeName().Replace(message, "a value of the right kind");
    }

    private static string Kind(string type)
    {
        string t = type.Replace("System.Nullable`1[", "", StringComparison.Ordinal).TrimEnd(']');
        return t switch
        {
            "System.Int32" or "System.Int64" => "a whole number",
            "System.UInt32" or "System.UInt64" => "a whole number (0 or more)",
            "System.Boolean" => "true or false",
            _ => "a valid value",
        };
    }
}
