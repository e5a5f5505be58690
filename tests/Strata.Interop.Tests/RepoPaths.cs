namespace Strata.Interop.Tests;

/// <summary>Locates the checkout the tests were built from.</summary>
internal static class RepoPaths
{
    /// <summary>The repository root: the first folder above the test binaries with Engine.sln or native/include/strata_io.h.</summary>
    public static string Root { get; } = FindRoot();

    public static string Header => Path.Combine(Root, "native", "include", "strata_io.h");

    public static string GeneratedFile => Path.Combine(Root, "interop", "Strata.Interop", "Generated", "StrataIo.g.cs");

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Engine.sln"))
                || File.Exists(Path.Combine(dir.FullName, "native", "include", "strata_io.h")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"no repository root (Engine.sln or native/include/strata_io.h) above {AppContext.BaseDirectory}");
    }

    /// <summary>A fresh temporary directory, deleted by Dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("strata-interop-tests-").FullName;

        public string Write(string name, string text)
        {
            var p = System.IO.Path.Combine(Path, name);
            File.WriteAllText(p, text);
            return p;
        }

        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Full path of an executable on PATH, or null.</summary>
    public static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => System.IO.Path.Combine(d, name))
            .FirstOrDefault(File.Exists);
}
