using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>
/// Large reads answered piece by piece (structured replies, plain sockets): the store hands each
/// chunk's verified bytes over from the device buffer it read them into (IReadSink), and the piece
/// goes out at once as an NBD_REPLY_TYPE_OFFSET_DATA chunk whose header is written into the buffer
/// just in front of the data, so header and data are one send and the data is never copied in this
/// process. The client receives the first chunk while the store still reads and verifies the rest,
/// and no thread is woken to send the reply: the thread that verified a piece sends it. A hole
/// inside the read is an NBD_REPLY_TYPE_OFFSET_HOLE chunk.
/// <para>
/// The store holds the chunk's shared read lock while it hands a piece over, so a piece never waits
/// for the socket or for the send lock (whose holder may be waiting for the socket): it is sent with
/// a non-blocking send when the send lock is free and nothing is queued before it. What the socket
/// does not take at once, and every piece that finds the lock taken or pieces queued, is copied into
/// payload buffers and queued; the send loop sends the queue, and everyone who holds the send lock
/// sends the queue before anything else, so a chunk partly on the socket is finished before another
/// reply starts. A client that stops reading thus holds only its own connection's payload (within
/// its budget), never a chunk lock.
/// </para>
/// <para>
/// The DONE flag goes on the chunk that completes the request's bytes on the socket (decided when
/// the chunk starts going out, in socket order); the request's slot and payload budget are released
/// when the store has finished with it and its last queued piece is on the socket or dropped
/// (<see cref="NbdRequest.Hold"/>). A read that fails after some pieces ends with its error chunk,
/// sent after its queued pieces (the spec allows it: the client fails the whole read). A broken
/// connection drops queued pieces, returning each buffer once.
/// </para>
/// </summary>
internal sealed partial class NbdConnection
{
    /// <summary>The header of an OFFSET_DATA chunk: structured header, then the offset.</summary>
    private const int OffsetDataHeaderSize = StructuredHeaderSize + 8;

    /// <summary>An OFFSET_HOLE chunk: structured header, offset, length.</summary>
    private const int HoleChunkSize = StructuredHeaderSize + 12;

    /// <summary>
    /// Reads up to this size are read into a payload buffer and answered whole: served on the receiving
    /// thread from the page cache (DeviceOptions.CachedIoLimit) they pay one copy and no hand-off, and
    /// answered in pieces they paid more (nbdcopy's 256 KiB reads, 4 connections, 12 copies each way
    /// alternately: 0.29 s of server CPU per copy against 0.25).
    /// </summary>
    private const int StreamMinimum = 512 << 10;

    /// <summary>A piece waiting for the socket: its data copied into a payload buffer (none for a hole).</summary>
    private readonly record struct QueuedPiece(NbdRequest Request, int At, int Length, NbdBuffer? Data);

    /// <summary>Pieces waiting for the socket, in the order they go out (locked on itself: pieces are queued without the send lock).</summary>
    private readonly Queue<QueuedPiece> _queued = new();

    // The chunk partly on the socket (under the send lock): what is left of its header (in _chunkHead)
    // and of its data (in _restBuffer, a payload buffer owned here), and whose it is. Nothing else
    // goes on the socket until both are empty.
    private readonly byte[] _chunkHead = new byte[32];
    private ReadOnlyMemory<byte> _restHead;
    private ReadOnlyMemory<byte> _restData;
    private NbdBuffer? _restBuffer;
    private NbdRequest? _restOwner;

    /// <summary>Queued in the reply channel to wake the send loop for queued pieces (never a reply; never released).</summary>
    private NbdRequest? _flushMarker;

    /// <summary>1 from the posting of a <see cref="_flushMarker"/> until the send loop, holding the send lock, takes it from the channel.</summary>
    private int _wakePosted;

