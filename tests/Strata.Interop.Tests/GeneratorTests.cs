using System.Diagnostics;
using Strata.Interop.Generator;

namespace Strata.Interop.Tests;

/// <summary>The libclang-based binding generator, on small headers and on the real ABI.</summary>
[TestClass]
public sealed class GeneratorTests
{
    private const string Prelude = "#include <stdint.h>\n#include <stddef.h>\n\n";

    private static string Generate(string headerText, string name = "demo_io.h")
    {
        using var tmp = new RepoPaths.TempDir();
        return BindingGenerator.Generate(tmp.Write(name, Prelude + headerText), tmp.Path);
    }

    private static GeneratorException Rejects(string headerText) =>
        Assert.ThrowsExactly<GeneratorException>(() => Generate(headerText));

    [TestMethod]
    public void Generate_Enums_EmitConstIntsInDeclarationOrder()
    {
        var cs = Generate("""
            /** Demo kinds. */
            enum demo_kind {
                /** The first. */
                DEMO_A = 0,
                DEMO_B = 0x10,
                DEMO_C = DEMO_B << 2,
                DEMO_NEG = -5,
            };
            enum { DEMO_LIMIT = 4096 };
            """);

        StringAssert.Contains(cs, "public static unsafe partial class DemoIo\n{\n    // enum demo_kind: Demo kinds.\n");
        StringAssert.Contains(cs, "    /// <summary>The first.</summary>\n    public const int DEMO_A = 0;\n");
        StringAssert.Contains(cs, "\n    public const int DEMO_B = 16;\n");
        StringAssert.Contains(cs, "\n    public const int DEMO_C = 64;\n");
        StringAssert.Contains(cs, "\n    public const int DEMO_NEG = -5;\n");
        StringAssert.Contains(cs, "    // anonymous enum\n\n    public const int DEMO_LIMIT = 4096;\n");
        Assert.IsLessThan(cs.IndexOf("DEMO_LIMIT", StringComparison.Ordinal), cs.IndexOf("DEMO_NEG", StringComparison.Ordinal));
    }

    [TestMethod]
    public void Generate_Struct_EmitsSequentialStructWithCNamesAndFixedBuffer()
    {
        var cs = Generate("""
            /** A point. */
            typedef struct demo_point { int32_t x; int32_t y; } demo_point;
            /** A record. */
            typedef struct demo_rec {
                /** Tag. */
                uint64_t tag;
                uint8_t a; int8_t b; uint16_t c; int16_t d; uint32_t e; int32_t f; int64_t g;
                size_t len;
                char *label;
                void *buf;
                demo_point at;
                demo_point *next;
                /** Name, NUL padded. */
                char name[16];
                uint32_t lanes[4];
                double ratio;
            } demo_rec;
            """);

        StringAssert.Contains(cs, """
            /// <summary>A record.</summary>
            [StructLayout(LayoutKind.Sequential)]
            public unsafe struct demo_rec
            {
                /// <summary>Tag.</summary>
                public ulong tag;

                public byte a;

                public sbyte b;

                public ushort c;

                public short d;

                public uint e;

                public int f;

                public long g;

                public nuint len;

                public byte* label;

                public void* buf;

                public demo_point at;

                public demo_point* next;

                /// <summary>Name, NUL padded.</summary>
                public fixed byte name[16];

                public fixed uint lanes[4];

                public double ratio;
            }
            """.ReplaceLineEndings("\n"));
        Assert.IsLessThan(cs.IndexOf("struct demo_rec", StringComparison.Ordinal), cs.IndexOf("struct demo_point", StringComparison.Ordinal));
    }

    [TestMethod]
    public void Generate_OpaqueHandles_MapToNintAndNintPointerAndAreNotEmitted()
    {
        var cs = Generate("""
            typedef struct demo_dev demo_dev;
            struct demo_untyped;
            int32_t demo_open(const char *uri, demo_dev **out_dev);
            int32_t demo_close(demo_dev *dev);
            int32_t demo_raw(struct demo_untyped *u, struct demo_untyped **out_u);
            """);

        StringAssert.Contains(cs, "public static partial int demo_open(byte* uri, nint* out_dev);");
        StringAssert.Contains(cs, "public static partial int demo_close(nint dev);");
        StringAssert.Contains(cs, "public static partial int demo_raw(nint u, nint* out_u);");
        Assert.DoesNotContain("struct demo_dev", cs);
        Assert.DoesNotContain("struct demo_untyped", cs);
    }

