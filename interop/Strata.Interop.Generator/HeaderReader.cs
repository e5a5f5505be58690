using System.Runtime.InteropServices;
using System.Text;
using static Strata.Interop.Generator.LibClang;

namespace Strata.Interop.Generator;

/// <summary>
/// Parses one header with libclang and maps its declarations to C# spellings.
/// Anything that cannot cross a flat, blittable ABI (unions, bit-fields, function
/// pointers, structs by value, platform-sized integers, layouts a sequential C#
/// struct would not reproduce) fails with a message naming the declaration.
/// </summary>
internal sealed unsafe class HeaderReader
{
    private enum Use { Field, FixedElement, Parameter, Return, Pointee }

    // Fixed-width typedefs are mapped by name, before their platform-dependent
    // canonical type (uint64_t and size_t are both "unsigned long" on LP64).
    private static readonly Dictionary<string, string> KnownTypedefs = new()
    {
        ["uint8_t"] = "byte", ["int8_t"] = "sbyte",
        ["uint16_t"] = "ushort", ["int16_t"] = "short",
        ["uint32_t"] = "uint", ["int32_t"] = "int",
        ["uint64_t"] = "ulong", ["int64_t"] = "long",
        ["size_t"] = "nuint", ["ssize_t"] = "nint",
        ["uintptr_t"] = "nuint", ["intptr_t"] = "nint", ["ptrdiff_t"] = "nint",
    };

    private static readonly Dictionary<string, int> PrimitiveSizes = new()
    {
        ["byte"] = 1, ["sbyte"] = 1, ["ushort"] = 2, ["short"] = 2, ["uint"] = 4, ["int"] = 4,
        ["ulong"] = 8, ["long"] = 8, ["float"] = 4, ["double"] = 8, ["nint"] = nint.Size, ["nuint"] = nint.Size,
    };

    // The element types C# allows in a fixed buffer (nint and pointers are not among them).
    private static readonly HashSet<string> FixedBufferElements =
        ["byte", "sbyte", "ushort", "short", "uint", "int", "ulong", "long", "float", "double"];

    private readonly string _relative;
    private readonly Dictionary<string, string> _recordNames = new(); // record USR -> C name (typedef wins)
    private readonly Dictionary<string, long> _structSizes = new();   // emitted struct -> sizeof

    private HeaderReader(string relative) => _relative = relative;

    /// <summary>Parses headerPath and returns its model; paths in it are relative to repoRoot.</summary>
    public static HeaderModel Read(string headerPath, string repoRoot)
    {
        var full = Path.GetFullPath(headerPath);
        if (!File.Exists(full))
            throw new GeneratorException($"header not found: {headerPath}");
        var reader = new HeaderReader(Paths.Relative(Path.GetFullPath(repoRoot), full));

        EnsureResolver();
        var index = clang_createIndex(0, 0);
        try
        {
            var tu = Parse(index, full);
            try
            {
                return reader.ReadUnit(tu);
            }
            finally
            {
                clang_disposeTranslationUnit(tu);
            }
        }
        finally
        {
            clang_disposeIndex(index);
        }
    }

