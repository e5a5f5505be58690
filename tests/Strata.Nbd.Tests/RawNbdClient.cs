using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Strata.Nbd.Tests;

/// <summary>One reply as the client saw it: a simple reply, or one structured chunk.</summary>
/// <remarks>
/// A structured READ reply sent as several OFFSET_DATA / OFFSET_HOLE chunks is returned as one reply
/// (ChunkType 1, the DONE flag, the data from the lowest offset, holes as zeroes); Pieces says how
/// many chunks it came in.
/// </remarks>
internal sealed record NbdReply(bool Structured, uint Error, ulong Cookie, byte[] Data, ushort ChunkType = 0, ushort ChunkFlags = 0,
    ulong DataOffset = 0, string? Message = null, int Pieces = 1);

/// <summary>An option reply during the handshake.</summary>
internal sealed record OptionReply(uint Option, uint Type, byte[] Data)
{
    public string Text => Encoding.UTF8.GetString(Data);
}

/// <summary>What NBD_OPT_GO (or INFO) returned.</summary>
internal sealed record GoResult(uint Final, ulong Size, ushort Flags, Dictionary<ushort, byte[]> Infos, string? Error);

/// <summary>
/// A deliberately plain NBD client written from the spec with BinaryPrimitives (not the server's
/// codec), able to send anything: well-formed requests, or the malformed ones real clients never send.
/// Every read is bounded by a generous timeout so a server that hangs fails the test instead of hanging it.
/// </summary>
internal sealed class RawNbdClient : IDisposable
{
    public const ulong NbdMagic = 0x4e42444d41474943, IHaveOpt = 0x49484156454F5054, ReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513, SimpleMagic = 0x67446698, StructuredMagic = 0x668e33ef;
    public const uint OptExportName = 1, OptAbort = 2, OptList = 3, OptInfo = 6, OptGo = 7, OptStructured = 8, OptListMeta = 9, OptSetMeta = 10;
    public const uint RepAck = 1, RepServer = 2, RepInfo = 3, RepMetaContext = 4, ErrUnsup = 0x80000001, ErrInvalid = 0x80000003, ErrUnknown = 0x80000006;
    public const ushort CmdRead = 0, CmdWrite = 1, CmdDisc = 2, CmdFlush = 3, CmdTrim = 4, CmdCache = 5, CmdWriteZeroes = 6, CmdBlockStatus = 7;
    public const ushort FlagFua = 1, FlagNoHole = 2, FlagReqOne = 8, FlagFastZero = 16;
    public const uint EPerm = 1, EIo = 5, EInval = 22, ENoSpc = 28, EOverflow = 75, ENotSup = 95, EShutdown = 108;

    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly Dictionary<ulong, int> _pendingReads = new();
    /// <summary>Pieces of structured READ replies not yet complete, by cookie.</summary>
    private readonly Dictionary<ulong, List<(ulong At, byte[] Data)>> _pieces = new();
    private ulong _cookie = 1;

    private RawNbdClient(Socket socket) => Socket = socket;

    public Socket Socket { get; }

    public bool Structured { get; private set; }

    public ulong Size { get; private set; }

    public ushort TransmissionFlags { get; private set; }

