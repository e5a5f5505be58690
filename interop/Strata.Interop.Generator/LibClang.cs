using System.Reflection;
using System.Runtime.InteropServices;

namespace Strata.Interop.Generator;

// Hand-written bindings for the slice of libclang's stable C API (clang-c/Index.h)
// that the generator needs. Layouts and enum values are those of Index.h, which
// has kept them ABI-stable since LLVM 3.x.

/// <summary>CXString: a libclang-owned string, released with clang_disposeString.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CXString
{
    public nint Data;
    public uint PrivateFlags;
}

/// <summary>CXCursor: a node of the translation unit's AST, valid while the unit lives.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CXCursor
{
    public CXCursorKind Kind;
    public int XData;
    public nint Data0, Data1, Data2;
}

/// <summary>CXType: a type as libclang exposes it.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CXType
{
    public CXTypeKind Kind;
    public nint Data0, Data1;
}

/// <summary>CXSourceLocation: a position in a source file.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CXSourceLocation
{
    public nint Ptr0, Ptr1;
    public uint IntData;
}

/// <summary>The subset of enum CXCursorKind the generator inspects.</summary>
internal enum CXCursorKind
{
    StructDecl = 2,
    UnionDecl = 3,
    EnumDecl = 5,
    FieldDecl = 6,
    EnumConstantDecl = 7,
    FunctionDecl = 8,
    VarDecl = 9,
    ParmDecl = 10,
    TypedefDecl = 20,
}

/// <summary>The subset of enum CXTypeKind the generator maps.</summary>
internal enum CXTypeKind
{
    Invalid = 0,
    Void = 2,
    Bool = 3,
    Char_U = 4,
    UChar = 5,
    UShort = 8,
    UInt = 9,
    ULong = 10,
    ULongLong = 11,
    Char_S = 13,
    SChar = 14,
    Short = 16,
    Int = 17,
    Long = 18,
    LongLong = 19,
    Float = 21,
    Double = 22,
    Pointer = 101,
    Record = 105,
    Enum = 106,
    Typedef = 107,
    FunctionNoProto = 110,
    FunctionProto = 111,
    ConstantArray = 112,
    IncompleteArray = 114,
    Elaborated = 119,
    Attributed = 163,
}

/// <summary>enum CXDiagnosticSeverity.</summary>
internal enum CXDiagnosticSeverity
{
    Ignored = 0,
    Note = 1,
    Warning = 2,
    Error = 3,
    Fatal = 4,
}

/// <summary>P/Invoke declarations of libclang, plus the resolver that finds Debian's copy.</summary>
internal static unsafe partial class LibClang
{
    private const string Lib = "libclang";

    /// <summary>CXTranslationUnit_SkipFunctionBodies: a header has none worth parsing.</summary>
    public const uint SkipFunctionBodies = 0x40;

    /// <summary>CXChildVisit_Continue: visit the next sibling, not the children.</summary>
    public const int ChildVisitContinue = 1;

    /// <summary>clang_createIndex: creates the index that owns translation units.</summary>
    [LibraryImport(Lib)] public static partial nint clang_createIndex(int excludeDeclarationsFromPch, int displayDiagnostics);

    /// <summary>clang_disposeIndex: releases an index.</summary>
    [LibraryImport(Lib)] public static partial void clang_disposeIndex(nint index);

    /// <summary>clang_parseTranslationUnit2: parses a source file with compiler arguments; returns a CXErrorCode.</summary>
    [LibraryImport(Lib)]
    public static partial int clang_parseTranslationUnit2(nint index, byte* sourceFilename, byte** commandLineArgs,
        int numCommandLineArgs, void* unsavedFiles, uint numUnsavedFiles, uint options, nint* outTu);

    /// <summary>clang_disposeTranslationUnit: releases a translation unit and every cursor into it.</summary>
    [LibraryImport(Lib)] public static partial void clang_disposeTranslationUnit(nint tu);

    /// <summary>clang_getNumDiagnostics: the number of diagnostics the parse produced.</summary>
    [LibraryImport(Lib)] public static partial uint clang_getNumDiagnostics(nint tu);

    /// <summary>clang_getDiagnostic: one diagnostic, released with clang_disposeDiagnostic.</summary>
    [LibraryImport(Lib)] public static partial nint clang_getDiagnostic(nint tu, uint index);

    /// <summary>clang_getDiagnosticSeverity: note, warning, error or fatal.</summary>
    [LibraryImport(Lib)] public static partial CXDiagnosticSeverity clang_getDiagnosticSeverity(nint diagnostic);

    /// <summary>clang_formatDiagnostic: "file:line:col: error: text", as the compiler prints it.</summary>
    [LibraryImport(Lib)] public static partial CXString clang_formatDiagnostic(nint diagnostic, uint options);

    /// <summary>clang_defaultDiagnosticDisplayOptions: the compiler's default formatting flags.</summary>
    [LibraryImport(Lib)] public static partial uint clang_defaultDiagnosticDisplayOptions();

