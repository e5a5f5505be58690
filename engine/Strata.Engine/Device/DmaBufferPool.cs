using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;

namespace Strata.Engine.Device;

/// <summary>Where a pool's native memory comes from (the shim's allocator or the managed heap).</summary>
public unsafe interface IDmaAllocator
{
    void* Allocate(long size, int alignment);
    void Free(void* pointer);
}

/// <summary>
/// Pool of DMA buffers in power-of-two size classes. The first buffers are
/// carved from one arena that queue pairs register with the kernel (fixed
/// buffers); later ones are allocated one by one. Returned buffers are kept
/// for reuse up to a cap. Leak accounting: <see cref="OutstandingCount"/> and
/// <see cref="OutstandingBytes"/> must be zero when every owner has disposed;
/// with <see cref="TrackRentals"/> on, <see cref="DescribeOutstanding"/> names
/// where each live buffer was rented.
/// </summary>
public sealed unsafe class DmaBufferPool : IDisposable
{
    /// <summary>Smallest buffer handed out.</summary>
    public const int MinBufferSize = 4096;
    /// <summary>Largest pooled size class (larger rentals are allocated and freed each time).</summary>
    public const int MaxPooledSize = 4 * 1024 * 1024;

    private static readonly int ClassCount = BitOperations.Log2(MaxPooledSize) - BitOperations.Log2(MinBufferSize) + 1;

    private readonly IDmaAllocator _allocator;
    private readonly string _owner;
    private readonly int _alignment;
    // Queues, not stacks: a ConcurrentStack allocates a node per push, one per I/O that rents a buffer.
    private readonly ConcurrentQueue<DmaBuffer>[] _free;
    private readonly ConcurrentDictionary<DmaBuffer, byte> _all = new();
    private readonly long _maxCachedBytes;
    private readonly object _arenaLock = new();
    private byte* _arena;
    private readonly long _arenaSize;
    private long _arenaUsed;
    private long _cachedBytes;
    private long _outstandingCount;
    private long _outstandingBytes;
    private long _nativeBytes;
    private int _disposed;
    private bool _allocatorReleased;

    public DmaBufferPool(IDmaAllocator allocator, string owner, int alignment, long arenaBytes = 16 * 1024 * 1024, long maxCachedBytes = 256L * 1024 * 1024)
    {
        if (alignment <= 0 || !BitOperations.IsPow2(alignment))
            throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        _allocator = allocator;
        _owner = owner;
        _alignment = Math.Max(alignment, 64);
        _maxCachedBytes = maxCachedBytes;
        _free = new ConcurrentQueue<DmaBuffer>[ClassCount];
        for (int i = 0; i < ClassCount; i++)
            _free[i] = new ConcurrentQueue<DmaBuffer>();
        _arenaSize = arenaBytes;
        if (arenaBytes > 0)
        {
            _arena = (byte*)allocator.Allocate(arenaBytes, Math.Max(_alignment, MinBufferSize));
            _nativeBytes = arenaBytes;
        }
    }

    /// <summary>The region queue pairs may register (fixed buffers), or null.</summary>
    public (nint Base, long Length) Arena => ((nint)_arena, _arenaSize);

    /// <summary>Records a stack trace per rental, for finding leaks in tests.</summary>
    public bool TrackRentals { get; set; }

    /// <summary>Buffers rented and not yet returned.</summary>
    public long OutstandingCount => Interlocked.Read(ref _outstandingCount);

    /// <summary>Capacity in bytes of the buffers rented and not yet returned.</summary>
    public long OutstandingBytes => Interlocked.Read(ref _outstandingBytes);

    /// <summary>Native memory the pool holds (arena, cached and rented buffers).</summary>
    public long NativeBytes => Interlocked.Read(ref _nativeBytes);