    private static nint Parse(nint index, string full)
    {
        var args = new List<string> { "-x", "c", "-std=c11", "-I", Path.GetDirectoryName(full)! };
        var builtin = Paths.FindBuiltinInclude(LoadedFrom);
        if (builtin != null)
            args.AddRange(["-isystem", builtin]);

        var utf8 = args.Select(a => Marshal.StringToCoTaskMemUTF8(a)).ToArray();
        var file = Marshal.StringToCoTaskMemUTF8(full);
        try
        {
            nint tu;
            int rc;
            fixed (nint* argv = utf8)
                rc = clang_parseTranslationUnit2(index, (byte*)file, (byte**)argv, utf8.Length, null, 0, SkipFunctionBodies, &tu);
            if (rc != 0 || tu == 0)
                throw new GeneratorException($"libclang could not parse {full} (CXErrorCode {rc})");

            var errors = new StringBuilder();
            for (uint i = 0, n = clang_getNumDiagnostics(tu); i < n; i++)
            {
                var d = clang_getDiagnostic(tu, i);
                var severity = clang_getDiagnosticSeverity(d);
                var text = Take(clang_formatDiagnostic(d, clang_defaultDiagnosticDisplayOptions()));
                clang_disposeDiagnostic(d);
                if (severity >= CXDiagnosticSeverity.Error)
                    errors.Append("\n  ").Append(text);
                else if (severity == CXDiagnosticSeverity.Warning)
                    Console.Error.WriteLine(text);
            }
            if (errors.Length > 0)
            {
                clang_disposeTranslationUnit(tu);
                throw new GeneratorException($"{full} does not parse (clang args: {string.Join(' ', args)}):{errors}");
            }
            return tu;
        }
        finally
        {
            foreach (var p in utf8)
                Marshal.FreeCoTaskMem(p);
            Marshal.FreeCoTaskMem(file);
        }
    }

    private HeaderModel ReadUnit(nint tu)
    {
        var decls = Children(clang_getTranslationUnitCursor(tu))
            .Where(c => clang_Location_isFromMainFile(clang_getCursorLocation(c)) != 0)
            .ToList();

        // Typedef names first: "typedef struct x {...} y;" declares the struct before the typedef.
        foreach (var c in decls.Where(c => clang_getCursorKind(c) == CXCursorKind.TypedefDecl))
            CheckTypedef(c);

        var model = new HeaderModel(_relative, [], [], []);
        var functions = new HashSet<string>(StringComparer.Ordinal);
        foreach (var c in decls)
        {
            switch (clang_getCursorKind(c))
            {
                case CXCursorKind.EnumDecl when clang_isCursorDefinition(c) != 0:
                    model.Enums.Add(ReadEnum(c));
                    break;
                case CXCursorKind.StructDecl when clang_isCursorDefinition(c) != 0:
                    model.Structs.Add(ReadStruct(c));
                    break;
                case CXCursorKind.UnionDecl:
                    throw Fail(c, $"union {(IsAnonymous(c) ? "(anonymous)" : Spelling(c))}: unions are not supported; the ABI must stay flat");
                case CXCursorKind.FunctionDecl:
                    if (functions.Add(Spelling(c)))
                        model.Functions.Add(ReadFunction(c));
                    break;
                case CXCursorKind.VarDecl:
                    throw Fail(c, $"variable {Spelling(c)}: global variables are not part of the ABI; export a function");
            }
        }
        return model;
    }

    private void CheckTypedef(CXCursor c)
    {
        var name = Spelling(c);
        var underlying = Desugar(clang_getTypedefDeclUnderlyingType(c));
        var canonical = clang_getCanonicalType(underlying);
        if (IsFunction(canonical) || (canonical.Kind == CXTypeKind.Pointer && IsFunction(clang_getCanonicalType(clang_getPointeeType(canonical)))))
            throw Fail(c, $"typedef {name}: function pointers are not supported; the shim owns every callback");
        if (underlying.Kind == CXTypeKind.Record)
        {
            var decl = clang_getTypeDeclaration(canonical);
            if (clang_getCursorKind(decl) == CXCursorKind.UnionDecl)
                throw Fail(c, $"typedef {name}: union {(IsAnonymous(decl) ? "(anonymous)" : Spelling(decl))} is not supported; the ABI must stay flat");
            _recordNames.TryAdd(Usr(decl), name);
        }
    }