    /// <summary>clang_disposeDiagnostic: releases a diagnostic.</summary>
    [LibraryImport(Lib)] public static partial void clang_disposeDiagnostic(nint diagnostic);

    /// <summary>clang_getTranslationUnitCursor: the root cursor of a translation unit.</summary>
    [LibraryImport(Lib)] public static partial CXCursor clang_getTranslationUnitCursor(nint tu);

    /// <summary>clang_visitChildren: calls the visitor for each child of parent.</summary>
    [LibraryImport(Lib)]
    public static partial uint clang_visitChildren(CXCursor parent,
        delegate* unmanaged<CXCursor, CXCursor, void*, int> visitor, void* clientData);

    /// <summary>clang_getCursorKind: what declaration or expression a cursor is.</summary>
    [LibraryImport(Lib)] public static partial CXCursorKind clang_getCursorKind(CXCursor cursor);

    /// <summary>clang_getCursorSpelling: a declaration's name.</summary>
    [LibraryImport(Lib)] public static partial CXString clang_getCursorSpelling(CXCursor cursor);

    /// <summary>clang_getCursorUSR: a unique, stable name of a declaration (also for anonymous ones).</summary>
    [LibraryImport(Lib)] public static partial CXString clang_getCursorUSR(CXCursor cursor);

    /// <summary>clang_getCursorLocation: where a declaration is spelled.</summary>
    [LibraryImport(Lib)] public static partial CXSourceLocation clang_getCursorLocation(CXCursor cursor);

    /// <summary>clang_Location_isFromMainFile: non-zero when the location is in the parsed header itself.</summary>
    [LibraryImport(Lib)] public static partial int clang_Location_isFromMainFile(CXSourceLocation location);

    /// <summary>clang_getSpellingLocation: file, line, column and offset of a location.</summary>
    [LibraryImport(Lib)]
    public static partial void clang_getSpellingLocation(CXSourceLocation location, nint* file, uint* line, uint* column, uint* offset);

    /// <summary>clang_getCursorType: the type of a declaration.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getCursorType(CXCursor cursor);

    /// <summary>clang_getTypeSpelling: a type as C spells it, for messages.</summary>
    [LibraryImport(Lib)] public static partial CXString clang_getTypeSpelling(CXType type);

    /// <summary>clang_getCanonicalType: a type with every typedef and elaboration removed.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getCanonicalType(CXType type);

    /// <summary>clang_getPointeeType: what a pointer type points to.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getPointeeType(CXType type);

    /// <summary>clang_Type_getNamedType: the type an elaborated type ("struct x") names.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_Type_getNamedType(CXType type);

    /// <summary>clang_Type_getModifiedType: the type an attributed type (e.g. _Nonnull) modifies.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_Type_getModifiedType(CXType type);

    /// <summary>clang_getTypeDeclaration: the declaration of a record, enum or typedef type.</summary>
    [LibraryImport(Lib)] public static partial CXCursor clang_getTypeDeclaration(CXType type);

    /// <summary>clang_getTypedefDeclUnderlyingType: the type a typedef stands for.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getTypedefDeclUnderlyingType(CXCursor cursor);

    /// <summary>clang_getArrayElementType: the element type of an array type.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getArrayElementType(CXType type);

    /// <summary>clang_getArraySize: the element count of a constant array type.</summary>
    [LibraryImport(Lib)] public static partial long clang_getArraySize(CXType type);

    /// <summary>clang_Type_getSizeOf: sizeof(type) in bytes, or a negative CXTypeLayoutError.</summary>
    [LibraryImport(Lib)] public static partial long clang_Type_getSizeOf(CXType type);

    /// <summary>clang_Type_getAlignOf: _Alignof(type) in bytes, or a negative CXTypeLayoutError.</summary>
    [LibraryImport(Lib)] public static partial long clang_Type_getAlignOf(CXType type);

    /// <summary>clang_Cursor_getOffsetOfField: a field's offset in bits, or a negative CXTypeLayoutError.</summary>
    [LibraryImport(Lib)] public static partial long clang_Cursor_getOffsetOfField(CXCursor cursor);

    /// <summary>clang_Cursor_isBitField: non-zero for a bit-field member.</summary>
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isBitField(CXCursor cursor);

    /// <summary>clang_getEnumConstantDeclValue: an enumerator's value, sign-extended.</summary>
    [LibraryImport(Lib)] public static partial long clang_getEnumConstantDeclValue(CXCursor cursor);

    /// <summary>clang_getEnumDeclIntegerType: the integer type an enum is stored as.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getEnumDeclIntegerType(CXCursor cursor);

    /// <summary>clang_getResultType: the return type of a function type.</summary>
    [LibraryImport(Lib)] public static partial CXType clang_getResultType(CXType type);

    /// <summary>clang_isFunctionTypeVariadic: non-zero for a function taking "...".</summary>
    [LibraryImport(Lib)] public static partial uint clang_isFunctionTypeVariadic(CXType type);

    /// <summary>clang_Cursor_getNumArguments: a function declaration's parameter count.</summary>
    [LibraryImport(Lib)] public static partial int clang_Cursor_getNumArguments(CXCursor cursor);