    [TestMethod]
    public void Generate_Functions_MapEveryParameterKind()
    {
        var cs = Generate("""
            typedef struct demo_dev demo_dev;
            typedef struct demo_cmd { uint64_t tag; } demo_cmd;
            /** Returns the version. */
            int32_t demo_version(void);
            void demo_all(uint8_t u8, int8_t i8, uint16_t u16, int16_t i16, uint32_t u32, int32_t i32,
                          uint64_t u64, int64_t i64, size_t n, const char *text, char *buf, void *data,
                          void **out_data, demo_dev *dev, demo_dev **out_dev, const demo_cmd *cmds,
                          demo_cmd *out, uint32_t *out_count, float f, double d, _Bool flag);
            int32_t demo_unnamed(uint32_t, void *);
            """);

        StringAssert.Contains(cs, """
                /// <summary>Returns the version.</summary>
                [LibraryImport(DemoIoLibrary.Name, EntryPoint = "demo_version")]
                public static partial int demo_version();
            """.ReplaceLineEndings("\n"));
        StringAssert.Contains(cs, "[LibraryImport(DemoIoLibrary.Name, EntryPoint = \"demo_all\")]\n    public static partial void demo_all("
            + "byte u8, sbyte i8, ushort u16, short i16, uint u32, int i32, ulong u64, long i64, nuint n, byte* text, byte* buf, "
            + "void* data, void** out_data, nint dev, nint* out_dev, demo_cmd* cmds, demo_cmd* @out, uint* out_count, "
            + "float f, double d, byte flag);");
        StringAssert.Contains(cs, "public static partial int demo_unnamed(uint arg0, void* arg1);");
    }

    [TestMethod]
    public void Generate_DocComments_AreOneLineAndXmlEscaped()
    {
        var cs = Generate("""
            /**
             * Copies   a <value> &amp
             * into "buf";    empty when none.
             */
            int32_t demo_detail(char *buf, uint32_t len);
            // Not a doc comment.
            int32_t demo_plain(void);
            """);

        StringAssert.Contains(cs, "    /// <summary>Copies a &lt;value&gt; &amp;amp into \"buf\"; empty when none.</summary>\n    [LibraryImport");
        StringAssert.Contains(cs, "demo_detail(byte* buf, uint len);\n\n    [LibraryImport(DemoIoLibrary.Name, EntryPoint = \"demo_plain\")]");
    }

    [TestMethod]
    public void Generate_Banner_NamesRepoRelativeHeaderAndNamespace()
    {
        using var tmp = new RepoPaths.TempDir();
        Directory.CreateDirectory(Path.Combine(tmp.Path, "native", "include"));
        var header = tmp.Write("native/include/demo_io.h", "enum { DEMO_X = 1 };\n");

        var cs = BindingGenerator.Generate(header, tmp.Path);

        Assert.StartsWith("// <auto-generated>\n//     Generated by Strata.Interop.Generator from native/include/demo_io.h. Do not edit by hand; run the generator.\n", cs);
        StringAssert.Contains(cs, "\nnamespace Strata.Interop.Native;\n");
        Assert.DoesNotContain(tmp.Path, cs);
    }

    [TestMethod]
    [DataRow("typedef union demo_u { uint32_t a; float b; } demo_u;", "union demo_u")]
    [DataRow("typedef struct demo_s { uint32_t a : 3; uint32_t b : 29; } demo_s;", "struct demo_s field a: bit-fields")]
    [DataRow("typedef struct demo_s { union { uint32_t a; float b; } v; } demo_s;", "struct demo_s: nested union")]
    [DataRow("int32_t demo_cb(void (*callback)(void *), void *arg);", "function demo_cb parameter callback: function pointers")]
    [DataRow("typedef void (*demo_fn)(int32_t);", "typedef demo_fn: function pointers")]
    [DataRow("typedef struct demo_s { uint64_t a; } demo_s; int32_t demo_take(demo_s s);", "function demo_take parameter s: struct demo_s by value")]
    [DataRow("int32_t demo_size(long n);", "function demo_size parameter n: 'long' changes size")]
    [DataRow("typedef struct __attribute__((packed)) demo_p { uint8_t a; uint32_t b; } demo_p;", "struct demo_p field b: at offset 1 in C but 4")]
    [DataRow("int32_t demo_printf(const char *fmt, ...);", "function demo_printf: variadic")]
    public void Generate_UnsupportedConstruct_FailsNamingTheDeclaration(string header, string expected)
    {
        var e = Rejects(header);

        StringAssert.Contains(e.Message, expected);
        StringAssert.StartsWith(e.Message, "demo_io.h:");
    }

