using System.Net.Sockets;
using System.Threading.Channels;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>
/// Transmission: one receive loop parses requests from a buffered socket and starts each
/// at once (up to MaxInFlight per connection, MaxInFlightBytes of payload, and the server's
/// engine-wide payload budget, <see cref="NbdPayloadBudget"/>); each request
/// completes on its own. A request that completes on the receive loop's own thread while it
/// parses (a read the page cache held, an error) is answered by the receive loop itself, in
/// one send for all of them before it next waits; one completed elsewhere (on the device's
/// polling thread) queues its reply for the send loop, which batches whatever is ready into
/// one send. One lock makes them take turns on the socket. Nothing here allocates per request:
/// request objects are reused, payloads come from <see cref="NbdBufferPool"/>, and socket
/// operations and the reply channel complete through reusable awaitables.
/// </summary>
internal sealed partial class NbdConnection
{
    private const int ReceiveBufferSize = 128 << 10;
    private const int SendBufferSize = 128 << 10;

    /// <summary>Read payloads up to this size are copied into the send buffer with their header (one send for many replies).</summary>
    private const int CopyLimit = 64 << 10;

    /// <summary>
    /// Read replies the receive loop completed itself are sent once they hold this many bytes of data, not
    /// only before it next waits for the socket: a burst of large reads (nbdcopy's 256 KiB, up to 64 per
    /// connection) otherwise filled megabytes of payload buffers from the page cache before the first send,
    /// which then copied them into the socket from beyond the core's 512 KiB L2 (nbdcopy out of Strata:
    /// 0.24-0.31 s of server CPU per copy before, 0.18-0.21 s after; perf/README.md, "Session 26").
    /// Small reads still go out together (32 of 4 KiB are 128 KiB).
    /// </summary>
    private const int InlineSendBytes = 256 << 10;

    /// <summary>Payload remainders at least this large are received straight into the request's buffer.</summary>
    private const int DirectReceiveLimit = 32 << 10;

    private readonly object _sync = new();
    private readonly Stack<NbdRequest> _free = new();
    private readonly SingleWaiterSignal _slotFreed;
    private Channel<NbdRequest> _replies;
    /// <summary>Whoever writes replies to the socket holds it: the send loop, or the receive loop for its own.</summary>
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    /// <summary>Replies completed on the receive loop's thread during its current segment (only that thread touches them).</summary>
    private ReplyList _inline = new(0);
    /// <summary>The managed thread the receive loop runs on between two awaits, or 0 while it waits.</summary>
    private int _inlineThread;
    private TaskCompletionSource? _drained;
    private int _inFlight;
    private long _inFlightBytes;
    private byte[] _recv;
    private int _rs, _re;
    private byte[] _send;
    private int _sendLen;
    private volatile bool _broken;
    private volatile string? _revokeReason;
    /// <summary>Set when the server gave up on the connection at its shutdown deadline (<see cref="Abandon"/>).</summary>
    private volatile string? _abandonReason;