    private EnumModel ReadEnum(CXCursor c)
    {
        var name = IsAnonymous(c) ? "" : Spelling(c);
        var size = clang_Type_getSizeOf(clang_getEnumDeclIntegerType(c));
        if (size != 4)
            throw Fail(c, $"enum {name}: its constants need a {size}-byte integer; only 4-byte enums map to const int");
        var constants = new List<ConstantModel>();
        foreach (var k in Children(c).Where(k => clang_getCursorKind(k) == CXCursorKind.EnumConstantDecl))
        {
            var value = clang_getEnumConstantDeclValue(k);
            if (value is < int.MinValue or > int.MaxValue)
                throw Fail(k, $"enum constant {Spelling(k)} = {value} does not fit in an int");
            constants.Add(new ConstantModel(Spelling(k), value, Doc(k)));
        }
        return new EnumModel(name, Doc(c), constants);
    }

    private StructModel ReadStruct(CXCursor c)
    {
        var name = RecordName(c);
        var fields = new List<FieldModel>();
        long end = 0, maxAlign = 1;
        foreach (var f in Children(c))
        {
            var kind = clang_getCursorKind(f);
            if (kind is CXCursorKind.StructDecl or CXCursorKind.UnionDecl)
                throw Fail(f, $"struct {name}: nested {(kind == CXCursorKind.UnionDecl ? "union" : "struct")} declarations are not supported; declare it at file scope");
            if (kind != CXCursorKind.FieldDecl)
                continue;
            var field = ReadField(f, name);
            var where = $"struct {name} field {field.Name}";

            // The C# struct is LayoutKind.Sequential: prove the C layout is the natural one.
            var type = clang_getCursorType(f);
            long size = clang_Type_getSizeOf(type), align = clang_Type_getAlignOf(type);
            long offsetBits = clang_Cursor_getOffsetOfField(f);
            if (size < 0 || align <= 0 || offsetBits < 0 || offsetBits % 8 != 0)
                throw Fail(f, $"{where}: libclang cannot lay it out (size {size}, align {align}, offset {offsetBits} bits)");
            long natural = AlignUp(end, align);
            if (offsetBits / 8 != natural)
                throw Fail(f, $"{where}: at offset {offsetBits / 8} in C but {natural} in a sequential C# layout (packed or aligned attribute?)");
            long csSize = ManagedSize(field);
            if (csSize != size)
                throw Fail(f, $"{where}: C type is {size} bytes but C# {field.Type} is {csSize}");
            end = natural + size;
            maxAlign = Math.Max(maxAlign, align);
            fields.Add(field);
        }
        if (fields.Count == 0)
            throw Fail(c, $"struct {name}: an empty struct has no portable layout");
        long total = clang_Type_getSizeOf(clang_getCursorType(c));
        if (total != AlignUp(end, maxAlign))
            throw Fail(c, $"struct {name}: sizeof is {total} in C but {AlignUp(end, maxAlign)} in a sequential C# layout (aligned attribute?)");
        _structSizes[name] = total;
        return new StructModel(name, Doc(c), fields);
    }

    private FieldModel ReadField(CXCursor f, string owner)
    {
        var name = Spelling(f);
        var where = $"struct {owner} field {name}";
        if (clang_Cursor_isBitField(f) != 0)
            throw Fail(f, $"{where}: bit-fields are not supported; use a whole integer and flag constants");
        var type = Desugar(clang_getCursorType(f));
        if (type.Kind == CXTypeKind.IncompleteArray)
            throw Fail(f, $"{where}: flexible array members are not supported");
        if (type.Kind == CXTypeKind.ConstantArray)
        {
            var element = Map(clang_getArrayElementType(type), Use.FixedElement, f, where);
            if (!FixedBufferElements.Contains(element))
                throw Fail(f, $"{where}: C# fixed buffers cannot hold {element}; use a fixed-width integer element");
            return new FieldModel(name, element, clang_getArraySize(type), Doc(f));
        }
        return new FieldModel(name, Map(clang_getCursorType(f), Use.Field, f, where), null, Doc(f));
    }

