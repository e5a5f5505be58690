using System.Buffers.Binary;
using System.Text;
using Strata.Engine.Nbd;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Fuzz;

/// <summary>
/// Harnesses of the NBD parsers: the input is what a client sends, cut into messages as the
/// connection cuts it (NbdConnection.Handshake.cs, NbdConnection.Transmission.cs), each message
/// parsed by the same NbdParse call and each refusal encoded as the server would answer it.
/// </summary>
public static class NbdHarnesses
{
    /// <summary>
    /// The limits of a default server. Built on first use, never in a static constructor that runs before
    /// Fuzzer.Run: instrumented code that runs before afl's shared memory is mapped crashes the process.
    /// </summary>
    private static NbdServerOptions Limits => DefaultServer.Options;

    private static class DefaultServer
    {
        public static readonly NbdServerOptions Options = new();
    }

    /// <summary>The export the request harness serves.</summary>
    public const string ExportName = "pool/cont/image";

    public static readonly IReadOnlyDictionary<string, FuzzTarget> All = new Dictionary<string, FuzzTarget>
    {
        ["nbd-handshake"] = Handshake,
        ["nbd-request"] = Requests,
    };

    /// <summary>The client's side of the handshake after the greeting: client flags, then options.</summary>
    public static string Handshake(ReadOnlySpan<byte> input)
    {
        var bytes = input.ToArray();
        return FuzzHarness.Step(() => RunHandshake(bytes));
    }

    private static string RunHandshake(byte[] input)
    {
        if (input.Length < 4)
            return "closed before the client flags";
        NbdParse.ClientFlags(input);
        int at = 4;
        var reply = new byte[OptionReplyHeaderSize + MaxStringLength];
        for (int options = 0; ; options++)
        {
            if (input.Length - at < OptionHeaderSize)
                return $"closed after {options} option(s)";
            var (option, length) = NbdParse.OptionHeader(input.AsSpan(at), options, Limits.MaxOptionLength, Limits.MaxOptions);
            at += OptionHeaderSize;
            if (input.Length - at < length)
                return $"closed in the data of option {options}";
            var data = input.AsSpan(at, (int)length);
            at += (int)length;
            switch (option)
            {
                case OptExportName:
                {
                    string? name = NbdParse.DecodeString(data);
                    string? problem = name == null ? "the name is not valid UTF-8 (or contains NUL)" : NbdParse.ExportNameProblem(name);
                    return problem == null ? $"EXPORT_NAME '{name}'" : $"EXPORT_NAME refused: {problem}";
                }
                case OptAbort:
                    return "aborted";
                case OptInfo:
                case OptGo:
                {
                    var request = NbdParse.InfoRequest(option, data);
                    string? problem = request.Error ?? NbdParse.ExportNameProblem(request.Name!);
                    if (problem != null)
                    {
                        ErrorReply(reply, option, problem);
                        break;
                    }
                    if (option == OptGo)
                        return $"GO '{request.Name}' with {request.Requested.Count} information request(s)";
                    break;
                }
                case OptListMetaContext:
                case OptSetMetaContext:
                {
                    // As NbdConnection.MetaContextAsync: parse, check the name, answer base:allocation or nothing, then ACK.
                    var request = NbdParse.MetaContextRequest(option, data);
                    string? problem = request.Error ?? NbdParse.ExportNameProblem(request.Name!);
                    if (problem != null)
                    {
                        ErrorReply(reply, option, problem);
                        break;
                    }
                    if (NbdParse.MatchesAllocation(request.Queries, list: option == OptListMetaContext))
                    {
                        int n = Encoding.UTF8.GetByteCount(AllocationContext);
                        NbdWire.WriteOptionReplyHeader(reply, option, RepMetaContext, (uint)(4 + n));
                        Encoding.UTF8.GetBytes(AllocationContext, reply.AsSpan(OptionReplyHeaderSize + 4));
                    }
                    break;
                }
                case OptList:
                case OptStructuredReply:
                    if (length != 0)
                        ErrorReply(reply, option, $"{OptionName(option)} takes no data");
                    break;
                default:
                    ErrorReply(reply, option, $"{OptionName(option)} is not supported by Strata's NBD server");
                    break;
            }
        }
    }

    /// <summary>An option error reply, encoded as NbdConnection.ErrorAsync does (the message cut to the spec's limit).</summary>
    private static void ErrorReply(byte[] reply, uint option, string message)
    {
        int n = Math.Min(Encoding.UTF8.GetByteCount(message), MaxStringLength);
        NbdWire.WriteOptionReplyHeader(reply, option, RepErrInvalid, (uint)n);
        NbdWire.Utf8Prefix(message, reply.AsSpan(OptionReplyHeaderSize, n));
    }

    /// <summary>
    /// Transmission: 8 bytes of export size and a byte of mode (bit 0 read-only, bit 1 structured
    /// replies, bit 2 base:allocation selected) choose the export; then request headers, each WRITE
    /// followed by its payload. A BLOCK_STATUS that passes is answered as if the range were one run.
    /// </summary>
    public static string Requests(ReadOnlySpan<byte> input)
    {
        var bytes = input.ToArray();
        return FuzzHarness.Step(() => RunRequests(bytes));
    }

    private static string RunRequests(byte[] input)
    {
        if (input.Length < 9)
            return "no export";
        long size = BinaryPrimitives.ReadInt64BigEndian(input) & long.MaxValue;
        bool readOnly = (input[8] & 1) != 0, structured = (input[8] & 2) != 0, blockStatus = (input[8] & 4) != 0;
        var reply = new byte[NbdWire.ErrorChunkSize(new string('x', MaxStringLength))];
        int at = 9, requests = 0, refused = 0;
        while (input.Length - at >= RequestHeaderSize)
        {
            var h = NbdRequestHeader.Read(input.AsSpan(at));
            at += RequestHeaderSize;
            requests++;
            if (h.Magic != RequestMagic)
                throw new NbdProtocolException(NbdParse.RequestViolation(h, Limits.MaxPayload)!);
            if (h.Type == CmdDisc)
                return $"{requests} request(s), {refused} refused, then NBD_CMD_DISC";
            uint error = NbdParse.CheckRequest(h, ExportName, size, readOnly, structured, blockStatus, Limits.MaxPayload, out string? message);
            if (NbdParse.RequestViolation(h, Limits.MaxPayload) is { } violation)
            {
                // Answered EINVAL, then the connection closes.
                NbdWire.WriteErrorChunk(reply, h.Cookie, EInval, violation);
                throw new NbdProtocolException(violation);
            }
            if (h.Type == CmdWrite)
                at += (int)Math.Min(h.Length, (uint)(input.Length - at));
            if (error != 0)
            {
                refused++;
                if (structured)
                    NbdWire.WriteErrorChunk(reply.AsSpan(0, NbdWire.ErrorChunkSize(message)), h.Cookie, error, message);
                else
                    NbdWire.WriteSimpleReply(reply, error, h.Cookie);
            }
            else if (h.Type == CmdBlockStatus)
                NbdWire.WriteBlockStatus(reply, h.Cookie, AllocationContextId, [new Strata.Engine.Pools.AllocationRun(h.Length, (h.Offset & 1) != 0)]);
            else if (h.Type == CmdRead && structured && h.Length > 0)
                NbdWire.WriteOffsetDataHeader(reply, h.Cookie, h.Offset, (int)h.Length);
        }
        return $"{requests} request(s), {refused} refused";
    }
}