    public static async Task<RawNbdClient> ConnectUnixAsync(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(path));
        return new RawNbdClient(s);
    }

    /// <param name="receiveBuffer">SO_RCVBUF set before connecting (0: the default): a small one makes the server's sends fill up early.</param>
    public static async Task<RawNbdClient> ConnectTcpAsync(int port, int receiveBuffer = 0)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBuffer > 0)
            s.ReceiveBufferSize = receiveBuffer;
        await s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
        return new RawNbdClient(s);
    }

    /// <summary>Greeting, client flags (fixed newstyle + no zeroes), optionally structured replies, then GO.</summary>
    public static async Task<RawNbdClient> OpenAsync(Func<Task<RawNbdClient>> connect, string export, bool structured = true, string? metaContext = null)
    {
        var c = await connect();
        try
        {
            await c.ReadGreetingAsync();
            await c.SendClientFlagsAsync(3);
            if (structured)
            {
                await c.SendOptionAsync(OptStructured, []);
                var r = await c.ReadOptionReplyAsync();
                Assert.AreEqual(RepAck, r.Type, "structured replies refused");
                c.Structured = true;
            }
            if (metaContext != null)
            {
                var replies = await c.MetaContextAsync(OptSetMeta, export, metaContext);
                Assert.AreEqual(RepAck, replies[^1].Type, $"SET_META_CONTEXT {metaContext}: {replies[^1].Text}");
            }
            var go = await c.GoAsync(OptGo, export);
            Assert.AreEqual(RepAck, go.Final, $"GO {export} failed: {go.Error}");
            return c;
        }
        catch
        {
            c.Dispose();
            throw;
        }
    }

    public void Dispose() => Socket.Dispose();

    // ---- raw bytes ----

    public async Task SendAsync(byte[] data)
    {
        using var cts = new CancellationTokenSource(Timeout);
        await Socket.SendAsync(data, SocketFlags.None, cts.Token);
    }

    public async Task<byte[]> ReadExactAsync(int n)
    {
        var b = new byte[n];
        using var cts = new CancellationTokenSource(Timeout);
        for (int done = 0; done < n;)
        {
            int got = await Socket.ReceiveAsync(b.AsMemory(done), SocketFlags.None, cts.Token);
            if (got == 0)
                throw new EndOfStreamException($"server closed the connection after {done} of {n} bytes");
            done += got;
        }
        return b;
    }

    /// <summary>True when the server has closed the connection (end of stream or reset), reading and discarding what comes first.</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var b = new byte[4096];
        using var cts = new CancellationTokenSource(Timeout);
        try
        {
            while (true)
            {
                if (await Socket.ReceiveAsync(b, SocketFlags.None, cts.Token) == 0)
                    return true;
            }
        }
        catch (SocketException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    // ---- handshake ----

    public async Task<ushort> ReadGreetingAsync()
    {
        var g = await ReadExactAsync(18);
        Assert.AreEqual(NbdMagic, BinaryPrimitives.ReadUInt64BigEndian(g), "NBDMAGIC");
        Assert.AreEqual(IHaveOpt, BinaryPrimitives.ReadUInt64BigEndian(g.AsSpan(8)), "IHAVEOPT");
        return BinaryPrimitives.ReadUInt16BigEndian(g.AsSpan(16));
    }

    public Task SendClientFlagsAsync(uint flags)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, flags);
        return SendAsync(b);
    }

    public Task SendOptionAsync(uint option, byte[] data, ulong magic = IHaveOpt, uint? declaredLength = null)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, magic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), declaredLength ?? (uint)data.Length);
        data.CopyTo(b, 16);
        return SendAsync(b);
    }

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        var h = await ReadExactAsync(20);
        Assert.AreEqual(ReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(h), "option reply magic");
        uint option = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8));
        uint type = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return new OptionReply(option, type, len == 0 ? [] : await ReadExactAsync(len));
    }

    public static byte[] GoData(string name, params ushort[] infos)
    {
        var nb = Encoding.UTF8.GetBytes(name);
        var b = new byte[4 + nb.Length + 2 + 2 * infos.Length];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)nb.Length);
        nb.CopyTo(b, 4);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + nb.Length), (ushort)infos.Length);
        for (int i = 0; i < infos.Length; i++)
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6 + nb.Length + 2 * i), infos[i]);
        return b;
    }

    /// <summary>Sends NBD_OPT_GO or NBD_OPT_INFO and reads the replies up to the final one.</summary>
    public async Task<GoResult> GoAsync(uint option, string name, params ushort[] infos)
    {
        await SendOptionAsync(option, GoData(name, infos));
        var got = new Dictionary<ushort, byte[]>();
        while (true)
        {
            var r = await ReadOptionReplyAsync();
            Assert.AreEqual(option, r.Option, "reply to another option");
            if (r.Type == RepInfo)
            {
                got[BinaryPrimitives.ReadUInt16BigEndian(r.Data)] = r.Data[2..];
                continue;
            }
            ulong size = 0;
            ushort flags = 0;
            if (got.TryGetValue(0, out var export))
            {
                size = BinaryPrimitives.ReadUInt64BigEndian(export);
                flags = BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(8));
            }
            if (r.Type == RepAck && option == OptGo)
            {
                Size = size;
                TransmissionFlags = flags;
            }
            return new GoResult(r.Type, size, flags, got, r.Type == RepAck ? null : r.Text);
        }
    }

    /// <summary>NBD_OPT_LIST: the export names.</summary>
    public async Task<List<string>> ListAsync()
    {
        await SendOptionAsync(OptList, []);
        var names = new List<string>();
        while (true)
        {
            var r = await ReadOptionReplyAsync();
            if (r.Type != RepServer)
            {
                Assert.AreEqual(RepAck, r.Type, $"LIST ended with 0x{r.Type:x8}: {r.Text}");
                return names;
            }
            int len = (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data);
            names.Add(Encoding.UTF8.GetString(r.Data, 4, len));
        }
    }

    // ---- transmission ----

    public static byte[] Request(ushort type, ulong cookie, ulong offset, uint length, ushort flags = 0, uint magic = RequestMagic, byte[]? payload = null)
    {
        var b = new byte[28 + (payload?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(b, magic);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        payload?.CopyTo(b, 28);
        return b;
    }

    /// <summary>Sends one request (with its payload) and returns its cookie; a READ's length is remembered to parse a simple reply.</summary>
    public async Task<ulong> SendRequestAsync(ushort type, ulong offset, uint length, byte[]? payload = null, ushort flags = 0)
    {
        ulong cookie = _cookie++;
        if (type == CmdRead)
            _pendingReads[cookie] = (int)length;
        await SendAsync(Request(type, cookie, offset, length, flags, payload: payload));
        return cookie;
    }

    public async Task<NbdReply> ReadReplyAsync()
    {
        var h = await ReadExactAsync(4);
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(h);
        if (magic == SimpleMagic)
        {
            var rest = await ReadExactAsync(12);
            uint error = BinaryPrimitives.ReadUInt32BigEndian(rest);
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
            int dataLength = _pendingReads.Remove(cookie, out int n) && error == 0 ? n : 0;
            return new NbdReply(false, error, cookie, dataLength > 0 ? await ReadExactAsync(dataLength) : []);
        }
        Assert.AreEqual(StructuredMagic, magic, "reply magic");
        while (true)
        {
            var sh = await ReadExactAsync(16);
            ushort flags = BinaryPrimitives.ReadUInt16BigEndian(sh);
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(sh.AsSpan(2));
            ulong ck = BinaryPrimitives.ReadUInt64BigEndian(sh.AsSpan(4));
            int len = (int)BinaryPrimitives.ReadUInt32BigEndian(sh.AsSpan(12));
            var payload = len > 0 ? await ReadExactAsync(len) : [];
            bool done = (flags & 1) != 0;
            if (type is 1 or 2 && (!done || _pieces.ContainsKey(ck)))
            {
                // A piece of a READ answered in several chunks: kept until its last one (DONE).
                ulong at = BinaryPrimitives.ReadUInt64BigEndian(payload);
                var piece = type == 1 ? (at, payload[8..]) : (at, new byte[BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(8))]);
                if (!_pieces.TryGetValue(ck, out var list))
                    _pieces[ck] = list = [];
                list.Add(piece);
                if (!done)
                {
                    var next = await ReadExactAsync(4);
                    Assert.AreEqual(StructuredMagic, BinaryPrimitives.ReadUInt32BigEndian(next), "reply magic after a read's piece");
                    continue;
                }
                _pieces.Remove(ck);
                _pendingReads.Remove(ck);
                ulong from = list.Min(q => q.At), to = list.Max(q => q.At + (ulong)q.Data.Length);
                var data = new byte[to - from];
                Assert.AreEqual(data.Length, list.Sum(q => q.Data.Length), "a read's pieces overlap or leave a gap");
                foreach (var (pieceAt, bytes) in list)
                    bytes.CopyTo(data, (int)(pieceAt - from));
                return new NbdReply(true, 0, ck, data, 1, flags, from, Pieces: list.Count);
            }
            _pendingReads.Remove(ck);
            // The final chunk of a read that failed after some pieces: the pieces are dropped.
            _pieces.Remove(ck);
            switch (type)
            {
                case 0:
                    return new NbdReply(true, 0, ck, [], type, flags);
                case 1:
                    return new NbdReply(true, 0, ck, payload[8..], type, flags, BinaryPrimitives.ReadUInt64BigEndian(payload));
                case 5:
                    // BLOCK_STATUS: the context id and the descriptors, raw (BlockStatus decodes them).
                    return new NbdReply(true, 0, ck, payload, type, flags);
                case 0x8001:
                {
                    uint error = BinaryPrimitives.ReadUInt32BigEndian(payload);
                    int ml = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
                    return new NbdReply(true, error, ck, [], type, flags, Message: Encoding.UTF8.GetString(payload, 6, ml));
                }
                default:
                    throw new AssertFailedException($"unexpected structured chunk type 0x{type:x4}");
            }
        }
    }

    public async Task<NbdReply> RoundTripAsync(ushort type, ulong offset, uint length, byte[]? payload = null, ushort flags = 0)
    {
        ulong cookie = await SendRequestAsync(type, offset, length, payload, flags);
        var r = await ReadReplyAsync();
        Assert.AreEqual(cookie, r.Cookie, "reply to another request");
        return r;
    }

    public async Task WriteAsync(ulong offset, byte[] data, ushort flags = 0)
    {
        var r = await RoundTripAsync(CmdWrite, offset, (uint)data.Length, data, flags);
        Assert.AreEqual(0u, r.Error, $"WRITE at {offset}: {r.Message}");
    }

    public async Task<byte[]> ReadAsync(ulong offset, int length)
    {
        var r = await RoundTripAsync(CmdRead, offset, (uint)length);
        Assert.AreEqual(0u, r.Error, $"READ at {offset}: {r.Message}");
        if (Structured)
        {
            Assert.AreEqual(1, r.ChunkFlags & 1, "the only chunk of a read carries NBD_REPLY_FLAG_DONE");
            Assert.AreEqual(offset, r.DataOffset);
        }
        return r.Data;
    }

    /// <summary>The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then the queries.</summary>
    public static byte[] MetaData(string export, params string[] queries)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var qs = queries.Select(Encoding.UTF8.GetBytes).ToList();
        var b = new byte[8 + name.Length + qs.Sum(q => 4 + q.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)name.Length);
        name.CopyTo(b, 4);
        int at = 4 + name.Length;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at), (uint)qs.Count);
        at += 4;
        foreach (var q in qs)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at), (uint)q.Length);
            q.CopyTo(b, at + 4);
            at += 4 + q.Length;
        }
        return b;
    }

    /// <summary>Sends a meta-context option and reads its replies up to the final one (ACK or an error), which comes last.</summary>
    public async Task<List<OptionReply>> MetaContextAsync(uint option, string export, params string[] queries)
    {
        await SendOptionAsync(option, MetaData(export, queries));
        var replies = new List<OptionReply>();
        OptionReply r;
        do
            replies.Add(r = await ReadOptionReplyAsync());
        while (r.Type == RepMetaContext);
        return replies;
    }

    /// <summary>NBD_CMD_BLOCK_STATUS: the reply's context id and its (length, flags) descriptors.</summary>
    public async Task<(uint Context, List<(uint Length, uint Flags)> Extents)> BlockStatusAsync(ulong offset, uint length, ushort flags = 0)
    {
        var r = await RoundTripAsync(CmdBlockStatus, offset, length, flags: flags);
        Assert.AreEqual(0u, r.Error, $"BLOCK_STATUS at {offset}: {r.Message}");
        Assert.AreEqual((ushort)5, r.ChunkType, "a BLOCK_STATUS chunk");
        Assert.AreEqual(1, r.ChunkFlags & 1, "the only chunk carries NBD_REPLY_FLAG_DONE");
        var extents = new List<(uint, uint)>();
        for (int at = 4; at < r.Data.Length; at += 8)
            extents.Add((BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(at)), BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(at + 4))));
        return (BinaryPrimitives.ReadUInt32BigEndian(r.Data), extents);
    }

    public Task DisconnectAsync() => SendAsync(Request(CmdDisc, _cookie++, 0, 0));
}