    private FunctionModel ReadFunction(CXCursor c)
    {
        var name = Spelling(c);
        var where = $"function {name}";
        var type = clang_getCursorType(c);
        if (type.Kind == CXTypeKind.FunctionNoProto)
            throw Fail(c, $"{where}: declared without a prototype; write {name}(void)");
        if (clang_isFunctionTypeVariadic(type) != 0)
            throw Fail(c, $"{where}: variadic functions are not supported");
        if (clang_Cursor_isFunctionInlined(c) != 0 || clang_isCursorDefinition(c) != 0)
            throw Fail(c, $"{where}: an inline or defined function exports no symbol; move it into the shim");

        var returnType = Map(clang_getResultType(type), Use.Return, c, $"{where} return type");
        var parameters = new List<ParameterModel>();
        for (int i = 0, n = clang_Cursor_getNumArguments(c); i < n; i++)
        {
            var p = clang_Cursor_getArgument(c, (uint)i);
            var pname = Spelling(p) is { Length: > 0 } s ? s : $"arg{i}";
            parameters.Add(new ParameterModel(pname, Map(clang_getCursorType(p), Use.Parameter, p, $"{where} parameter {pname}")));
        }
        return new FunctionModel(name, returnType, parameters, Doc(c));
    }

    private string Map(CXType t, Use use, CXCursor at, string where)
    {
        switch (t.Kind)
        {
            case CXTypeKind.Elaborated:
                return Map(clang_Type_getNamedType(t), use, at, where);
            case CXTypeKind.Attributed:
                return Map(clang_Type_getModifiedType(t), use, at, where);
            case CXTypeKind.Typedef:
                var decl = clang_getTypeDeclaration(t);
                return KnownTypedefs.TryGetValue(Spelling(decl), out var known)
                    ? known
                    : Map(clang_getTypedefDeclUnderlyingType(decl), use, at, where);
            case CXTypeKind.Void when use is Use.Return or Use.Pointee:
                return "void";
            case CXTypeKind.Bool: return "byte"; // a bool crosses as one byte, never marshalled
            case CXTypeKind.Char_S or CXTypeKind.Char_U or CXTypeKind.UChar: return "byte";
            case CXTypeKind.SChar: return "sbyte";
            case CXTypeKind.UShort: return "ushort";
            case CXTypeKind.Short: return "short";
            case CXTypeKind.UInt: return "uint";
            case CXTypeKind.Int: return "int";
            case CXTypeKind.ULongLong: return "ulong";
            case CXTypeKind.LongLong: return "long";
            case CXTypeKind.Float: return "float";
            case CXTypeKind.Double: return "double";
            case CXTypeKind.Long or CXTypeKind.ULong:
                throw Fail(at, $"{where}: '{TypeSpelling(t)}' changes size between platforms; use a fixed-width type or size_t");
            case CXTypeKind.Enum when use != Use.FixedElement && clang_Type_getSizeOf(t) == 4:
                return "int";
            case CXTypeKind.Pointer:
                return MapPointer(t, at, where);
            case CXTypeKind.Record:
                return MapRecord(t, use, at, where);
            case CXTypeKind.FunctionProto or CXTypeKind.FunctionNoProto:
                throw Fail(at, $"{where}: function types are not supported; the shim owns every callback");
        }
        throw Fail(at, $"{where}: type '{TypeSpelling(t)}' has no mapping{(use == Use.FixedElement ? " as a fixed buffer element" : "")}");
    }

    private string MapPointer(CXType t, CXCursor at, string where)
    {
        var pointee = clang_getPointeeType(t);
        var canonical = clang_getCanonicalType(pointee);
        if (IsFunction(canonical))
            throw Fail(at, $"{where}: function pointers are not supported; the shim owns every callback");
        if (IsOpaqueRecord(canonical))
            return "nint";
        if (canonical.Kind == CXTypeKind.Pointer && IsOpaqueRecord(clang_getCanonicalType(clang_getPointeeType(canonical))))
            return "nint*";
        return Map(pointee, Use.Pointee, at, where) + "*";
    }

