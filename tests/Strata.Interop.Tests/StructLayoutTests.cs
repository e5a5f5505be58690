using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Strata.Interop.Native;

namespace Strata.Interop.Tests;

/// <summary>
/// Compiles a tiny C program against strata_io.h and compares sizeof/offsetof of
/// every generated struct and field with the managed layout (Tmds.LibC's StructTests).
/// </summary>
[TestClass]
public sealed class StructLayoutTests
{
    private static readonly string[] MustHave = ["sio_cmd", "sio_completion", "sio_geometry", "sio_fault_stats", "sio_iovec"];

    /// <summary>Generated structs: public sequential value types of Strata.Interop.Native declared in Generated/.</summary>
    private static List<Type> GeneratedStructs()
    {
        var generated = string.Concat(Directory.GetFiles(Path.GetDirectoryName(RepoPaths.GeneratedFile)!, "*.g.cs").Select(File.ReadAllText));
        return typeof(StrataIoLibrary).Assembly.GetTypes()
            .Where(t => t.Namespace == "Strata.Interop.Native" && t.IsValueType && !t.IsEnum && !t.IsNested
                        && t.IsLayoutSequential && t.IsPublic
                        && generated.Contains($"public unsafe struct {t.Name}\n", StringComparison.Ordinal))
            .OrderBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
    }

    [TestMethod]
    public void GeneratedStructs_Discovery_FindsEveryAbiStruct()
    {
        var names = GeneratedStructs().Select(t => t.Name).ToList();

        foreach (var name in MustHave)
            CollectionAssert.Contains(names, name, $"found: {string.Join(", ", names)}");
    }

    [TestMethod]
    public void GeneratedStructs_ComparedWithCCompiler_HaveSameSizesAndOffsets()
    {
        var cc = RepoPaths.FindOnPath("cc");
        if (cc is null)
            Assert.Inconclusive("no C compiler (cc) on PATH; cannot compare struct layouts with C");

        var structs = GeneratedStructs();
        Assert.IsTrue(MustHave.All(n => structs.Any(t => t.Name == n)), "the generated ABI structs were not found");

        using var tmp = new RepoPaths.TempDir();
        var program = tmp.Write("layout.c", CProgram(structs));
        var exe = Path.Combine(tmp.Path, "layout");
        var (ccExit, ccOut) = Run(cc!, ["-std=c11", "-Wall", "-Werror", $"-I{Path.Combine(RepoPaths.Root, "native", "include")}", "-o", exe, program]);
        Assert.AreEqual(0, ccExit, $"cc failed on:\n{File.ReadAllText(program)}\n{ccOut}");
        var (runExit, output) = Run(exe, []);
        Assert.AreEqual(0, runExit, output);

        var c = output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' '))
            .ToDictionary(p => p[0], p => p[1..].Select(long.Parse).ToArray());
        var mismatches = new List<string>();
        int checkedFields = 0;
        foreach (var t in structs)
        {
            long managed = Marshal.SizeOf(t);
            long unsafeSize = (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(t).Invoke(null, null)!;
            if (c[t.Name][0] != managed || c[t.Name][0] != unsafeSize)
                mismatches.Add($"sizeof({t.Name}): C {c[t.Name][0]}, Marshal.SizeOf {managed}, Unsafe.SizeOf {unsafeSize}");
            foreach (var f in Fields(t))
            {
                var (offset, size) = (c[$"{t.Name}.{f.Name}"][0], c[$"{t.Name}.{f.Name}"][1]);
                long managedOffset = Marshal.OffsetOf(t, f.Name);
                long managedSize = f.FieldType.IsPointer ? IntPtr.Size : Marshal.SizeOf(f.FieldType);
                if (offset != managedOffset || size != managedSize)
                    mismatches.Add($"{t.Name}.{f.Name}: C offset {offset} size {size}, C# offset {managedOffset} size {managedSize}");
                checkedFields++;
            }
        }

        Assert.IsEmpty(mismatches, string.Join("\n", mismatches));
        Assert.IsGreaterThanOrEqualTo(structs.Count, checkedFields, "no fields were compared");
    }

    private static IEnumerable<FieldInfo> Fields(Type t) =>
        t.GetFields(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance);

    private static string CProgram(List<Type> structs)
    {
        var sb = new StringBuilder("#include <stddef.h>\n#include <stdio.h>\n#include \"strata_io.h\"\n\nint main(void)\n{\n");
        foreach (var t in structs)
        {
            sb.Append($"    printf(\"{t.Name} %zu\\n\", sizeof({t.Name}));\n");
            foreach (var f in Fields(t))
                sb.Append($"    printf(\"{t.Name}.{f.Name} %zu %zu\\n\", offsetof({t.Name}, {f.Name}), sizeof((({t.Name} *)0)->{f.Name}));\n");
        }
        return sb.Append("    return 0;\n}\n").ToString();
    }

    private static (int Exit, string Output) Run(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + stderr.Result);
    }
}
