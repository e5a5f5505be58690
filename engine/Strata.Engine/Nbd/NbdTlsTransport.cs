using System.Net.Sockets;
using System.Runtime.CompilerServices;

namespace Strata.Engine.Nbd;

/// <summary>
/// The socket under a connection's SslStream, buffered both ways. SslStream encrypts at most one
/// 16 KiB TLS record per write to the stream under it and reads about one record per read from it:
/// straight on the socket, a 1 MiB reply took 64 sends and a 1 MiB payload about as many receives.
/// Here receives fill a 256 KiB buffer (many records per system call), and once <see cref="Corked"/>
/// writes gather until <see cref="FlushAsync(CancellationToken)"/> or the buffer is full, as nbdkit
/// corks GnuTLS around a reply. The handshake runs uncorked (SslStream does not flush its messages).
/// Allocation is per connection: the buffers; operations complete through the socket's awaitables.
/// </summary>
internal sealed class NbdTlsTransport(Socket socket) : Stream
{
    private const int BufferSize = 256 << 10;

    private readonly byte[] _in = GC.AllocateUninitializedArray<byte>(BufferSize);
    private readonly byte[] _out = GC.AllocateUninitializedArray<byte>(BufferSize);
    private int _inStart, _inEnd, _outLength;

    /// <summary>Received bytes not yet read by SslStream.</summary>
    public int Buffered => _inEnd - _inStart;

    /// <summary>Writes wait in the buffer for a flush (set once the TLS handshake is done).</summary>
    public bool Corked { get; set; }

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_inEnd > _inStart)
            return new ValueTask<int>(TakeBuffered(buffer.Span));
        // A read as large as the buffer goes straight in; SslStream's are smaller.
        if (buffer.Length >= BufferSize)
            return socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
        return FillAndTakeAsync(buffer, cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<int> FillAndTakeAsync(Memory<byte> buffer, CancellationToken ct)
    {
        int got = await socket.ReceiveAsync(_in.AsMemory(), SocketFlags.None, ct).ConfigureAwait(false);
        if (got == 0)
            return 0;
        _inStart = 0;
        _inEnd = got;
        return TakeBuffered(buffer.Span);
    }

    private int TakeBuffered(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, _inEnd - _inStart);
        _in.AsSpan(_inStart, n).CopyTo(destination);
        _inStart += n;
        return n;
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!Corked)
            return SendAsync(buffer, cancellationToken);
        if (_outLength + buffer.Length <= _out.Length)
        {
            buffer.Span.CopyTo(_out.AsSpan(_outLength));
            _outLength += buffer.Length;
            return ValueTask.CompletedTask;
        }
        return WriteFullAsync(buffer, cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteFullAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct)
    {
        await FlushAsync(ct).ConfigureAwait(false);
        if (buffer.Length >= _out.Length)
        {
            await SendAsync(buffer, ct).ConfigureAwait(false);
            return;
        }
        buffer.Span.CopyTo(_out);
        _outLength = buffer.Length;
    }

    public override Task FlushAsync(CancellationToken cancellationToken) =>
        _outLength == 0 ? Task.CompletedTask : FlushCoreAsync(cancellationToken).AsTask();

    /// <summary>Sends what is buffered (the send loop calls it once per batch of replies).</summary>
    public ValueTask FlushBufferedAsync() => _outLength == 0 ? ValueTask.CompletedTask : FlushCoreAsync(default);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushCoreAsync(CancellationToken ct)
    {
        int length = _outLength;
        _outLength = 0;
        await SendAsync(_out.AsMemory(0, length), ct).ConfigureAwait(false);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (data.Length > 0)
        {
            int n = await socket.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false);
            data = data[n..];
        }
    }

    public override void Flush() => FlushAsync(default).GetAwaiter().GetResult();

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
