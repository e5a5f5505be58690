using Strata.Interop;

namespace Strata.Engine.Device;

/// <summary>
/// A sparse device in managed memory, for tests and the crash simulator:
/// pages are allocated on first write, trimmed pages read back as zeroes, and
/// every command completes synchronously.
/// </summary>
public class MemoryBlockDevice : BlockDeviceBase
{
    /// <summary>Granularity of the sparse page map.</summary>
    public const int PageSize = 64 * 1024;

    private readonly Dictionary<long, byte[]> _pages = new();
    private readonly object _lock = new();
    private readonly DmaBufferPool _pool;

    public MemoryBlockDevice(string name, long capacity, int blockSize = 4096, bool readOnly = false) : base(name)
    {
        if (blockSize <= 0 || PageSize % blockSize != 0)
            throw new DeviceArgumentException(name, Errno.EINVAL, $"block size {blockSize} does not divide the {PageSize}-byte page");
        if (capacity < blockSize || capacity % blockSize != 0)
            throw new DeviceArgumentException(name, Errno.EINVAL, $"capacity {capacity} is not a positive multiple of the {blockSize}-byte block");
        Geometry = new DeviceGeometry(blockSize, 128 * 1024, capacity / blockSize, 8, 128, 64 * 1024 * 1024,
            DeviceFeatures.Trim | (readOnly ? DeviceFeatures.ReadOnly : DeviceFeatures.None), DeviceKind.Memory);
        _pool = new DmaBufferPool(NativeMemoryAllocator.Instance, name, 64, arenaBytes: 0);
    }

    public override DeviceGeometry Geometry { get; }

    public override DmaBufferPool Buffers => _pool;

    /// <summary>Bytes of pages allocated (a sparse device's real footprint).</summary>
    public long AllocatedBytes
    {
        get
        {
            lock (_lock)
                return (long)_pages.Count * PageSize;
        }
    }

    protected override ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        try
        {
            Execute(opcode, offset, length, buffer, flags);
            return ValueTask.CompletedTask;
        }
        catch (Exception e)
        {
            return ValueTask.FromException(e);
        }
    }

    /// <summary>Performs one validated command; overridable by simulators that add failure or crash behaviour.</summary>
    protected virtual void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        switch (opcode)
        {
            case IoOpcode.Read:
                ReadBytes(offset, System.Runtime.InteropServices.MemoryMarshal.AsMemory(buffer).Span);
                break;
            case IoOpcode.Write:
                WriteBytes(offset, buffer.Span);
                break;
            case IoOpcode.Trim:
            case IoOpcode.WriteZeroes:
                ZeroBytes(offset, length);
                break;
            case IoOpcode.Flush:
                break;
        }
    }

    /// <summary>Copies device bytes into destination (no validation; for simulators and tests).</summary>
    public void ReadBytes(long offset, Span<byte> destination)
    {
        lock (_lock)
        {
            while (!destination.IsEmpty)
            {
                long page = offset / PageSize;
                int within = (int)(offset % PageSize);
                int n = Math.Min(destination.Length, PageSize - within);
                if (_pages.TryGetValue(page, out var data))
                    data.AsSpan(within, n).CopyTo(destination);
                else
                    destination[..n].Clear();
                destination = destination[n..];
                offset += n;
            }
        }
    }

    /// <summary>Copies source onto the device (no validation; for simulators and tests).</summary>
    public void WriteBytes(long offset, ReadOnlySpan<byte> source)
    {
        lock (_lock)
        {
            while (!source.IsEmpty)
            {
                long page = offset / PageSize;
                int within = (int)(offset % PageSize);
                int n = Math.Min(source.Length, PageSize - within);
                if (!_pages.TryGetValue(page, out var data))
                    _pages[page] = data = new byte[PageSize];
                source[..n].CopyTo(data.AsSpan(within, n));
                source = source[n..];
                offset += n;
            }
        }
    }

    /// <summary>Zeroes a range, dropping whole pages (no validation).</summary>
    public void ZeroBytes(long offset, long length)
    {
        lock (_lock)
        {
            while (length > 0)
            {
                long page = offset / PageSize;
                int within = (int)(offset % PageSize);
                int n = (int)Math.Min(length, PageSize - within);
                if (within == 0 && n == PageSize)
                    _pages.Remove(page);
                else if (_pages.TryGetValue(page, out var data))
                    data.AsSpan(within, n).Clear();
                length -= n;
                offset += n;
            }
        }
    }

    protected override void CloseCore() => _pool.Dispose();
}
