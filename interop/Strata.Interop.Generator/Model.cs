namespace Strata.Interop.Generator;

// What the emitter needs from a header, already mapped to C# spellings, in
// declaration order. Doc is the one-line brief comment, or null.

/// <summary>A parsed header: its repo-relative path and its declarations in order.</summary>
internal sealed record HeaderModel(string RelativePath, List<EnumModel> Enums, List<StructModel> Structs, List<FunctionModel> Functions);

/// <summary>A C enum; Name is empty for an anonymous one.</summary>
internal sealed record EnumModel(string Name, string? Doc, List<ConstantModel> Constants);

/// <summary>One enumerator, emitted as a const int.</summary>
internal sealed record ConstantModel(string Name, long Value, string? Doc);

/// <summary>A complete C struct, emitted as a sequential struct.</summary>
internal sealed record StructModel(string Name, string? Doc, List<FieldModel> Fields);

/// <summary>A struct field; FixedLength is set for a C array, emitted as a fixed buffer.</summary>
internal sealed record FieldModel(string Name, string Type, long? FixedLength, string? Doc);

/// <summary>A function, emitted as a [LibraryImport] partial method.</summary>
internal sealed record FunctionModel(string Name, string ReturnType, List<ParameterModel> Parameters, string? Doc);

/// <summary>A function parameter.</summary>
internal sealed record ParameterModel(string Name, string Type);