    private async Task<string> TransmitAsync()
    {
        _recv = GC.AllocateUninitializedArray<byte>(ReceiveBufferSize);
        _send = GC.AllocateUninitializedArray<byte>(SendBufferSize);
        WidenUnixSendBuffer(_socket);
        LoadCarry();
        // Requests complete on the device poller (NbdExport's image completes inline), which must only
        // queue the reply: the send loop is woken on the thread pool, once per batch of replies.
        _replies = Channel.CreateUnbounded<NbdRequest>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = false, AllowSynchronousContinuations = false });
        _flushMarker ??= new NbdRequest(this);
        _wakePosted = 0;
        _inline = new ReplyList(Options.MaxInFlight);
        var sender = Task.Run(SendLoopAsync);
        _worker = null;
        string why;
        try
        {
            why = await ReceiveLoopAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            why = _abandonReason != null ? $"abandoned: {_abandonReason}"
                : _revokeReason != null ? $"revoked: {_revokeReason}"
                : $"connection lost: {e.Message}";
        }
        finally
        {
            // Out of the payload budget's line whatever ended the loop: a connection left first in it would stall every other.
            _server.Budget.Leave(this);
            // No more large writes: the worker starts those queued, then its thread ends.
            _worker?.End();
        }
        // Replies the receive loop had not sent yet go to the send loop.
        _inlineThread = 0;
        HandOff(_inline);
        // Requests in flight finish and their replies go out (or are dropped if the socket broke).
        await WhenDrained().ConfigureAwait(false);
        _replies.Writer.TryComplete();
        await sender.ConfigureAwait(false);
        return why;
    }

    // The loops await socket operations directly (no async helper per request): a helper's state
    // machine would be one more object per request, and the pooled builder does not reliably
    // avoid that when the caller and the completion run on different threads. ReceiveSomeAsync and
    // SendSomeAsync are not async methods: on a plain connection they return the socket's own
    // awaitable, and only a TLS connection goes through SslStream.

    /// <summary>One receive: the socket's, or the TLS stream's when TLS was started.</summary>
    private ValueTask<int> ReceiveSomeAsync(Memory<byte> buffer) =>
        _tls is { } tls ? tls.ReadAsync(buffer) : _socket.ReceiveAsync(buffer, SocketFlags.None);

    /// <summary>One send (perhaps partial on a plain socket; whole through TLS).</summary>
    private ValueTask<int> SendSomeAsync(ReadOnlyMemory<byte> data) =>
        _tls is { } tls ? WriteTlsAsync(tls, data) : _socket.SendAsync(data, SocketFlags.None);

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<int> WriteTlsAsync(System.Net.Security.SslStream tls, ReadOnlyMemory<byte> data)
    {
        await tls.WriteAsync(data).ConfigureAwait(false);
        return data.Length;
    }

    private async Task<string> ReceiveLoopAsync()
    {
        _inlineThread = Environment.CurrentManagedThreadId;
        while (true)
        {
            // A reply could not be sent (the client is gone, or was cut off): requests still
            // buffered are not started, their replies could never go out.
            if (_broken)
                return _abandonReason != null ? $"abandoned: {_abandonReason}" : "connection lost: a reply could not be sent";
            // A hot swap parks the connection here, between requests (NbdConnection.Handoff.cs).
            if (_pausing)
                return Paused();
            while (_re - _rs < RequestHeaderSize)
            {
                CompactReceiveBuffer();
                // From here to the next parse the thread may serve other connections: nothing completed
                // on it is this loop's any more.
                _inlineThread = 0;
                if (_inline.Count > 0)
                    await SendRepliesAsync(_inline).ConfigureAwait(false);
                if (_pausing)
                    return Paused();
                int got;
                try
                {
                    // Only this wait, between requests, can be cut short by a pause: nothing is half read here.
                    got = _tls is { } tls ? await tls.ReadAsync(_recv.AsMemory(_re)).ConfigureAwait(false)
                        : await _socket.ReceiveAsync(_recv.AsMemory(_re), SocketFlags.None, _pauseCts.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (_pausing)
                {
                    return Paused();
                }
                _inlineThread = Environment.CurrentManagedThreadId;
                if (got == 0)
                {
                    if (_revokeReason != null)
                        return $"revoked: {_revokeReason}";
                    return _re == _rs ? "client closed the connection" : "client closed the connection in the middle of a request header";
                }
                _re += got;
            }
            var h = NbdRequestHeader.Read(_recv.AsSpan(_rs, RequestHeaderSize));
            _rs += RequestHeaderSize;
            if (h.Magic != RequestMagic)
            {
                Abort();
                return Violation(NbdParse.RequestViolation(h, Options.MaxPayload)!);
            }
            if (h.Type == CmdDisc)
                return "client disconnected (NBD_CMD_DISC)";

            var x = _export!;
            uint error = NbdParse.CheckRequest(h, x.Name, x.Size, x.ReadOnly, _structured, _blockStatus, Options.MaxPayload, out string? message);
            bool payloadIn = h.Type == CmdWrite;
            if (payloadIn && h.Length > Options.MaxPayload)
            {
                // The payload cannot be skipped safely at any size: answer, then close once the reply is out.
                NbdRequest? r0;
                while ((r0 = TryAcquire(0)) == null)
                    await WaitForSlotAsync().ConfigureAwait(false);
                r0.Init(h, 0);
                string what = NbdParse.RequestViolation(h, Options.MaxPayload)!;
                r0.Complete(EInval, what);
                return Violation(what);
            }
            if (error == 0 && _revokeReason is { } goingAway)
            {
                // Answered at once, without taking payload budget (a write's payload is dropped).
                error = EShutdown;
                message = $"the export is going away: {goingAway}";
            }
            // A refused write's payload is read and dropped through the receive buffer: no payload budget either.
            int bytes = (payloadIn || h.Type == CmdRead) && error == 0 ? (int)h.Length : 0;
            NbdRequest? r;
            while ((r = TryAcquire(bytes)) == null)
                await WaitForSlotAsync().ConfigureAwait(false);
            r.Init(h, bytes);
            if (payloadIn && h.Length > 0)
            {
                // The payload: what is buffered already, then straight from the socket into the
                // request's buffer when much is left, else through the receive buffer. Refused
                // writes still have their payload read (and dropped) to stay in step.
                int length = (int)h.Length;
                var dest = error == 0 ? (r.Buffer = Buffers.Rent(length)).Slice(length) : Memory<byte>.Empty;
                int done = TakeBuffered(dest, length);
                if (done < length && _inline.Count > 0)
                {
                    // The payload may take a while: replies ready go now, sent from here when the
                    // socket is free. Handing them to the send loop instead woke a thread-pool
                    // thread per large write, which then spun idle (most of its CPU).
                    _inlineThread = 0;
                    await SendRepliesAsync(_inline).ConfigureAwait(false);
                }
                while (done < length)
                {
                    int got;
                    _inlineThread = 0;
                    SetPayloadLowWater(length - done);
                    if (!dest.IsEmpty && length - done >= DirectReceiveLimit)
                    {
                        got = await ReceiveSomeAsync(dest[done..]).ConfigureAwait(false);
                        done += got;
                    }
                    else
                    {
                        CompactReceiveBuffer();
                        got = await ReceiveSomeAsync(_recv.AsMemory(_re)).ConfigureAwait(false);
                        _re += got;
                        done += TakeBuffered(dest.IsEmpty ? dest : dest[done..], length - done);
                    }
                    _inlineThread = Environment.CurrentManagedThreadId;
                    if (got == 0)
                    {
                        Release(r);
                        return $"client closed the connection in the middle of a {length}-byte WRITE payload ({done} bytes received)";
                    }
                }
                SetPayloadLowWater(0);
            }
            if (error == 0 && _revokeReason is { } revoked)
            {
                error = EShutdown;
                message = $"the export is going away: {revoked}";
            }
            if (error != 0)
            {
                r.Complete(error, message);
                continue;
            }
            if (StreamsRead(h, x))
                r.StreamReply();
            else if (h.Type == CmdRead && h.Length > 0)
                r.Buffer = Buffers.Rent((int)h.Length);
            // A large write goes to the worker: its image write (a page-cache copy, CRC32C) then runs
            // while this loop receives (and decrypts) the next payload, on the machine's other core.
            if (payloadIn && error == 0 && Options.ParallelPayloadBytes > 0 && h.Length >= Options.ParallelPayloadBytes)
            {
                (_worker ??= new PayloadWorker(this)).Queue(r);
                continue;
            }
            r.Start();
            // Read replies completed here go out once they hold InlineSendBytes, while their bytes are still in
            // this core's cache.
            if (_inline.Bytes >= InlineSendBytes)
            {
                _inlineThread = 0;
                await SendRepliesAsync(_inline).ConfigureAwait(false);
                _inlineThread = Environment.CurrentManagedThreadId;
            }
        }
    }

    /// <summary>What a Unix socket's send buffer is asked to hold: a 1 MiB read reply and more (the kernel caps it at net.core.wmem_max).</summary>
    private const int UnixSendBuffer = 4 << 20;

    /// <summary>
    /// A Unix socket's send buffer is 208 KiB by default, so a 256 KiB or 1 MiB read reply took
    /// several sends, each after the client had read some of the last (an epoll wait and a wake-up
    /// between). With room for whole replies, one send each. Where the kernel refuses, sends stay
    /// as they were. TCP sockets keep their autotuning (setting SO_SNDBUF would turn it off).
    /// </summary>
    internal static void WidenUnixSendBuffer(Socket socket)
    {
        if (socket.AddressFamily != AddressFamily.Unix || socket.SendBufferSize >= UnixSendBuffer)
            return;
        try
        {
            socket.SendBufferSize = UnixSendBuffer;
        }
        catch (SocketException)
        {
        }
    }

    // ---- buffered receive ----

    /// <summary>SO_RCVLOWAT while much of a payload is still to come: a receive waits for this many bytes.</summary>
    private const int PayloadLowWater = 128 << 10;

    /// <summary>What SslStream may hold of a payload beyond the transport's buffer (its own buffer: a record or two), bounded generously.</summary>
    private const int TlsHeldBytes = 128 << 10;

    private bool _lowWater;

    /// <summary>
    /// While a large payload arrives on a TCP socket, a receive that finds the socket empty waits
    /// until <see cref="PayloadLowWater"/> bytes are queued (SO_RCVLOWAT) instead of waking for every
    /// segment: a 1 MiB write over TLS took about 38 receives and 16 epoll waits. Set only while at
    /// least that many bytes of this payload must still come from the socket (what the TLS layers
    /// may hold already does not count), so the wait always ends; back to 1 byte before the next
    /// header. Linux wakes epoll by the same mark. Where the option fails, receives stay as they were.
    /// </summary>
    private void SetPayloadLowWater(int payloadLeft)
    {
        if (_socket.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
            return;
        long mustArrive = payloadLeft - (_tlsTransport != null ? _tlsTransport.Buffered + TlsHeldBytes : 0);
        bool on = mustArrive >= PayloadLowWater;
        if (on == _lowWater)
            return;
        const int SolSocket = 1, SoRcvLowat = 18;
        Span<byte> value = stackalloc byte[4];
        BitConverter.TryWriteBytes(value, on ? PayloadLowWater : 1);
        try
        {
            _socket.SetRawSocketOption(SolSocket, SoRcvLowat, value);
            _lowWater = on;
        }
        catch (SocketException)
        {
        }
    }

    /// <summary>Moves unread bytes to the front of the receive buffer, so a whole header or payload piece fits after them.</summary>
    private void CompactReceiveBuffer()
    {
        if (_rs == 0)
            return;
        Buffer.BlockCopy(_recv, _rs, _recv, 0, _re - _rs);
        _re -= _rs;
        _rs = 0;
    }

    /// <summary>Consumes up to <paramref name="max"/> buffered bytes into <paramref name="dest"/> (or drops them when it is empty).</summary>
    private int TakeBuffered(Memory<byte> dest, int max)
    {
        int n = Math.Min(_re - _rs, max);
        if (!dest.IsEmpty)
            _recv.AsSpan(_rs, n).CopyTo(dest.Span);
        _rs += n;
        return n;
    }

    // ---- request slots ----

    private NbdRequest? TryAcquire(int bytes)
    {
        lock (_sync)
        {
            if (_inFlight >= Options.MaxInFlight || (_inFlight > 0 && _inFlightBytes + bytes > Options.MaxInFlightBytes))
                return null;
            // Engine-wide: a connection that does not fit queues there and is woken in its turn.
            if (bytes > 0 && !_server.Budget.TryTake(this, bytes))
                return null;
            _inFlight++;
            _inFlightBytes += bytes;
            return _free.Count > 0 ? _free.Pop() : new NbdRequest(this);
        }
    }

    /// <summary>
    /// Returns a request's buffer and its slot; called once its reply is out (or dropped). A streamed
    /// read with pieces still queued is released by the last of them (NbdConnection.ReadPieces.cs).
    /// </summary>
    private void Release(NbdRequest r)
    {
        if (r.Streamed && !r.Unhold())
            return;
        ReleaseNow(r);
    }

    private void ReleaseNow(NbdRequest r)
    {
        if (r.Buffer != null)
        {
            Buffers.Return(r.Buffer);
            r.Buffer = null;
        }
        TaskCompletionSource? drained = null;
        if (r.Bytes > 0)
            _server.Budget.Give(r.Bytes);
        lock (_sync)
        {
            _inFlight--;
            _inFlightBytes -= r.Bytes;
            r.Reset();
            _free.Push(r);
            if (_inFlight == 0)
            {
                drained = _drained;
                _drained = null;
            }
        }
        _slotFreed.Set();
        drained?.SetResult();
    }

    /// <summary>Completes when no request is in flight (immediately if none is).</summary>
    private Task WhenDrained()
    {
        lock (_sync)
        {
            if (_inFlight == 0)
                return Task.CompletedTask;
            return (_drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
    }

    /// <summary>
    /// A request has its result: on the receive loop's thread (it completed while the loop started
    /// it) the loop sends the reply before it next waits; elsewhere it is queued for the send loop.
    /// </summary>
    internal void OnCompleted(NbdRequest r)
    {
        if (r.Streamed && r.Error == 0)
        {
            // A streamed read whose pieces are all handed over: nothing more to send but its queued
            // pieces, whose last releases it.
            Release(r);
            return;
        }
        int thread = Environment.CurrentManagedThreadId;
        if (thread == Volatile.Read(ref _inlineThread))
        {
            _inline.Add(r);
            return;
        }
        if (_worker is { } w && thread == w.ThreadId)
        {
            w.Done.Add(r);
            return;
        }
        if (!_replies.Writer.TryWrite(r))
            Release(r);
    }

    /// <summary>Waits for a free request slot; the receive loop's own replies go out first (they hold slots).</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WaitForSlotAsync()
    {
        _inlineThread = 0;
        if (_inline.Count > 0)
            await SendRepliesAsync(_inline).ConfigureAwait(false);
        await _slotFreed.WaitAsync().ConfigureAwait(false);
        if (_abandonReason != null)
            throw new ObjectDisposedException(nameof(NbdConnection), "the connection was abandoned");
        _inlineThread = Environment.CurrentManagedThreadId;
    }

    /// <summary>The engine-wide payload budget has room for this connection's next request (it is first in line).</summary>
    internal void WakeForBudget() => _slotFreed.Set();

    /// <summary>
    /// Replies completed on one thread and not yet sent (the receive loop's, or the large-write
    /// worker's); only that thread touches them.
    /// </summary>
    private sealed class ReplyList(int capacity)
    {
        public readonly NbdRequest[] Items = new NbdRequest[capacity];
        public int Count;
        public long Bytes;

        public void Add(NbdRequest r)
        {
            Items[Count++] = r;
            Bytes += r.Type == CmdRead ? r.Length : 0;
        }
    }

    /// <summary>
    /// The thread that owns <paramref name="replies"/> (the receive loop, or the large-write worker)
    /// answers them: itself when the socket is free (no hand-off to another thread), else through the
    /// send loop, which holds the socket now.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendRepliesAsync(ReplyList replies)
    {
        if (!_sendLock.Wait(0))
        {
            HandOff(replies);
            return;
        }
        try
        {
            await SendBatchAsync(replies.Items, replies.Count).ConfigureAwait(false);
            replies.Count = 0;
            replies.Bytes = 0;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>Queues the unsent replies for the send loop and empties the list.</summary>
    private void HandOff(ReplyList replies)
    {
        for (int i = 0; i < replies.Count; i++)
        {
            if (!_replies.Writer.TryWrite(replies.Items[i]))
                Release(replies.Items[i]);
            replies.Items[i] = null!;
        }
        replies.Count = 0;
        replies.Bytes = 0;
    }

    internal void OnUnexpectedError(Exception e) => Options.Log.UnexpectedError(Id, Peer, e);

    // ---- replies ----

    private async Task SendLoopAsync()
    {
        var reader = _replies.Reader;
        var batch = new NbdRequest[Options.MaxInFlight];
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            await _sendLock.WaitAsync().ConfigureAwait(false);
            try
            {
                if (_server.SendLoopHolding is { } hook)
                    await hook().ConfigureAwait(false);
                // Replies waiting never outnumber the request slots (markers are not replies).
                int n = 0;
                while (n < batch.Length && reader.TryRead(out var r))
                {
                    if (r != _flushMarker)
                    {
                        batch[n++] = r;
                        continue;
                    }
                    // Cleared as the marker is taken: pieces queued from here on post another, those queued
                    // before go out in SendBatchAsync. Cleared when the lock was taken instead, a marker
                    // posted between the two was taken with the wake-up left counted as posted, and no
                    // later piece woke the loop: a read's last pieces stayed queued for good.
                    Interlocked.Exchange(ref _wakePosted, 0);
                }
                await SendBatchAsync(batch, n).ConfigureAwait(false);
            }
            finally
            {
                _sendLock.Release();
            }
        }
    }

    /// <summary>
    /// Under the send lock: writes the replies of batch[0..count) to the socket, as few sends as the
    /// buffer allows, and releases each request once its reply is on the socket (or the socket broke),
    /// so a drained connection has sent every reply.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendBatchAsync(NbdRequest[] batch, int count)
    {
        // Pieces of streamed reads queued before these replies go first: a chunk partly on the socket
        // is finished before another starts, and a read's error chunk (DONE) follows its pieces.
        if (_broken || HasQueued)
            await SendQueuedAsync().ConfigureAwait(false);
        // batch[sentUpTo..i) are in the send buffer, not yet on the socket.
        int sentUpTo = 0;
        for (int i = 0; i < count; i++)
        {
            var r = batch[i];
            if (_broken)
                continue;
            try
            {
                int need = ReplyBytes(r, out bool dataAfter);
                if (_sendLen + need > _send.Length)
                {
                    for (int sent = 0; sent < _sendLen;)
                        sent += await SendSomeAsync(_send.AsMemory(sent, _sendLen - sent)).ConfigureAwait(false);
                    _sendLen = 0;
                    ReleaseRange(batch, ref sentUpTo, i);
                }
                ComposeReply(r, dataAfter);
                if (dataAfter)
                {
                    // A large read: its header goes with what is buffered, then the data from the request's own buffer.
                    for (int sent = 0; sent < _sendLen;)
                        sent += await SendSomeAsync(_send.AsMemory(sent, _sendLen - sent)).ConfigureAwait(false);
                    _sendLen = 0;
                    var data = r.Buffer!.Slice((int)r.Length);
                    for (int sent = 0; sent < data.Length;)
                        sent += await SendSomeAsync(data[sent..]).ConfigureAwait(false);
                    ReleaseRange(batch, ref sentUpTo, i + 1);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                Broken();
            }
        }
        if (!_broken && (_sendLen > 0 || _tlsTransport != null))
        {
            try
            {
                for (int sent = 0; sent < _sendLen;)
                    sent += await SendSomeAsync(_send.AsMemory(sent, _sendLen - sent)).ConfigureAwait(false);
                _sendLen = 0;
                // TLS records gather under the session (NbdTlsTransport): the batch goes out now, before its requests are released.
                if (_tlsTransport != null)
                    await _tlsTransport.FlushBufferedAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                Broken();
            }
        }
        ReleaseRange(batch, ref sentUpTo, count);
    }

    /// <summary>Releases batch[from..to) (their replies are on the socket, or never will be) and clears those entries.</summary>
    private void ReleaseRange(NbdRequest[] batch, ref int from, int to)
    {
        for (; from < to; from++)
        {
            Release(batch[from]);
            batch[from] = null!;
        }
    }

    /// <summary>Under the send lock: the socket failed; nothing more goes out, queued pieces are dropped.</summary>
    private void Broken()
    {
        _broken = true;
        _sendLen = 0;
        Abort();
        DropQueued();
    }

    /// <summary>Bytes the reply takes in the send buffer; <paramref name="dataAfter"/> when a read's data is sent from its own buffer instead.</summary>
    private int ReplyBytes(NbdRequest r, out bool dataAfter)
    {
        dataAfter = false;
        if (r.Error != 0)
            return _structured ? NbdWire.ErrorChunkSize(r.Message) : SimpleReplySize;
        if (r.Type == CmdBlockStatus)
            return NbdWire.BlockStatusSize(r.Runs.Length);
        if (r.Type != CmdRead)
            return SimpleReplySize;
        if (r.Length == 0)
            return _structured ? StructuredHeaderSize : SimpleReplySize;
        int header = _structured ? 28 : SimpleReplySize;
        if (r.Length > CopyLimit)
        {
            dataAfter = true;
            return header;
        }
        return header + (int)r.Length;
    }

    private void ComposeReply(NbdRequest r, bool dataAfter)
    {
        var s = _send.AsSpan(_sendLen);
        if (r.Error != 0)
        {
            _sendLen += _structured
                ? NbdWire.WriteErrorChunk(s, r.Cookie, r.Error, r.Message)
                : NbdWire.WriteSimpleReply(s, r.Error, r.Cookie);
            return;
        }
        if (r.Type == CmdBlockStatus)
        {
            _sendLen += NbdWire.WriteBlockStatus(s, r.Cookie, AllocationContextId, r.Runs.Span);
            return;
        }
        if (r.Type != CmdRead)
        {
            _sendLen += NbdWire.WriteSimpleReply(s, 0, r.Cookie);
            return;
        }
        int length = (int)r.Length;
        if (length == 0 && _structured)
        {
            // An OFFSET_DATA chunk carries at least one byte; an empty read is answered with NONE.
            _sendLen += NbdWire.WriteStructuredHeader(s, ReplyFlagDone, ReplyTypeNone, r.Cookie, 0);
            return;
        }
        _sendLen += _structured
            ? NbdWire.WriteOffsetDataHeader(s, r.Cookie, r.Offset, length)
            : NbdWire.WriteSimpleReply(s, 0, r.Cookie);
        if (!dataAfter && length > 0)
        {
            r.Buffer!.GetSpan()[..length].CopyTo(_send.AsSpan(_sendLen));
            _sendLen += length;
        }
    }
}
