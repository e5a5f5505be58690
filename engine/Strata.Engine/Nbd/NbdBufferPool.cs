using System.Numerics;

namespace Strata.Engine.Nbd;

/// <summary>
/// Payload buffers of the NBD server: power-of-two size classes from 4 KiB to the largest
/// payload, kept on per-class stacks up to a byte budget, so steady-state traffic rents and
/// returns without allocating (ArrayPool.Shared keeps only a few buffers per core and class,
/// fewer than 32 requests in flight need). Outstanding buffers are counted, so a test can
/// show that no path (an error, a client gone mid-request) forgets to return one.
/// </summary>
public sealed class NbdBufferPool
{
    private const int MinShift = 12;
    private readonly Stack<byte[]>[] _classes;
    private readonly long _retainLimit;
    private readonly int _maxLength;
    private long _retained;
    private long _outstanding;
    private long _outstandingBytes;
    private long _allocated;

    /// <param name="maxLength">Largest buffer (the maximum payload).</param>
    /// <param name="retainBytes">Most bytes kept on the stacks while not rented.</param>
    public NbdBufferPool(int maxLength, long retainBytes)
    {
        if (maxLength < 1 << MinShift)
            throw new ArgumentOutOfRangeException(nameof(maxLength));
        _maxLength = maxLength;
        _retainLimit = retainBytes;
        _classes = new Stack<byte[]>[ClassOf(maxLength) + 1];
        for (int i = 0; i < _classes.Length; i++)
            _classes[i] = new Stack<byte[]>();
    }

    /// <summary>Buffers rented and not yet returned.</summary>
    public long Outstanding => Interlocked.Read(ref _outstanding);

    /// <summary>Bytes of the buffers rented and not yet returned.</summary>
    public long OutstandingBytes => Interlocked.Read(ref _outstandingBytes);

    /// <summary>Buffers created since the pool was (a steady load creates none).</summary>
    public long Allocated => Interlocked.Read(ref _allocated);

    /// <summary>Bytes kept for reuse.</summary>
    public long RetainedBytes => Interlocked.Read(ref _retained);

    private static int ClassOf(int length) =>
        length <= 1 << MinShift ? 0 : BitOperations.Log2((uint)length - 1) + 1 - MinShift;

    /// <summary>A buffer of at least <paramref name="length"/> bytes (1..maxLength); its contents are undefined.</summary>
    public byte[] Rent(int length)
    {
        if (length <= 0 || length > _maxLength)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"a payload buffer is 1..{_maxLength} bytes");
        int c = ClassOf(length);
        byte[]? b = null;
        var stack = _classes[c];
        lock (stack)
        {
            if (stack.Count > 0)
                b = stack.Pop();
        }
        if (b != null)
            Interlocked.Add(ref _retained, -b.Length);
        else
        {
            b = GC.AllocateUninitializedArray<byte>(1 << (c + MinShift));
            Interlocked.Increment(ref _allocated);
        }
        Interlocked.Increment(ref _outstanding);
        Interlocked.Add(ref _outstandingBytes, b.Length);
        return b;
    }

    public void Return(byte[] buffer)
    {
        Interlocked.Decrement(ref _outstanding);
        Interlocked.Add(ref _outstandingBytes, -buffer.Length);
        if (Interlocked.Add(ref _retained, buffer.Length) > _retainLimit)
        {
            Interlocked.Add(ref _retained, -buffer.Length);
            return; // over budget: let the GC have it
        }
        var stack = _classes[ClassOf(buffer.Length)];
        lock (stack)
            stack.Push(buffer);
    }
}
