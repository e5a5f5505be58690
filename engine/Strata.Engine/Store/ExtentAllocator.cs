using System.Numerics;

namespace Strata.Engine.Store;

/// <summary>
/// Free-space map of one shard's data area in 4 KiB units (a bitmap, first fit
/// from a rotating cursor). Not persisted: it is rebuilt at open from the chunk
/// map, which is the only truth about what is in use.
/// </summary>
public sealed class ExtentAllocator
{
    public const int Unit = 4096;

    private readonly ulong[] _bits;
    private readonly long _units;
    private readonly object _lock = new();
    private long _cursor;
    private long _usedUnits;
    private long _frees;

    public ExtentAllocator(long dataLength)
    {
        _units = dataLength / Unit;
        _bits = new ulong[(_units + 63) / 64];
    }

    public long Capacity => _units * Unit;

    public long UsedBytes
    {
        get
        {
            lock (_lock)
                return _usedUnits * Unit;
        }
    }

    public long FreeBytes => Capacity - UsedBytes;

    /// <summary>
    /// Calls to <see cref="Free"/> so far. A writer that found no space compares it with its value
    /// before that attempt to learn whether any came back since (PoolLog.FlushForSpaceAsync).
    /// </summary>
    public long Frees => Interlocked.Read(ref _frees);

    /// <summary>Allocates length bytes (a multiple of the unit); returns the data-area offset or -1 when full.</summary>
    public long Allocate(long length)
    {
        long n = length / Unit;
        lock (_lock)
        {
            if (n <= 0 || n > _units - _usedUnits)
                return -1;
            long start = FindRun(_cursor, _units, n);
            if (start < 0)
                start = FindRun(0, Math.Min(_units, _cursor + n), n);
            if (start < 0)
                return -1;
            SetRange(start, n, true);
            _cursor = start + n;
            return start * Unit;
        }
    }

    /// <summary>Marks an extent used when rebuilding from metadata; false when it overlaps a used one.</summary>
    public bool MarkUsed(long offset, long length)
    {
        long start = offset / Unit, n = length / Unit;
        lock (_lock)
        {
            if (offset % Unit != 0 || length % Unit != 0 || start < 0 || start + n > _units)
                return false;
            for (long i = start; i < start + n; i++)
                if (IsSet(i))
                    return false;
            SetRange(start, n, true);
            return true;
        }
    }

    public void Free(long offset, long length)
    {
        TaskCompletionSource? freed;
        lock (_lock)
        {
            SetRange(offset / Unit, length / Unit, false);
            Interlocked.Increment(ref _frees);
            freed = _freed;
            _freed = null;
        }
        freed?.TrySetResult();
    }

    private TaskCompletionSource? _freed;

    /// <summary>
    /// Completes once <see cref="Frees"/> differs from <paramref name="frees"/> (at once if it does):
    /// what a migration paused for want of space on this target waits for, instead of polling.
    /// </summary>
    public Task FreedSinceAsync(long frees)
    {
        lock (_lock)
        {
            if (Interlocked.Read(ref _frees) != frees)
                return Task.CompletedTask;
            _freed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _freed.Task;
        }
    }

    private bool IsSet(long i) => (_bits[i >> 6] & (1UL << (int)(i & 63))) != 0;

    private long FindRun(long from, long limit, long n)
    {
        long run = 0;
        for (long i = from; i < limit; i++)
        {
            if ((i & 63) == 0 && run == 0 && i + 64 <= limit && _bits[i >> 6] == ulong.MaxValue)
            {
                i += 63;
                continue;
            }
            if (IsSet(i))
            {
                run = 0;
                continue;
            }
            if (++run == n)
                return i - n + 1;
        }
        return -1;
    }

    private void SetRange(long start, long n, bool used)
    {
        for (long i = start; i < start + n; i++)
        {
            bool was = IsSet(i);
            if (was == used)
                continue;
            _bits[i >> 6] ^= 1UL << (int)(i & 63);
            _usedUnits += used ? 1 : -1;
        }
    }

    internal int PopCount() => _bits.Sum(b => BitOperations.PopCount(b));
}
