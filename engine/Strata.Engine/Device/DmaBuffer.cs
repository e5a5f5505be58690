using System.Buffers;

namespace Strata.Engine.Device;

/// <summary>
/// A rented DMA-able buffer: pinned native memory aligned for the device.
/// Its single owner disposes it, which returns it to its pool. Use
/// <see cref="Memory"/> for I/O; the pointer never moves.
/// </summary>
public sealed unsafe class DmaBuffer : MemoryManager<byte>
{
    private readonly DmaBufferPool _pool;
    private int _rented;
    private int _length;

    internal DmaBuffer(DmaBufferPool pool, byte* pointer, int capacity, int sizeClass)
    {
        _pool = pool;
        Pointer = pointer;
        Capacity = capacity;
        SizeClass = sizeClass;
    }

    /// <summary>Start of the buffer; valid until disposed.</summary>
    public byte* Pointer { get; }

    /// <summary>Bytes actually allocated (a power of two at least the requested length).</summary>
    public int Capacity { get; }

    /// <summary>The requested length; Memory and Span cover this many bytes.</summary>
    public int Length => _length;

    internal int SizeClass { get; }

    internal string? RentedAt { get; set; }

    public Span<byte> Span
    {
        get
        {
            ThrowIfReturned();
            return new Span<byte>(Pointer, _length);
        }
    }

    internal void OnRent(int length)
    {
        _length = length;
        Volatile.Write(ref _rented, 1);
    }

    private void ThrowIfReturned()
    {
        if (Volatile.Read(ref _rented) == 0)
            throw new ObjectDisposedException(nameof(DmaBuffer), "DMA buffer used after it was returned to its pool");
    }

    public override Span<byte> GetSpan() => Span;

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ThrowIfReturned();
        if ((uint)elementIndex > (uint)_length)
            throw new ArgumentOutOfRangeException(nameof(elementIndex));
        return new MemoryHandle(Pointer + elementIndex);
    }

    public override void Unpin() { }

    /// <summary>Returns the buffer to its pool; a second call does nothing.</summary>
    public void Dispose() => Dispose(disposing: true);

    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref _rented, 0) == 1)
            _pool.Return(this);
    }
}
