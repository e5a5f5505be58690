using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using static Strata.Engine.Nbd.NbdProtocol;

namespace Strata.Engine.Nbd;

/// <summary>
/// Transmission: one receive loop parses requests from a buffered socket and starts each
/// at once (up to MaxInFlight per connection, and MaxInFlightBytes of payload); each request
/// completes on its own and queues its reply; one send loop writes the replies in completion
/// order, batching whatever is ready into one send. Nothing here allocates per request:
/// request objects are reused, payloads come from <see cref="NbdBufferPool"/>, and socket
/// operations and the reply channel complete through reusable awaitables.
/// </summary>
internal sealed partial class NbdConnection
{
    private const int ReceiveBufferSize = 128 << 10;
    private const int SendBufferSize = 128 << 10;

    /// <summary>Read payloads up to this size are copied into the send buffer with their header (one send for many replies).</summary>
    private const int CopyLimit = 64 << 10;

    /// <summary>Payload remainders at least this large are received straight into the request's buffer.</summary>
    private const int DirectReceiveLimit = 32 << 10;

    private readonly object _sync = new();
    private readonly Stack<NbdRequest> _free = new();
    private readonly SingleWaiterSignal _slotFreed;
    private Channel<NbdRequest> _replies;
    private TaskCompletionSource? _drained;
    private int _inFlight;
    private long _inFlightBytes;
    private byte[] _recv;
    private int _rs, _re;
    private byte[] _send;
    private int _sendLen;
    private volatile bool _broken;
    private volatile string? _revokeReason;