    /// <summary>Rents a buffer of at least length bytes; its Memory covers exactly length bytes.</summary>
    public DmaBuffer Rent(int length)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        int capacity = length <= MinBufferSize ? MinBufferSize : (int)BitOperations.RoundUpToPowerOf2((uint)length);
        int cls = capacity <= MaxPooledSize ? BitOperations.Log2((uint)capacity) - BitOperations.Log2(MinBufferSize) : -1;
        DmaBuffer? buffer = null;
        if (cls >= 0 && _free[cls].TryDequeue(out buffer))
            Interlocked.Add(ref _cachedBytes, -capacity);
        buffer ??= Allocate(capacity, cls);
        buffer.OnRent(length);
        if (TrackRentals)
            buffer.RentedAt = new StackTrace(1, false).ToString();
        Interlocked.Increment(ref _outstandingCount);
        Interlocked.Add(ref _outstandingBytes, capacity);
        return buffer;
    }

    /// <summary>The huge page size the native allocator asks for on arenas and buffers of 2 MiB or more.</summary>
    private const long HugePage = 2 * 1024 * 1024;

    private static long AlignUp(long value, long alignment) => (value + alignment - 1) & ~(alignment - 1);

    private DmaBuffer Allocate(int capacity, int cls)
    {
        byte* p = null;
        if (cls >= 0 && _arena != null)
        {
            lock (_arenaLock)
            {
                // A buffer starts at a multiple of its size (up to a huge page): the native
                // allocator backs arenas with 2 MiB pages where it can, so a 1 MiB transfer then
                // lies in one page, one physically contiguous segment (dma.c).
                long start = AlignUp(_arenaUsed, Math.Min(capacity, HugePage));
                if (start + capacity <= _arenaSize)
                {
                    p = _arena + start;
                    _arenaUsed = start + capacity;
                }
            }
        }
        bool fromArena = p != null;
        if (p == null)
        {
            p = (byte*)_allocator.Allocate(capacity, Math.Max(_alignment, Math.Min(capacity, MinBufferSize)));
            Interlocked.Add(ref _nativeBytes, capacity);
        }
        var buffer = new DmaBuffer(this, p, capacity, fromArena ? cls : (cls >= 0 ? cls : -1)) { };
        _all[buffer] = fromArena ? (byte)1 : (byte)0;
        return buffer;
    }

    internal void Return(DmaBuffer buffer)
    {
        Interlocked.Decrement(ref _outstandingCount);
        Interlocked.Add(ref _outstandingBytes, -buffer.Capacity);
        buffer.RentedAt = null;
        if (Volatile.Read(ref _disposed) != 0)
        {
            FreeOne(buffer);
            return;
        }
        bool fromArena = _all.TryGetValue(buffer, out var a) && a == 1;
        if (buffer.SizeClass >= 0 && (fromArena || Interlocked.Read(ref _cachedBytes) + buffer.Capacity <= _maxCachedBytes))
        {
            Interlocked.Add(ref _cachedBytes, buffer.Capacity);
            _free[buffer.SizeClass].Enqueue(buffer);
        }
        else
        {
            FreeOne(buffer);
        }
    }

    private void FreeOne(DmaBuffer buffer)
    {
        if (_all.TryRemove(buffer, out var fromArena) && fromArena == 0)
        {
            _allocator.Free(buffer.Pointer);
            Interlocked.Add(ref _nativeBytes, -buffer.Capacity);
        }
        if (Volatile.Read(ref _disposed) != 0)
            ReleaseAllocatorIfEmpty();
    }

    private void ReleaseAllocatorIfEmpty()
    {
        if (OutstandingCount != 0)
            return;
        lock (_arenaLock)
        {
            if (_arena != null)
            {
                _allocator.Free(_arena);
                Interlocked.Add(ref _nativeBytes, -_arenaSize);
                _arena = null;
            }
            if (Interlocked.Read(ref _nativeBytes) == 0 && !_allocatorReleased)
            {
                _allocatorReleased = true;
                (_allocator as IDisposable)?.Dispose();
            }
        }
    }

    /// <summary>One line per outstanding buffer (with the rental's stack when tracked).</summary>
    public IReadOnlyList<string> DescribeOutstanding()
    {
        var list = new List<string>();
        foreach (var b in _all.Keys)
        {
            if (b.Length > 0 && IsRented(b))
                list.Add($"{_owner}: {b.Capacity}-byte DMA buffer still rented{(b.RentedAt is null ? "" : " at\n" + b.RentedAt)}");
        }
        return list;
    }

    private bool IsRented(DmaBuffer b)
    {
        foreach (var queue in _free)
            if (queue.Contains(b))
                return false;
        return true;
    }

    /// <summary>
    /// Frees all cached memory; buffers still rented are freed when returned,
    /// and the allocator (which may hold the device open) is released after the last.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        foreach (var queue in _free)
        {
            while (queue.TryDequeue(out var b))
                FreeOne(b);
        }
        ReleaseAllocatorIfEmpty();
        // With buffers still rented the arena stays allocated: freeing memory a
        // caller may still touch would turn a leak into a corruption.
    }
}

/// <summary>Allocates from the managed process's native heap (memory devices, tests).</summary>
public sealed unsafe class NativeMemoryAllocator : IDmaAllocator
{
    public static readonly NativeMemoryAllocator Instance = new();

    public void* Allocate(long size, int alignment)
    {
        var p = System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)size, (nuint)alignment);
        System.Runtime.InteropServices.NativeMemory.Clear(p, (nuint)size);
        return p;
    }

    public void Free(void* pointer) => System.Runtime.InteropServices.NativeMemory.AlignedFree(pointer);
}
