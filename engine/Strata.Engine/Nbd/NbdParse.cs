using System.Buffers.Binary;
using System.Text;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>A client message that breaks the protocol's framing: the connection is closed (the message is one line).</summary>
public sealed class NbdProtocolException(string message) : Exception(message);

/// <summary>An NBD_OPT_INFO / NBD_OPT_GO request: the export name and the information types asked for, or why it is invalid.</summary>
public readonly record struct NbdInfoRequest(string? Name, IReadOnlySet<ushort> Requested, string? Error);

/// <summary>An NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT request: the export name and the queries, or why it is invalid.</summary>
public readonly record struct NbdMetaContextRequest(string? Name, IReadOnlyList<string> Queries, string? Error);

/// <summary>
/// The pure parsers of what a client sends, over bytes already received: the connection's
/// handshake and receive loop call them, and so do the fuzz harnesses (tests/Strata.Fuzz).
/// Framing errors throw <see cref="NbdProtocolException"/>; errors a reply answers are returned.
/// </summary>
public static class NbdParse
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private static readonly IReadOnlySet<ushort> NoneRequested = new HashSet<ushort>();

    /// <summary>The 4 client flags bytes after the greeting; returns whether the client asked for NO_ZEROES.</summary>
    public static bool ClientFlags(ReadOnlySpan<byte> s)
    {
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(s);
        if ((clientFlags & ~(ClientFlagFixedNewstyle | ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"unknown client flags 0x{clientFlags:x8}");
        return (clientFlags & ClientFlagNoZeroes) != 0;
    }

    /// <summary>An option request header (16 bytes), the <paramref name="options"/>-th (from 0) of the connection.</summary>
    public static (uint Option, uint Length) OptionHeader(ReadOnlySpan<byte> s, int options, int maxOptionLength, int maxOptions)
    {
        var (magic, option, length) = NbdWire.ReadOptionHeader(s);
        if (magic != OptionMagic)
            throw new NbdProtocolException($"bad option magic 0x{magic:x16}");
        if (length > maxOptionLength)
            throw new NbdProtocolException($"{OptionName(option)} has {length} bytes of data, more than the {maxOptionLength} accepted");
        if (options >= maxOptions)
            throw new NbdProtocolException($"more than {maxOptions} options without entering transmission");
        return (option, length);
    }

    /// <summary>The data of NBD_OPT_INFO / NBD_OPT_GO: 32-bit name length, name, 16-bit count, count 16-bit information requests.</summary>
    public static NbdInfoRequest InfoRequest(uint option, ReadOnlySpan<byte> data)
    {
        if (data.Length < 6)
            return Invalid($"{OptionName(option)} data is {data.Length} bytes, shorter than the 6 it needs");
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 6)
            return Invalid($"{OptionName(option)} name length {nameLength} does not fit its {data.Length} bytes of data");
        int at = 4 + (int)nameLength;
        int count = BinaryPrimitives.ReadUInt16BigEndian(data[at..]);
        if (data.Length != at + 2 + 2 * count)
            return Invalid($"{OptionName(option)} lists {count} information requests but carries {data.Length - at - 2} bytes for them");
        var requested = new HashSet<ushort>();
        for (int i = 0; i < count; i++)
            requested.Add(BinaryPrimitives.ReadUInt16BigEndian(data[(at + 2 + 2 * i)..]));
        string? name = DecodeString(data.Slice(4, (int)nameLength));
        if (name == null)
            return Invalid("the export name is not valid UTF-8 (or contains NUL)");
        return new NbdInfoRequest(name, requested, null);
    }

    private static NbdInfoRequest Invalid(string error) => new(null, NoneRequested, error);

    /// <summary>The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: 32-bit name length, name, 32-bit count, count (32-bit length, query).</summary>
    public static NbdMetaContextRequest MetaContextRequest(uint option, ReadOnlySpan<byte> data)
    {
        if (data.Length < 8)
            return InvalidMeta($"{OptionName(option)} data is {data.Length} bytes, shorter than the 8 it needs");
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 8)
            return InvalidMeta($"{OptionName(option)} name length {nameLength} does not fit its {data.Length} bytes of data");
        string? name = DecodeString(data.Slice(4, (int)nameLength));
        if (name == null)
            return InvalidMeta("the export name is not valid UTF-8 (or contains NUL)");
        int at = 4 + (int)nameLength;
        uint count = BinaryPrimitives.ReadUInt32BigEndian(data[at..]);
        at += 4;
        // Each query takes at least its 4-byte length: a count the data cannot hold is refused before anything is allocated.
        if (count > (uint)(data.Length - at) / 4)
            return InvalidMeta($"{OptionName(option)} lists {count} queries but carries {data.Length - at} bytes for them");
        var queries = new List<string>((int)count);
        for (uint i = 0; i < count; i++)
        {
            if (data.Length - at < 4)
                return InvalidMeta($"{OptionName(option)} query {i} has no length");
            uint length = BinaryPrimitives.ReadUInt32BigEndian(data[at..]);
            at += 4;
            if (length > data.Length - at)
                return InvalidMeta($"{OptionName(option)} query {i} of {length} bytes does not fit the data");
            string? query = DecodeString(data.Slice(at, (int)length));
            if (query == null)
                return InvalidMeta($"{OptionName(option)} query {i} is not valid UTF-8 (or contains NUL)");
            if (!query.Contains(':', StringComparison.Ordinal))
                return InvalidMeta($"{OptionName(option)} query '{query}' has no namespace (namespace:leaf)");
            queries.Add(query);
            at += (int)length;
        }
        if (at != data.Length)
            return InvalidMeta($"{OptionName(option)} has {data.Length - at} bytes after its last query");
        return new NbdMetaContextRequest(name, queries, null);
    }

    private static NbdMetaContextRequest InvalidMeta(string error) => new(null, [], error);

    /// <summary>
    /// Whether the queries select (SET) or list (LIST) base:allocation, the one context Strata has. An
    /// empty list lists every context but selects none; "base:" lists the base namespace's contexts
    /// only in LIST; queries of other namespaces and unknown leaves are ignored, as the spec requires.
    /// </summary>
    public static bool MatchesAllocation(IReadOnlyList<string> queries, bool list)
    {
        if (queries.Count == 0)
            return list;
        foreach (var q in queries)
            if (q == AllocationContext || (list && q == "base:"))
                return true;
        return false;
    }

    /// <summary>An export name or other string: null when longer than the spec allows, not UTF-8, or containing NUL.</summary>
    public static string? DecodeString(ReadOnlySpan<byte> data)
    {
        if (data.Length > MaxStringLength || data.Contains((byte)0))
            return null;
        try
        {
            return StrictUtf8.GetString(data);
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
    }

    /// <summary>Why a decoded export name cannot name an image, or null when it has the pool/container/image form.</summary>
    public static string? ExportNameProblem(string name)
    {
        if (name.Length == 0)
            return "Strata has no default export: name an image as pool/container/image (NBD_OPT_LIST shows them)";
        if (!NbdExportCatalog.TryParseName(name, out _, out _, out _))
            return $"'{name}' is not an export name: use pool/container/image (NBD_OPT_LIST shows them)";
        return null;
    }

    /// <summary>
    /// What a transmission request header (28 bytes) breaks in the framing: a bad magic, or a WRITE
    /// whose payload cannot be skipped safely. Null when the stream stays in step.
    /// </summary>
    public static string? RequestViolation(in NbdRequestHeader h, int maxPayload)
    {
        if (h.Magic != RequestMagic)
            return $"bad request magic 0x{h.Magic:x8}";
        if (h.Type == CmdWrite && h.Length > maxPayload)
            return $"WRITE of {h.Length} bytes exceeds the {maxPayload}-byte maximum payload";
        return null;
    }

    /// <summary>Validates a request against the negotiated export, without a metadata context selected.</summary>
    public static uint CheckRequest(in NbdRequestHeader h, string exportName, long exportSize, bool readOnly, bool structured, int maxPayload, out string? message) =>
        CheckRequest(h, exportName, exportSize, readOnly, structured, blockStatus: false, maxPayload, out message);

    /// <summary>
    /// Validates a request against the negotiated export; 0 or an NBD error (the message is built only
    /// then). <paramref name="blockStatus"/>: base:allocation was selected for this export (BLOCK_STATUS allowed).
    /// </summary>
    public static uint CheckRequest(in NbdRequestHeader h, string exportName, long exportSize, bool readOnly, bool structured, bool blockStatus, int maxPayload, out string? message)
    {
        message = null;
        int allowed = CmdFlagFua | h.Type switch
        {
            CmdWriteZeroes => CmdFlagNoHole | CmdFlagFastZero,
            CmdBlockStatus => CmdFlagReqOne,
            _ => 0,
        };
        if (h.Type == CmdBlockStatus && !(blockStatus && structured))
        {
            message = "BLOCK_STATUS needs the base:allocation metadata context: select it with NBD_OPT_SET_META_CONTEXT (after NBD_OPT_STRUCTURED_REPLY) for this export";
            return EInval;
        }
        if (h.Type is not (CmdRead or CmdWrite or CmdFlush or CmdTrim or CmdWriteZeroes or CmdBlockStatus))
        {
            message = $"{CommandName(h.Type)} is not supported by Strata's NBD server";
            return EInval;
        }
        if ((h.Flags & ~allowed) != 0)
        {
            message = $"command flags 0x{h.Flags:x4} are not valid for {CommandName(h.Type)}";
            return EInval;
        }
        if (h.Type == CmdFlush)
            return 0;
        if (h.Type == CmdBlockStatus && h.Length == 0)
        {
            message = "BLOCK_STATUS of 0 bytes: ask about at least one byte";
            return EInval;
        }
        if (h.Type is not (CmdRead or CmdBlockStatus) && readOnly)
        {
            message = $"{CommandName(h.Type)} on read-only export '{exportName}'";
            return EPerm;
        }
        if (h.Type == CmdRead && h.Length > maxPayload)
        {
            message = $"READ of {h.Length} bytes exceeds the {maxPayload}-byte maximum payload";
            return structured ? EOverflow : EInval;
        }
        if (h.Offset > (ulong)exportSize || h.Length > (ulong)exportSize - h.Offset)
        {
            message = $"{CommandName(h.Type)} of {h.Length} bytes at offset {h.Offset} is past the end of export '{exportName}' ({exportSize} bytes)";
            // The spec asks for ENOSPC on writes past the end, EINVAL on reads and trims.
            return h.Type is CmdWrite or CmdWriteZeroes ? ENoSpc : EInval;
        }
        return 0;
    }
}