    [TestMethod]
    public void Generate_SyntaxError_FailsWithClangDiagnostic()
    {
        var e = Rejects("int32_t demo_broken(uint32_t x;\n");

        StringAssert.Contains(e.Message, "does not parse");
        StringAssert.Contains(e.Message, "error:");
    }

    [TestMethod]
    public void Generate_StrataIoHeader_EqualsCommittedFileByteForByte()
    {
        var generated = BindingGenerator.Generate(RepoPaths.Header, RepoPaths.Root);
        var committed = File.ReadAllText(RepoPaths.GeneratedFile);

        Assert.IsNull(BindingGenerator.Diff(committed, generated),
            "Generated/StrataIo.g.cs is stale: run dotnet run --project interop/Strata.Interop.Generator -- " +
            "--header native/include/strata_io.h --out interop/Strata.Interop/Generated/StrataIo.g.cs");
        CollectionAssert.AreEqual(File.ReadAllBytes(RepoPaths.GeneratedFile), System.Text.Encoding.UTF8.GetBytes(generated));
    }

    [TestMethod]
    public void Diff_OneChangedLine_ShowsItAsRemovedAndAdded()
    {
        var diff = BindingGenerator.Diff("a\nb\nc\nd\n", "a\nb\nX\nd\n");

        Assert.AreEqual("@@ -3 +3 @@ first difference at line 3\n a\n b\n-c\n+X\n d\n \n", diff);
    }

    [TestMethod]
    public void Cli_CheckOnStaleFile_ExitsOneWithDiffAndLeavesFileAlone()
    {
        using var tmp = new RepoPaths.TempDir();
        var header = tmp.Write("demo_io.h", "enum { DEMO_X = 1 };\n");
        var output = Path.Combine(tmp.Path, "Demo.g.cs");

        var (genExit, _, genErr) = RunGenerator(tmp.Path, "--header", header, "--out", output);
        Assert.AreEqual(0, genExit, genErr);
        var (okExit, _, okErr) = RunGenerator(tmp.Path, "--header", header, "--out", output, "--check");
        Assert.AreEqual(0, okExit, okErr);

        File.WriteAllText(header, "enum { DEMO_X = 2 };\n");
        var before = File.ReadAllText(output);
        var (staleExit, _, staleErr) = RunGenerator(tmp.Path, "--header", header, "--out", output, "--check");

        Assert.AreEqual(1, staleExit, staleErr);
        StringAssert.Contains(staleErr, "Demo.g.cs is out of date with demo_io.h");
        StringAssert.Contains(staleErr, "-    public const int DEMO_X = 1;\n+    public const int DEMO_X = 2;\n");
        Assert.AreEqual(before, File.ReadAllText(output));
    }

    [TestMethod]
    public void Cli_UnsupportedConstruct_ExitsTwoNamingIt()
    {
        using var tmp = new RepoPaths.TempDir();
        var header = tmp.Write("demo_io.h", "union demo_u { int a; float b; };\n");

        var (exit, _, err) = RunGenerator(tmp.Path, "--header", header, "--out", Path.Combine(tmp.Path, "x.g.cs"));

        Assert.AreEqual(2, exit, err);
        StringAssert.Contains(err, "union demo_u");
        Assert.IsFalse(File.Exists(Path.Combine(tmp.Path, "x.g.cs")));
    }

    private static (int Exit, string Stdout, string Stderr) RunGenerator(string repoRoot, params string[] args)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Strata.Interop.Generator.dll"));
        foreach (var a in args.Append("--repo-root").Append(repoRoot))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout, stderr.Result);
    }
}
