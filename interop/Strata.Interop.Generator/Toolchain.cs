using System.Text.RegularExpressions;

namespace Strata.Interop.Generator;

/// <summary>A failure the generator reports as one message and exit code 2.</summary>
internal sealed class GeneratorException(string message) : Exception(message);

/// <summary>File-system helpers: globbing the LLVM install and finding the repository root.</summary>
internal static partial class Paths
{
    /// <summary>Directories matching root/segment0/segment1/... where segments may hold * wildcards.</summary>
    public static IEnumerable<string> Glob(string root, params string[] segments)
    {
        IEnumerable<string> current = [root];
        foreach (var segment in segments)
        {
            current = current
                .Where(Directory.Exists)
                .SelectMany(d => segment.Contains('*')
                    ? Directory.EnumerateDirectories(d, segment)
                    : [Path.Combine(d, segment)])
                .ToList();
        }
        return current.Where(Directory.Exists).OrderByDescending(p => p, VersionAwareComparer);
    }

    /// <summary>clang's builtin headers (stddef.h, stdint.h wrappers): STRATA_CLANG_INCLUDE, else the newest installed.</summary>
    public static string? FindBuiltinInclude(string? libclangPath)
    {
        var env = Environment.GetEnvironmentVariable("STRATA_CLANG_INCLUDE");
        if (!string.IsNullOrEmpty(env))
            return Directory.Exists(env) ? env : throw new GeneratorException($"STRATA_CLANG_INCLUDE={env} is not a directory");
        var all = Glob("/usr/lib", "llvm-*", "lib", "clang", "*", "include")
            .Concat(Glob("/usr/lib", "clang", "*", "include"))
            .Where(d => File.Exists(Path.Combine(d, "stddef.h")))
            .ToList();
        // Prefer the headers of the libclang we loaded: they must match its version.
        var major = libclangPath is null ? null : MajorVersion().Match(Path.GetFileName(libclangPath)) is { Success: true } m ? m.Groups[1].Value : null;
        return all.FirstOrDefault(d => major != null && d.Contains($"/llvm-{major}/", StringComparison.Ordinal)) ?? all.FirstOrDefault();
    }

    /// <summary>The repository root above a path: the first folder with .git, Engine.sln or Directory.Build.props.</summary>
    public static string? FindRepoRoot(string start)
    {
        for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
        {
            if (Directory.Exists(Path.Combine(dir.FullName, ".git")) || File.Exists(Path.Combine(dir.FullName, ".git"))
                || File.Exists(Path.Combine(dir.FullName, "Engine.sln")) || File.Exists(Path.Combine(dir.FullName, "Directory.Build.props")))
                return dir.FullName;
        }
        return null;
    }

    /// <summary>Path relative to root with forward slashes, for deterministic output.</summary>
    public static string Relative(string root, string path) =>
        Path.GetRelativePath(root, path).Replace('\\', '/');

    /// <summary>Orders "llvm-9" before "llvm-14": digit runs compare as numbers.</summary>
    public static readonly IComparer<string> VersionAwareComparer = Comparer<string>.Create((a, b) =>
    {
        var pa = Digits().Split(a);
        var pb = Digits().Split(b);
        for (int i = 0; i < Math.Min(pa.Length, pb.Length); i++)
        {
            int c = long.TryParse(pa[i], out var na) && long.TryParse(pb[i], out var nb)
                ? na.CompareTo(nb)
                : string.CompareOrdinal(pa[i], pb[i]);
            if (c != 0)
                return c;
        }
        return pa.Length.CompareTo(pb.Length);
    });

    [GeneratedRegex(@"(\d+)")]
    private static partial Regex Digits();

    [GeneratedRegex(@"libclang-(\d+)")]
    private static partial Regex MajorVersion();
}
