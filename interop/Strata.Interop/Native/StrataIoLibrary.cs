using System.Reflection;
using System.Runtime.InteropServices;

namespace Strata.Interop.Native;

/// <summary>
/// The one place that names and locates libstrata_io. Resolution order:
/// STRATA_NATIVE_LIB (a full path), the application's directory, then the
/// repository's build/native folder (for tests run from a checkout).
/// </summary>
public static class StrataIoLibrary
{
    /// <summary>The library name used by every generated import.</summary>
    public const string Name = "strata_io";

    private const string FileName = "libstrata_io.so";
    private static int _registered;

    /// <summary>The path the library was loaded from, once it has been.</summary>
    public static string? LoadedFrom { get; private set; }

    /// <summary>Installs the resolver for this assembly; idempotent.</summary>
    public static void EnsureResolver()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(StrataIoLibrary).Assembly, Resolve);
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Name)
            return IntPtr.Zero;
        foreach (var candidate in Candidates())
        {
            if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out var handle))
            {
                LoadedFrom = candidate;
                return handle;
            }
        }
        // Fall back to the loader's own search (LD_LIBRARY_PATH, system dirs).
        if (NativeLibrary.TryLoad(FileName, assembly, searchPath, out var h))
        {
            LoadedFrom = FileName;
            return h;
        }
        throw new DllNotFoundException(
            $"libstrata_io not found: looked in {string.Join(", ", Candidates())} and the system search path; " +
            "build it with 'cmake -S . -B build/native && cmake --build build/native' or set STRATA_NATIVE_LIB");
    }

    internal static IEnumerable<string> Candidates()
    {
        var env = Environment.GetEnvironmentVariable("STRATA_NATIVE_LIB");
        if (!string.IsNullOrEmpty(env))
            yield return env;
        yield return Path.Combine(AppContext.BaseDirectory, FileName);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var p = Path.Combine(dir.FullName, "build", "native", FileName);
            if (File.Exists(p))
            {
                yield return p;
                yield break;
            }
        }
    }
}