    /// <summary>clang_Cursor_getArgument: one parameter declaration of a function.</summary>
    [LibraryImport(Lib)] public static partial CXCursor clang_Cursor_getArgument(CXCursor cursor, uint index);

    /// <summary>clang_Cursor_isFunctionInlined: non-zero for an inline function (nothing to import).</summary>
    [LibraryImport(Lib)] public static partial uint clang_Cursor_isFunctionInlined(CXCursor cursor);

    /// <summary>clang_getCursorDefinition: the defining declaration, or a null cursor for an incomplete type.</summary>
    [LibraryImport(Lib)] public static partial CXCursor clang_getCursorDefinition(CXCursor cursor);

    /// <summary>clang_isCursorDefinition: non-zero when the cursor is the definition (a struct with a body).</summary>
    [LibraryImport(Lib)] public static partial uint clang_isCursorDefinition(CXCursor cursor);

    /// <summary>clang_Cursor_isNull: non-zero for the null cursor.</summary>
    [LibraryImport(Lib)] public static partial int clang_Cursor_isNull(CXCursor cursor);

    /// <summary>clang_Cursor_getBriefCommentText: the first paragraph of a declaration's doc comment.</summary>
    [LibraryImport(Lib)] public static partial CXString clang_Cursor_getBriefCommentText(CXCursor cursor);

    /// <summary>clang_Cursor_getRawCommentText: a declaration's whole doc comment, markers included.</summary>
    [LibraryImport(Lib)] public static partial CXString clang_Cursor_getRawCommentText(CXCursor cursor);

    /// <summary>clang_getCString: the characters of a CXString (null when empty).</summary>
    [LibraryImport(Lib)] public static partial byte* clang_getCString(CXString str);

    /// <summary>clang_disposeString: releases a CXString.</summary>
    [LibraryImport(Lib)] public static partial void clang_disposeString(CXString str);

    /// <summary>Copies a CXString into a managed string and disposes it.</summary>
    public static string Take(CXString s)
    {
        try
        {
            var p = clang_getCString(s);
            return p == null ? "" : Marshal.PtrToStringUTF8((nint)p) ?? "";
        }
        finally
        {
            clang_disposeString(s);
        }
    }

    /// <summary>The direct children of a cursor, in source order.</summary>
    public static List<CXCursor> Children(CXCursor parent)
    {
        var list = new List<CXCursor>();
        var handle = GCHandle.Alloc(list);
        try
        {
            clang_visitChildren(parent, &CollectChild, (void*)GCHandle.ToIntPtr(handle));
        }
        finally
        {
            handle.Free();
        }
        return list;
    }

    [UnmanagedCallersOnly]
    private static int CollectChild(CXCursor cursor, CXCursor parent, void* clientData)
    {
        // Nothing may throw across the native frame; adding to a list does not.
        ((List<CXCursor>)GCHandle.FromIntPtr((nint)clientData).Target!).Add(cursor);
        return ChildVisitContinue;
    }

    private static int _resolverInstalled;

    /// <summary>Points "libclang" at Debian's libclang (or STRATA_LIBCLANG); idempotent.</summary>
    public static void EnsureResolver()
    {
        if (Interlocked.Exchange(ref _resolverInstalled, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(LibClang).Assembly, Resolve);
    }

    /// <summary>The path libclang was loaded from, once it has been.</summary>
    public static string? LoadedFrom { get; private set; }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != Lib)
            return 0;
        var env = Environment.GetEnvironmentVariable("STRATA_LIBCLANG");
        if (!string.IsNullOrEmpty(env))
        {
            if (NativeLibrary.TryLoad(env, out var h))
            {
                LoadedFrom = env;
                return h;
            }
            throw new GeneratorException($"STRATA_LIBCLANG={env} could not be loaded");
        }
        var tried = new List<string>();
        foreach (var candidate in Candidates())
        {
            tried.Add(candidate);
            if (NativeLibrary.TryLoad(candidate, out var h))
            {
                LoadedFrom = candidate;
                return h;
            }
        }
        throw new GeneratorException(
            $"libclang not found (tried {string.Join(", ", tried)}); install Debian's libclang1-14 " +
            "(apt-get install libclang1-14 libclang-common-14-dev) or set STRATA_LIBCLANG to its path");
    }

    // Sonames first (the loader's own search), then whatever versioned copies exist, newest first.
    private static IEnumerable<string> Candidates()
    {
        yield return "libclang-14.so.1";
        yield return "libclang.so.1";
        var found = Paths.Glob("/usr/lib", "llvm-*", "lib")
            .SelectMany(d => Directory.EnumerateFiles(d, "libclang*.so*"))
            .Concat(Paths.Glob("/usr/lib", "*-linux-gnu").SelectMany(d => Directory.EnumerateFiles(d, "libclang-*.so.*")))
            .Where(p => !Path.GetFileName(p).StartsWith("libclang-cpp", StringComparison.Ordinal))
            .OrderByDescending(p => p, Paths.VersionAwareComparer);
        foreach (var p in found)
            yield return p;
    }
}
