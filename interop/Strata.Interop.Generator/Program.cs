using System.Text;
using Strata.Interop.Generator;

// strata-interop-gen: regenerate (or, with --check, verify) the C# mirror of a C header.
// Exit codes: 0 done or up to date, 1 --check found drift, 2 error (bad header, unmapped type, no libclang).
const string Usage = "usage: Strata.Interop.Generator --header native/include/strata_io.h " +
                     "--out interop/Strata.Interop/Generated/StrataIo.g.cs [--check] [--repo-root DIR]";

string? header = null, output = null, repoRoot = null;
bool check = false;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--header" when i + 1 < args.Length: header = args[++i]; break;
        case "--out" when i + 1 < args.Length: output = args[++i]; break;
        case "--repo-root" when i + 1 < args.Length: repoRoot = args[++i]; break;
        case "--check": check = true; break;
        case "-h" or "--help": Console.WriteLine(Usage); return 0;
        default:
            Console.Error.WriteLine($"unknown or incomplete argument '{args[i]}'\n{Usage}");
            return 2;
    }
}
if (header is null || output is null)
{
    Console.Error.WriteLine(Usage);
    return 2;
}

try
{
    var root = repoRoot ?? Paths.FindRepoRoot(Path.GetDirectoryName(Path.GetFullPath(header))!) ?? Directory.GetCurrentDirectory();
    var generated = BindingGenerator.Generate(header, root);
    var existing = File.Exists(output) ? File.ReadAllText(output) : null;
    var shownOut = Paths.Relative(root, Path.GetFullPath(output));
    var shownHeader = Paths.Relative(root, Path.GetFullPath(header));

    if (check)
    {
        if (existing is null)
        {
            Console.Error.WriteLine($"{shownOut} does not exist; run the generator on {shownHeader}");
            return 1;
        }
        var diff = BindingGenerator.Diff(existing, generated);
        if (diff is null)
            return 0;
        Console.Error.WriteLine($"{shownOut} is out of date with {shownHeader}; regenerate: " +
                                $"dotnet run --project interop/Strata.Interop.Generator -- --header {shownHeader} --out {shownOut}");
        Console.Error.Write(diff);
        return 1;
    }

    if (existing == generated)
    {
        Console.WriteLine($"{shownOut} is up to date");
        return 0;
    }
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
    File.WriteAllText(output, generated, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
    Console.WriteLine($"wrote {shownOut}");
    return 0;
}
catch (GeneratorException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
