using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Strata.Engine.Nbd;

/// <summary>
/// One payload buffer of the NBD server: native, page-aligned memory owned by
/// <see cref="NbdBufferPool"/> (rented, returned, freed by the pool only). Native rather than a
/// managed array so that a freed buffer is given back to the operating system at once instead of
/// waiting for a full garbage collection (32 MiB payloads live on the large object heap).
/// </summary>
public sealed unsafe class NbdBuffer : MemoryManager<byte>
{
    private readonly Memory<byte> _memory;

    internal NbdBuffer(byte* pointer, int capacity, int sizeClass)
    {
        Pointer = pointer;
        Capacity = capacity;
        SizeClass = sizeClass;
        _memory = CreateMemory(capacity);
    }

    internal byte* Pointer { get; }

    public int Capacity { get; }

    internal int SizeClass { get; }

    /// <summary>When it was last returned (Environment.TickCount64), for trimming.</summary>
    internal long ReturnedAt { get; set; }

    /// <summary>The first <paramref name="length"/> bytes (no allocation).</summary>
    public Memory<byte> Slice(int length) => _memory[..length];

    public override Span<byte> GetSpan() => new(Pointer, Capacity);

    public override MemoryHandle Pin(int elementIndex = 0) => new(Pointer + elementIndex);

    public override void Unpin()
    {
    }

    /// <summary>Nothing: the pool frees the memory (<see cref="NbdBufferPool.Return"/>, <see cref="NbdBufferPool.Trim"/>).</summary>
    protected override void Dispose(bool disposing)
    {
    }
}

/// <summary>
/// Payload buffers of the NBD server: power-of-two size classes from 4 KiB to the largest
/// payload, kept on per-class stacks up to a byte budget, so steady-state traffic rents and
/// returns without allocating. Buffers nobody rented again for a while are freed
/// (<see cref="Trim"/>, on the server's timer), so the memory of a burst goes back once it is
/// over. Outstanding buffers are counted, so a test can show that no path (an error, a client
/// gone mid-request) forgets to return one.
/// </summary>
public sealed unsafe class NbdBufferPool : IDisposable
{
    private const int MinShift = 12;
    private const int Alignment = 4096;
    // Per class, oldest first: Rent takes the newest, Trim frees from the oldest end.
    private readonly List<NbdBuffer>[] _classes;
    private readonly long _retainLimit;
    private readonly int _maxLength;
    private long _retained;
    private long _outstanding;
    private long _outstandingBytes;
    private long _allocated;
    private long _nativeBytes;
    private int _disposed;

    /// <param name="maxLength">Largest buffer (the maximum payload).</param>
    /// <param name="retainBytes">Most bytes kept for reuse while not rented.</param>
    public NbdBufferPool(int maxLength, long retainBytes)
    {
        if (maxLength < 1 << MinShift)
            throw new ArgumentOutOfRangeException(nameof(maxLength));
        _maxLength = maxLength;
        _retainLimit = retainBytes;
        _classes = new List<NbdBuffer>[ClassOf(maxLength) + 1];
        for (int i = 0; i < _classes.Length; i++)
            _classes[i] = [];
    }

    /// <summary>Buffers rented and not yet returned.</summary>
    public long Outstanding => Interlocked.Read(ref _outstanding);

    /// <summary>Bytes of the buffers rented and not yet returned.</summary>
    public long OutstandingBytes => Interlocked.Read(ref _outstandingBytes);

    /// <summary>Buffers created since the pool was (a steady load creates none).</summary>
    public long Allocated => Interlocked.Read(ref _allocated);

    /// <summary>Bytes kept for reuse.</summary>
    public long RetainedBytes => Interlocked.Read(ref _retained);

    /// <summary>Native memory the pool holds: rented and retained buffers.</summary>
    public long NativeBytes => Interlocked.Read(ref _nativeBytes);

    private static int ClassOf(int length) =>
        length <= 1 << MinShift ? 0 : BitOperations.Log2((uint)length - 1) + 1 - MinShift;

    /// <summary>A buffer of at least <paramref name="length"/> bytes (1..maxLength); its contents are undefined.</summary>
    public NbdBuffer Rent(int length)
    {
        if (length <= 0 || length > _maxLength)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"a payload buffer is 1..{_maxLength} bytes");
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        int c = ClassOf(length);
        NbdBuffer? b = null;
        var stack = _classes[c];
        lock (stack)
        {
            if (stack.Count > 0)
            {
                b = stack[^1];
                stack.RemoveAt(stack.Count - 1);
            }
        }
        if (b != null)
        {
            Interlocked.Add(ref _retained, -b.Capacity);
        }
        else
        {
            int capacity = 1 << (c + MinShift);
            b = new NbdBuffer((byte*)NativeMemory.AlignedAlloc((nuint)capacity, Alignment), capacity, c);
            Interlocked.Increment(ref _allocated);
            Interlocked.Add(ref _nativeBytes, capacity);
        }
        Interlocked.Increment(ref _outstanding);
        Interlocked.Add(ref _outstandingBytes, b.Capacity);
        return b;
    }

    /// <summary>Gives a rented buffer back: kept for reuse within the budget, else freed.</summary>
    public void Return(NbdBuffer buffer)
    {
        Interlocked.Decrement(ref _outstanding);
        Interlocked.Add(ref _outstandingBytes, -buffer.Capacity);
        if (Interlocked.Add(ref _retained, buffer.Capacity) <= _retainLimit)
        {
            buffer.ReturnedAt = Environment.TickCount64;
            var stack = _classes[buffer.SizeClass];
            lock (stack)
            {
                // Dispose sets the flag before it empties the stacks under their locks: nothing is added after.
                if (Volatile.Read(ref _disposed) == 0)
                {
                    stack.Add(buffer);
                    return;
                }
            }
        }
        Interlocked.Add(ref _retained, -buffer.Capacity);
        Free(buffer); // over budget, or the pool is gone
    }

    /// <summary>
    /// Frees the retained buffers returned before <paramref name="idleSince"/> (Environment.TickCount64;
    /// long.MaxValue frees every retained buffer). Returns the bytes freed.
    /// </summary>
    public long Trim(long idleSince)
    {
        long freed = 0;
        foreach (var stack in _classes)
        {
            List<NbdBuffer>? drop = null;
            lock (stack)
            {
                int n = 0;
                while (n < stack.Count && stack[n].ReturnedAt < idleSince)
                    n++;
                if (n > 0)
                {
                    drop = stack.GetRange(0, n);
                    stack.RemoveRange(0, n);
                }
            }
            if (drop == null)
                continue;
            foreach (var b in drop)
            {
                Interlocked.Add(ref _retained, -b.Capacity);
                freed += b.Capacity;
                Free(b);
            }
        }
        return freed;
    }

    private void Free(NbdBuffer buffer)
    {
        NativeMemory.AlignedFree(buffer.Pointer);
        Interlocked.Add(ref _nativeBytes, -buffer.Capacity);
    }

    /// <summary>Frees the retained buffers; those still rented are freed when they are returned.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        Trim(long.MaxValue);
    }
}