    private string MapRecord(CXType t, Use use, CXCursor at, string where)
    {
        var decl = clang_getTypeDeclaration(clang_getCanonicalType(t));
        var name = RecordName(decl);
        if (clang_getCursorKind(decl) == CXCursorKind.UnionDecl)
            throw Fail(at, $"{where}: union {name} is not supported; the ABI must stay flat");
        if (IsOpaqueRecord(clang_getCanonicalType(t)))
            throw Fail(at, $"{where}: opaque struct {name} can only be used through a pointer");
        if (use is Use.Parameter or Use.Return)
            throw Fail(at, $"{where}: struct {name} by value is not supported; pass a pointer");
        if (use == Use.FixedElement)
            throw Fail(at, $"{where}: an array of struct {name} cannot be a fixed buffer");
        if (clang_Location_isFromMainFile(clang_getCursorLocation(decl)) == 0)
            throw Fail(at, $"{where}: struct {name} is declared outside {_relative}; the ABI must be self-contained");
        return name;
    }

    private long ManagedSize(FieldModel f)
    {
        long element = f.Type.EndsWith('*') ? nint.Size
            : PrimitiveSizes.TryGetValue(f.Type, out var p) ? p
            : _structSizes.TryGetValue(f.Type, out var s) ? s
            : -1;
        return f.FixedLength is { } n ? element * n : element;
    }

    private string RecordName(CXCursor decl)
    {
        if (_recordNames.TryGetValue(Usr(decl), out var typedefName))
            return typedefName;
        if (IsAnonymous(decl))
            throw Fail(decl, "an anonymous struct or union needs a typedef name");
        return Spelling(decl);
    }

    private static bool IsOpaqueRecord(CXType canonical) =>
        canonical.Kind == CXTypeKind.Record
        && clang_Cursor_isNull(clang_getCursorDefinition(clang_getTypeDeclaration(canonical))) != 0;

    private static bool IsFunction(CXType t) => t.Kind is CXTypeKind.FunctionProto or CXTypeKind.FunctionNoProto;

    private static CXType Desugar(CXType t)
    {
        while (true)
        {
            if (t.Kind == CXTypeKind.Elaborated)
                t = clang_Type_getNamedType(t);
            else if (t.Kind == CXTypeKind.Attributed)
                t = clang_Type_getModifiedType(t);
            else if (t.Kind == CXTypeKind.Typedef && !KnownTypedefs.ContainsKey(Spelling(clang_getTypeDeclaration(t))))
                t = clang_getTypedefDeclUnderlyingType(clang_getTypeDeclaration(t));
            else
                return t;
        }
    }

    private static long AlignUp(long value, long align) => (value + align - 1) / align * align;

    // libclang 14 spells an anonymous record as ""; newer ones as "struct (unnamed at ...)".
    private static bool IsAnonymous(CXCursor c) => Spelling(c) is var s && (s.Length == 0 || s.Contains('('));

    private static string Spelling(CXCursor c) => Take(clang_getCursorSpelling(c));

    private static string Usr(CXCursor c) => Take(clang_getCursorUSR(c));

    private static string TypeSpelling(CXType t) => Take(clang_getTypeSpelling(t));

    /// <summary>The brief doc comment on one line, or null when there is none.</summary>
    private static string? Doc(CXCursor c)
    {
        var text = string.Join(' ', Take(clang_Cursor_getBriefCommentText(c))
            .Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
        return text.Length == 0 ? null : text;
    }

    private GeneratorException Fail(CXCursor at, string message)
    {
        uint line, column, offset;
        nint file;
        clang_getSpellingLocation(clang_getCursorLocation(at), &file, &line, &column, &offset);
        return new GeneratorException($"{_relative}:{line}: {message}");
    }
}