    private async Task<string> TransmitAsync()
    {
        _recv = GC.AllocateUninitializedArray<byte>(ReceiveBufferSize);
        _send = GC.AllocateUninitializedArray<byte>(SendBufferSize);
        _replies = Channel.CreateUnbounded<NbdRequest>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = false });
        var sender = Task.Run(SendLoopAsync);
        string why;
        try
        {
            why = await ReceiveLoopAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            why = _revokeReason != null ? $"revoked: {_revokeReason}" : $"connection lost: {e.Message}";
        }
        // Requests in flight finish and their replies go out (or are dropped if the socket broke).
        await WhenDrained().ConfigureAwait(false);
        _replies.Writer.TryComplete();
        await sender.ConfigureAwait(false);
        return why;
    }

    private async Task<string> ReceiveLoopAsync()
    {
        while (true)
        {
            if (!await FillAsync(RequestHeaderSize).ConfigureAwait(false))
            {
                if (_revokeReason != null)
                    return $"revoked: {_revokeReason}";
                return _re == _rs ? "client closed the connection" : "client closed the connection in the middle of a request header";
            }
            var h = NbdRequestHeader.Read(_recv.AsSpan(_rs, RequestHeaderSize));
            _rs += RequestHeaderSize;
            if (h.Magic != RequestMagic)
            {
                Abort();
                return Violation($"bad request magic 0x{h.Magic:x8}");
            }
            if (h.Type == CmdDisc)
                return "client disconnected (NBD_CMD_DISC)";

            uint error = Check(h, out string? message);
            bool payloadIn = h.Type == CmdWrite;
            if (payloadIn && h.Length > Options.MaxPayload)
            {
                // The payload cannot be skipped safely at any size: answer, then close once the reply is out.
                var r0 = TryAcquire(0) ?? await AcquireSlowAsync(0).ConfigureAwait(false);
                r0.Init(h, 0);
                r0.Complete(error, message);
                return Violation($"WRITE of {h.Length} bytes exceeds the {Options.MaxPayload}-byte maximum payload");
            }
            int bytes = payloadIn || (h.Type == CmdRead && error == 0) ? (int)h.Length : 0;
            var r = TryAcquire(bytes) ?? await AcquireSlowAsync(bytes).ConfigureAwait(false);
            r.Init(h, bytes);
            if (payloadIn && h.Length > 0)
            {
                bool complete;
                if (error == 0)
                {
                    r.Buffer = Buffers.Rent((int)h.Length);
                    complete = await ReceivePayloadAsync(r.Buffer.AsMemory(0, (int)h.Length)).ConfigureAwait(false);
                }
                else
                {
                    complete = await SkipAsync((int)h.Length).ConfigureAwait(false);
                }
                if (!complete)
                {
                    Release(r);
                    return $"client closed the connection in the middle of a {h.Length}-byte WRITE payload";
                }
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
            if (h.Type == CmdRead && h.Length > 0)
                r.Buffer = Buffers.Rent((int)h.Length);
            r.Start();
        }
    }

    /// <summary>Validates a request against the negotiated export; 0 or an NBD error (the message is built only then).</summary>
    private uint Check(in NbdRequestHeader h, out string? message)
    {
        message = null;
        var x = _export!;
        int allowed = CmdFlagFua | (h.Type == CmdWriteZeroes ? CmdFlagNoHole : 0);
        if (h.Type is not (CmdRead or CmdWrite or CmdFlush or CmdTrim or CmdWriteZeroes))
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
        if (h.Type != CmdRead && x.ReadOnly)
        {
            message = $"{CommandName(h.Type)} on read-only export '{x.Name}'";
            return EPerm;
        }
        if (h.Type == CmdRead && h.Length > Options.MaxPayload)
        {
            message = $"READ of {h.Length} bytes exceeds the {Options.MaxPayload}-byte maximum payload";
            return _structured ? EOverflow : EInval;
        }
        if (h.Offset > (ulong)x.Size || h.Length > (ulong)x.Size - h.Offset)
        {
            message = $"{CommandName(h.Type)} of {h.Length} bytes at offset {h.Offset} is past the end of export '{x.Name}' ({x.Size} bytes)";
            // The spec asks for ENOSPC on writes past the end, EINVAL on reads and trims.
            return h.Type is CmdWrite or CmdWriteZeroes ? ENoSpc : EInval;
        }
        return 0;
    }

    // ---- buffered receive ----

    /// <summary>Makes at least <paramref name="n"/> bytes available in the receive buffer; false at end of stream.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> FillAsync(int n)
    {
        if (_re - _rs >= n)
            return true;
        if (_rs > 0)
        {
            Buffer.BlockCopy(_recv, _rs, _recv, 0, _re - _rs);
            _re -= _rs;
            _rs = 0;
        }
        while (_re < n)
        {
            int got = await _socket.ReceiveAsync(_recv.AsMemory(_re), SocketFlags.None).ConfigureAwait(false);
            if (got == 0)
                return false;
            _re += got;
        }
        return true;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ReceivePayloadAsync(Memory<byte> dest)
    {
        int done = Math.Min(_re - _rs, dest.Length);
        _recv.AsSpan(_rs, done).CopyTo(dest.Span);
        _rs += done;
        while (done < dest.Length)
        {
            int left = dest.Length - done;
            if (left >= DirectReceiveLimit)
            {
                int got = await _socket.ReceiveAsync(dest[done..], SocketFlags.None).ConfigureAwait(false);
                if (got == 0)
                    return false;
                done += got;
                continue;
            }
            if (!await FillAsync(left).ConfigureAwait(false))
                return false;
            _recv.AsSpan(_rs, left).CopyTo(dest.Span[done..]);
            _rs += left;
            done += left;
        }
        return true;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> SkipAsync(int length)
    {
        while (length > 0)
        {
            if (_re == _rs && !await FillAsync(1).ConfigureAwait(false))
                return false;
            int n = Math.Min(length, _re - _rs);
            _rs += n;
            length -= n;
        }
        return true;
    }

    // ---- request slots ----

    private NbdRequest? TryAcquire(int bytes)
    {
        lock (_sync)
        {
            if (_inFlight >= Options.MaxInFlight || (_inFlight > 0 && _inFlightBytes + bytes > Options.MaxInFlightBytes))
                return null;
            _inFlight++;
            _inFlightBytes += bytes;
            return _free.Count > 0 ? _free.Pop() : new NbdRequest(this);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<NbdRequest> AcquireSlowAsync(int bytes)
    {
        while (true)
        {
            await _slotFreed.WaitAsync().ConfigureAwait(false);
            if (TryAcquire(bytes) is { } r)
                return r;
        }
    }

    /// <summary>Returns a request's buffer and its slot; called once its reply is out (or dropped).</summary>
    private void Release(NbdRequest r)
    {
        if (r.Buffer != null)
        {
            Buffers.Return(r.Buffer);
            r.Buffer = null;
        }
        TaskCompletionSource? drained = null;
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

    /// <summary>A request has its result: queue its reply.</summary>
    internal void OnCompleted(NbdRequest r)
    {
        if (!_replies.Writer.TryWrite(r))
            Release(r);
    }

    internal void OnUnexpectedError(Exception e) => Options.Log.UnexpectedError(Id, Peer, e);

    // ---- replies ----

    private async Task SendLoopAsync()
    {
        var reader = _replies.Reader;
        // Requests whose replies are in the send buffer: released (and so counted as answered)
        // only once the buffer is on the socket, so a drained connection has sent every reply.
        var written = new NbdRequest[Options.MaxInFlight];
        int count = 0;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            while (reader.TryRead(out var r))
            {
                if (!_broken)
                {
                    try
                    {
                        await WriteReplyAsync(r).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
                    {
                        Broken();
                    }
                }
                written[count++] = r;
                if (_sendLen == 0)
                    ReleaseAll(written, ref count);
            }
            if (!_broken && _sendLen > 0)
            {
                try
                {
                    await FlushSendAsync().ConfigureAwait(false);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
                {
                    Broken();
                }
            }
            ReleaseAll(written, ref count);
        }
    }

    private void ReleaseAll(NbdRequest[] written, ref int count)
    {
        for (int i = 0; i < count; i++)
        {
            Release(written[i]);
            written[i] = null!;
        }
        count = 0;
    }

    private void Broken()
    {
        _broken = true;
        _sendLen = 0;
        Abort();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteReplyAsync(NbdRequest r)
    {
        if (r.Error != 0)
        {
            if (_structured)
            {
                await ReserveAsync(NbdWire.ErrorChunkSize(r.Message)).ConfigureAwait(false);
                _sendLen += NbdWire.WriteErrorChunk(_send.AsSpan(_sendLen), r.Cookie, r.Error, r.Message);
            }
            else
            {
                await ReserveAsync(SimpleReplySize).ConfigureAwait(false);
                _sendLen += NbdWire.WriteSimpleReply(_send.AsSpan(_sendLen), r.Error, r.Cookie);
            }
            return;
        }
        if (r.Type != CmdRead)
        {
            await ReserveAsync(SimpleReplySize).ConfigureAwait(false);
            _sendLen += NbdWire.WriteSimpleReply(_send.AsSpan(_sendLen), 0, r.Cookie);
            return;
        }
        int length = (int)r.Length;
        if (length == 0 && _structured)
        {
            // An OFFSET_DATA chunk carries at least one byte; an empty read is answered with NONE.
            await ReserveAsync(StructuredHeaderSize).ConfigureAwait(false);
            _sendLen += NbdWire.WriteStructuredHeader(_send.AsSpan(_sendLen), ReplyFlagDone, ReplyTypeNone, r.Cookie, 0);
            return;
        }
        int header = _structured ? 28 : SimpleReplySize;
        await ReserveAsync(length <= CopyLimit ? header + length : header).ConfigureAwait(false);
        _sendLen += _structured
            ? NbdWire.WriteOffsetDataHeader(_send.AsSpan(_sendLen), r.Cookie, r.Offset, length)
            : NbdWire.WriteSimpleReply(_send.AsSpan(_sendLen), 0, r.Cookie);
        if (length <= CopyLimit)
        {
            r.Buffer.AsSpan(0, length).CopyTo(_send.AsSpan(_sendLen));
            _sendLen += length;
            return;
        }
        await FlushSendAsync().ConfigureAwait(false);
        await SendAllAsync(r.Buffer.AsMemory(0, length)).ConfigureAwait(false);
    }

    private ValueTask ReserveAsync(int bytes) => _sendLen + bytes <= _send.Length ? ValueTask.CompletedTask : FlushSendAsync();

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushSendAsync()
    {
        int n = _sendLen;
        _sendLen = 0;
        await SendAllAsync(_send.AsMemory(0, n)).ConfigureAwait(false);
    }
}