    /// <summary>
    /// Whether a READ is answered piece by piece: a structured reply on a plain socket, larger than
    /// <see cref="StreamMinimum"/>, across chunks (a read within one chunk is one device read and one
    /// piece: it gains nothing).
    /// </summary>
    private bool StreamsRead(in NbdRequestHeader h, NbdExport x)
    {
        if (h.Type != CmdRead || !_structured || _tls != null || h.Length <= StreamMinimum)
            return false;
        long cs = x.ChunkSize;
        return cs > 0 && (long)h.Offset / cs != ((long)h.Offset + h.Length - 1) / cs;
    }

    /// <summary>Bytes [at, at + n) of a streamed read: <c>buffer[headroom..]</c>. Returns once the store may reuse the buffer (never waits).</summary>
    internal ValueTask SendPieceAsync(NbdRequest r, int at, Memory<byte> buffer, int headroom)
    {
        Piece(r, at, buffer, headroom, 0);
        return ValueTask.CompletedTask;
    }

    /// <summary>Bytes [at, at + length) of a streamed read are zeroes (a hole chunk).</summary>
    internal ValueTask SendHoleAsync(NbdRequest r, int at, int length)
    {
        Piece(r, at, default, 0, length);
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// One piece of a streamed read (<paramref name="hole"/> > 0: that many bytes of zeroes). Runs on
    /// the thread that verified it, often the device poller, with the chunk's read lock held: sends
    /// what the socket takes now, copies and queues the rest, and never waits. A failed send marks the
    /// connection broken, as a failed reply does; its pieces are then dropped.
    /// </summary>
    private void Piece(NbdRequest r, int at, Memory<byte> buffer, int headroom, int hole)
    {
        int length = hole > 0 ? hole : buffer.Length - headroom;
        System.Diagnostics.Debug.Assert(length > 0);
        r.Produced(length);
        if (_sendLock.Wait(0))
        {
            bool pending;
            try
            {
                if (!_broken)
                {
                    try
                    {
                        if (!TrySendQueued())
                            Queue(r, at, buffer, headroom, hole);
                        else
                            TrySendNew(r, at, buffer, headroom, hole);
                    }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
                    {
                        Broken();
                    }
                }
                if (_broken)
                    DropQueued();
                pending = HasQueued;
            }
            finally
            {
                _sendLock.Release();
            }
            if (pending)
                WakeSendLoop();
            return;
        }
        // The socket is someone else's now (perhaps waiting for the client): the piece waits its turn.
        Queue(r, at, buffer, headroom, hole);
        WakeSendLoop();
    }

    /// <summary>
    /// Copies a piece into a payload buffer and queues it; it holds its request until sent or dropped.
    /// On a broken connection it is dropped at once (whoever broke it drops what was queued before).
    /// </summary>
    private void Queue(NbdRequest r, int at, Memory<byte> buffer, int headroom, int hole)
    {
        if (_broken)
            return;
        NbdBuffer? copy = null;
        int length = hole;
        if (hole == 0)
        {
            length = buffer.Length - headroom;
            copy = Buffers.Rent(length);
            buffer.Span[headroom..].CopyTo(copy.GetSpan());
        }
        r.Hold();
        lock (_queued)
            _queued.Enqueue(new QueuedPiece(r, at, length, copy));
    }

    private int QueuedCount()
    {
        lock (_queued)
            return _queued.Count;
    }

    /// <summary>Lets the send loop send queued pieces (one marker in the channel at a time).</summary>
    private void WakeSendLoop()
    {
        if (Interlocked.Exchange(ref _wakePosted, 1) == 0 && !_replies.Writer.TryWrite(_flushMarker!))
            Volatile.Write(ref _wakePosted, 0);
    }

    /// <summary>
    /// Under the send lock: writes the header of the request's next chunk into <see cref="_chunkHead"/>,
    /// counting its bytes delivered in socket order; the chunk that completes the read carries DONE.
    /// Returns the header's size.
    /// </summary>
    private int ComposePieceHeader(NbdRequest r, int at, int length, bool hole)
    {
        r.Delivered += length;
        System.Diagnostics.Debug.Assert(r.Delivered <= r.Length);
        ushort flags = r.Delivered == r.Length ? ReplyFlagDone : (ushort)0;
        var s = _chunkHead.AsSpan();
        ulong offset = r.Offset + (ulong)at;
        if (hole)
        {
            NbdWire.WriteStructuredHeader(s, flags, ReplyTypeOffsetHole, r.Cookie, 12);
            BinaryPrimitives.WriteUInt64BigEndian(s[StructuredHeaderSize..], offset);
            BinaryPrimitives.WriteUInt32BigEndian(s[(StructuredHeaderSize + 8)..], (uint)length);
            return HoleChunkSize;
        }
        NbdWire.WriteStructuredHeader(s, flags, ReplyTypeOffsetData, r.Cookie, (uint)(8 + length));
        BinaryPrimitives.WriteUInt64BigEndian(s[StructuredHeaderSize..], offset);
        return OffsetDataHeaderSize;
    }

    /// <summary>
    /// Under the send lock, nothing queued: sends the piece from the store's buffer without waiting
    /// (header and data one send when the headroom holds the header); what the socket does not take
    /// is copied into a payload buffer as the chunk in progress.
    /// </summary>
    private void TrySendNew(NbdRequest r, int at, Memory<byte> buffer, int headroom, int hole)
    {
        int length = hole > 0 ? hole : buffer.Length - headroom;
        int head = ComposePieceHeader(r, at, length, hole > 0);
        int sent;
        ReadOnlySpan<byte> data = hole > 0 ? default : buffer.Span[headroom..];
        if (hole == 0 && headroom >= head)
        {
            var chunk = buffer.Span[(headroom - head)..];
            _chunkHead.AsSpan(0, head).CopyTo(chunk);
            sent = SendNow(chunk, default);
        }
        else
        {
            sent = SendNow(_chunkHead.AsSpan(0, head), data);
        }
        if (sent == head + data.Length)
            return;
        // The socket is full: the rest of this chunk goes first, from a copy, when the socket has room.
        int headSent = Math.Min(sent, head);
        _restHead = _chunkHead.AsMemory(headSent, head - headSent);
        var rest = data[(sent - headSent)..];
        if (!rest.IsEmpty)
        {
            _restBuffer = Buffers.Rent(rest.Length);
            rest.CopyTo(_restBuffer.GetSpan());
            _restData = _restBuffer.Slice(rest.Length);
        }
        _restOwner = r;
        r.Hold();
    }

    /// <summary>
    /// Under the send lock: sends the chunk in progress and the queued pieces without waiting. Returns
    /// true when nothing is left (the socket is free for new chunks and replies).
    /// </summary>
    private bool TrySendQueued()
    {
        while (true)
        {
            if (_restOwner == null && !StartQueued())
                return true;
            int sent = SendNow(_restHead.Span, _restData.Span);
            int headSent = Math.Min(sent, _restHead.Length);
            _restHead = _restHead[headSent..];
            _restData = _restData[(sent - headSent)..];
            if (!_restHead.IsEmpty || !_restData.IsEmpty)
                return false;
            FinishRest();
        }
    }

    /// <summary>
    /// Under the send lock, for the send loop and the receive loop (which hold no chunk lock): sends the
    /// chunk in progress and every queued piece, waiting for the socket as a reply does. A broken
    /// connection drops them instead.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendQueuedAsync()
    {
        while (true)
        {
            if (_broken)
            {
                DropQueued();
                return;
            }
            if (_restOwner == null && !StartQueued())
                return;
            try
            {
                while (!_restHead.IsEmpty)
                    _restHead = _restHead[await SendSomeAsync(_restHead).ConfigureAwait(false)..];
                while (!_restData.IsEmpty)
                    _restData = _restData[await SendSomeAsync(_restData).ConfigureAwait(false)..];
                FinishRest();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                Broken();
            }
        }
    }

    /// <summary>Whether a chunk is in progress or pieces are queued (under the send lock).</summary>
    private bool HasQueued => _restOwner != null || QueuedCount() > 0;

    /// <summary>Makes the first queued piece the chunk in progress, its header composed now. False when none is queued.</summary>
    private bool StartQueued()
    {
        QueuedPiece p;
        lock (_queued)
        {
            if (!_queued.TryDequeue(out p))
                return false;
        }
        int head = ComposePieceHeader(p.Request, p.At, p.Length, p.Data == null);
        _restHead = _chunkHead.AsMemory(0, head);
        _restBuffer = p.Data;
        _restData = p.Data != null ? p.Data.Slice(p.Length) : default;
        _restOwner = p.Request;
        return true;
    }

    /// <summary>The chunk in progress is on the socket (or dropped): its buffer goes back, its request is held no more.</summary>
    private void FinishRest()
    {
        var r = _restOwner!;
        if (_restBuffer != null)
            Buffers.Return(_restBuffer);
        _restBuffer = null;
        _restHead = default;
        _restData = default;
        _restOwner = null;
        Unhold(r);
    }

    /// <summary>Under the send lock, the connection broken: every queued piece and the chunk in progress are dropped, each buffer returned once.</summary>
    private void DropQueued()
    {
        if (_restOwner != null)
            FinishRest();
        while (true)
        {
            QueuedPiece p;
            lock (_queued)
            {
                if (!_queued.TryDequeue(out p))
                    return;
            }
            if (p.Data != null)
                Buffers.Return(p.Data);
            Unhold(p.Request);
        }
    }

    /// <summary>
    /// The connection broke outside the send lock (<see cref="Abandon"/>): what is queued is dropped
    /// under the lock, here when it is free. Else its holder is sending (its send fails on the closed
    /// socket, and it drops the queue) or has just sent: the send loop is woken, even when a wake-up is
    /// posted already, to take the lock after it and drop what was queued meanwhile. Either way every
    /// request a piece held is released and the connection drains.
    /// </summary>
    private void DropQueuedBroken()
    {
        System.Diagnostics.Debug.Assert(_broken);
        if (_sendLock.Wait(0))
        {
            try
            {
                DropQueued();
            }
            finally
            {
                _sendLock.Release();
            }
            return;
        }
        if (_replies is { } replies && _flushMarker is { } marker)
            replies.Writer.TryWrite(marker);
    }

    /// <summary>A queued piece is done with: the last one releases a request the store has finished with.</summary>
    private void Unhold(NbdRequest r)
    {
        if (r.Unhold())
            ReleaseNow(r);
    }

    // ---- non-blocking send (plain sockets only; streamed reads are never TLS) ----

    private const int MsgDontWait = 0x40, MsgNoSignal = 0x4000;
    private const int EIntr = 4, EAgain = 11;

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static unsafe partial nint SendMsg(int fd, MsgHdr* msg, int flags);

    /// <summary>
    /// Sends <paramref name="a"/> then <paramref name="b"/> as far as the socket takes them now
    /// (MSG_DONTWAIT: never waits). Returns the bytes sent, 0 when the socket is full; throws when the
    /// connection failed. Under the send lock (no socket send of .NET's is pending meanwhile).
    /// </summary>
    private unsafe int SendNow(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        if (a.IsEmpty && b.IsEmpty)
            return 0;
        var handle = _socket.SafeHandle;
        bool added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            fixed (byte* pa = a)
            fixed (byte* pb = b)
            {
                var iov = stackalloc IoVec[2];
                int n = 0;
                if (!a.IsEmpty)
                    iov[n++] = new IoVec { Base = pa, Length = (nuint)a.Length };
                if (!b.IsEmpty)
                    iov[n++] = new IoVec { Base = pb, Length = (nuint)b.Length };
                var msg = new MsgHdr { Iov = iov, IovLength = (nuint)n };
                int fd = (int)handle.DangerousGetHandle();
                while (true)
                {
                    nint sent = SendMsg(fd, &msg, MsgDontWait | MsgNoSignal);
                    if (sent >= 0)
                        return (int)sent;
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == EAgain)
                        return 0;
                    if (errno != EIntr)
                        throw new IOException($"send failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");
                }
            }
        }
        finally
        {
            if (added)
                handle.DangerousRelease();
        }
    }
}
