using Strata.Engine.Pools;
using Strata.Engine.Store;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>
/// One request in flight, reused by its connection for the next one. It issues the image
/// operation and registers a cached continuation on the returned task (no async state
/// machine of its own, so nothing is allocated here per request), maps a failure to an NBD
/// error, and hands itself to the connection's send loop. The continuation usually runs on the
/// device poller: it must never block, and does nothing but that hand-off.
/// </summary>
internal sealed class NbdRequest : IReadSink
{
    /// <summary>What NO_HOLE write-zeroes write from: zeroes, never written to.</summary>
    private static readonly byte[] Zeroes = new byte[1 << 20];

    private readonly NbdConnection _conn;
    private readonly Action _onIoDone;
    /// <summary>The operation in flight: a ValueTask (a pooled one for reads and writes), awaited exactly once, by <see cref="OnIo"/>.</summary>
    private ValueTask _io;

    public NbdRequest(NbdConnection conn)
    {
        _conn = conn;
        _onIoDone = OnIoDone;
    }

    public ushort Type { get; private set; }
    public ushort Flags { get; private set; }
    public ulong Cookie { get; private set; }
    public ulong Offset { get; private set; }
    public uint Length { get; private set; }

    /// <summary>Payload bytes counted against the connection's in-flight budget.</summary>
    public int Bytes { get; private set; }

    /// <summary>The payload: WRITE data in, READ data out (from the server's buffer pool).</summary>
    public NbdBuffer? Buffer { get; set; }

    /// <summary>
    /// A READ answered piece by piece as the store verifies its chunks (structured replies): each
    /// piece goes out as an OFFSET_DATA or OFFSET_HOLE chunk from the store's own device buffer, or
    /// from a copy queued when the socket cannot take it at once, the last with
    /// NBD_REPLY_FLAG_DONE; no <see cref="Buffer"/> (NbdConnection.ReadPieces.cs).
    /// </summary>
    public bool Streamed { get; private set; }

    /// <summary>Bytes of a streamed read whose chunk has started on the socket (under the connection's send lock): the one completing it carries DONE.</summary>
    public int Delivered { get; set; }

    /// <summary>Bytes of a streamed read the store has handed over (sent, queued or dropped).</summary>
    private int _produced;

    /// <summary>
    /// What keeps a streamed read from being released: 1 until its reply is over from the request's
    /// side (the store finished and any error chunk is out), plus one per piece queued for the socket.
    /// </summary>
    private int _hold;

    /// <summary>Answers this READ piece by piece (before <see cref="Start"/>).</summary>
    public void StreamReply()
    {
        Streamed = true;
        _hold = 1;
    }

    /// <summary>The store handed <paramref name="length"/> more bytes of a streamed read over.</summary>
    public void Produced(int length) => Interlocked.Add(ref _produced, length);

    /// <summary>A piece of this streamed read waits for the socket.</summary>
    public void Hold() => Interlocked.Increment(ref _hold);

    /// <summary>One hold is over; true when it was the last (the request is released now).</summary>
    public bool Unhold() => Interlocked.Decrement(ref _hold) == 0;

    /// <summary>
    /// Descriptors a BLOCK_STATUS reply carries at most: 128 runs of chunks (a reply of about 1 KiB);
    /// the client asks again from where the reply stopped.
    /// </summary>
    public const int MaxRuns = 128;

    private AllocationRun[]? _runs;

    /// <summary>A BLOCK_STATUS answer: the runs found (in a per-request array reused for every later one).</summary>
    public ReadOnlyMemory<AllocationRun> Runs { get; private set; }

    public uint Error { get; private set; }
    public string? Message { get; private set; }

    public void Init(in NbdRequestHeader h, int bytes)
    {
        Type = h.Type;
        Flags = h.Flags;
        Cookie = h.Cookie;
        Offset = h.Offset;
        Length = h.Length;
        Bytes = bytes;
    }

    public void Reset()
    {
        Buffer = null;
        Streamed = false;
        Delivered = 0;
        _produced = 0;
        _hold = 0;
        Runs = default;
        Error = 0;
        Message = null;
        _io = default;
    }

    /// <summary>Answers without doing anything (a request refused by validation).</summary>
    public void Complete(uint error, string? message)
    {
        Error = error;
        Message = message;
        _conn.OnCompleted(this);
    }

    public void Start()
    {
        if (Type == CmdBlockStatus)
        {
            BlockStatus(_conn.Export);
            return;
        }
        if (Type == CmdWriteZeroes && (Flags & (CmdFlagNoHole | CmdFlagFastZero)) == (CmdFlagNoHole | CmdFlagFastZero))
        {
            // Zeroes that must stay allocated are written like any data: no faster than a WRITE, which
            // FAST_ZERO asks to hear at once (the client then writes the zeroes itself, or skips them).
            Complete(ENotSup, "WRITE_ZEROES with NO_HOLE writes the zeroes: it is not faster than a WRITE (FAST_ZERO)");
            return;
        }
        ValueTask io;
        try
        {
            io = Issue(_conn.Export);
        }
        catch (Exception e)
        {
            Fail(e);
            return;
        }
        Await(io);
    }

    private ValueTask Issue(NbdExport x)
    {
        var io = x.Io;
        long offset = (long)Offset;
        if (Length == 0 && Type != CmdFlush)
            return ValueTask.CompletedTask;
        return Type switch
        {
            CmdRead => Streamed ? io.ReadAsync(offset, (int)Length, this) : io.ReadAsync(offset, Buffer!.Slice((int)Length)),
            // Without FUA a write is writeback, like a disk's volatile cache: durable at the next FLUSH.
            CmdWrite => io.WriteAsync(offset, Buffer!.Slice((int)Length), durable: Durable),
            CmdFlush => x.ReadOnly ? ValueTask.CompletedTask : new ValueTask(io.FlushAsync()),
            CmdTrim => new ValueTask(io.TrimAsync(offset, Length)),
            // Without NO_HOLE the range may become a hole: trimmed chunks read back as zeroes.
            CmdWriteZeroes => new ValueTask((Flags & CmdFlagNoHole) != 0 ? WriteZeroesAsync(io, offset, Length, Durable) : io.TrimAsync(offset, Length)),
            _ => throw new InvalidOperationException($"{CommandName(Type)} passed validation"),
        };
    }

    /// <summary>BLOCK_STATUS of base:allocation: the image's chunk map, answered at once (no device I/O).</summary>
    private void BlockStatus(NbdExport x)
    {
        _runs ??= new AllocationRun[MaxRuns];
        int n;
        try
        {
            // REQ_ONE: one descriptor, no longer than asked.
            n = x.Io.Allocation((long)Offset, Length, (Flags & CmdFlagReqOne) != 0 ? _runs.AsSpan(0, 1) : _runs);
        }
        catch (Exception e)
        {
            Fail(e);
            return;
        }
        Runs = _runs.AsMemory(0, n);
        _conn.OnCompleted(this);
    }

    ValueTask IReadSink.DataAsync(int at, Memory<byte> buffer, int headroom) => _conn.SendPieceAsync(this, at, buffer, headroom);

    ValueTask IReadSink.HoleAsync(int at, int length) => _conn.SendHoleAsync(this, at, length);

    /// <summary>A write with FUA, or any write when the server's write cache is off (writethrough).</summary>
    private bool Durable => (Flags & CmdFlagFua) != 0 || !_conn.Options.WriteCache;

    private static async Task WriteZeroesAsync(IImageIo io, long offset, long length, bool fua)
    {
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(Zeroes.Length, length - done);
            await io.WriteAsync(offset + done, Zeroes.AsMemory(0, n), durable: fua).ConfigureAwait(false);
            done += n;
        }
    }

    private void Await(ValueTask io)
    {
        if (io.IsCompleted)
        {
            OnIo(io);
            return;
        }
        _io = io;
        io.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onIoDone);
    }

    private void OnIoDone()
    {
        var io = _io;
        _io = default;
        OnIo(io);
    }

    /// <summary>Takes the completed operation's outcome: the one await of its ValueTask (a pooled one is reused after it).</summary>
    private void OnIo(ValueTask io)
    {
        try
        {
            io.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            if (Streamed && Volatile.Read(ref _produced) == Length)
            {
                // Every byte went to the connection verified and the DONE chunk is (or will be) on the
                // socket: an error chunk after it would break the stream. What failed later (a repair of
                // a bad replica) is the store's to report.
                _conn.OnCompleted(this);
                return;
            }
            Fail(e);
            return;
        }
        if (Streamed && Volatile.Read(ref _produced) != Length)
        {
            Complete(EIo, $"read of {Length} bytes at offset {Offset} handed over {Volatile.Read(ref _produced)} bytes");
            return;
        }
        // FUA: a write with it was a durable write, and a trim is always durable: nothing more to wait for.
        _conn.OnCompleted(this);
    }

    private void Fail(Exception e)
    {
        if (e is not (StoreException or IOException or ObjectDisposedException or OperationCanceledException))
            _conn.OnUnexpectedError(e);
        Complete(ErrorOf(e), e.Message);
    }

    /// <summary>The NBD error a failed image operation maps to.</summary>
    public static uint ErrorOf(Exception e) => e switch
    {
        InvalidRequestException => EInval,
        PoolReadOnlyException => EPerm,
        NoSpaceException => ENoSpc,
        ObjectDisposedException or OperationCanceledException => EShutdown,
        _ => EIo,
    };
}
