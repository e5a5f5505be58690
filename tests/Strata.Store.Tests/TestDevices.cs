using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>Shared helpers: memory targets, small pools, patterned data.</summary>
internal static class TestDevices
{
    public const long TargetSize = 16L * 1024 * 1024;

    public static MemoryBlockDevice[] Memory(int count, long size = TargetSize) =>
        Enumerable.Range(0, count).Select(i => new MemoryBlockDevice($"mem{i}", size)).ToArray();

    /// <summary>Small regions so tests exercise wrap-around and checkpoints quickly.</summary>
    public static PoolCreateOptions SmallPool { get; } = new() { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024 };

    /// <summary>A pool at layout 3 (block_checksums): chunks larger than 4 KiB carry a block table.</summary>
    public static PoolCreateOptions Layout3Pool { get; } = SmallPool with { LayoutVersion = 3 };

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static async Task<(StorageEngine Engine, InMemoryRasSink Ras)> FormatAsync(IBlockDevice[] devices, Engine.Layout.LayoutCatalog? catalog = null)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devices, new StorageEngineOptions { Ras = ras, Catalog = catalog ?? Engine.Layout.LayoutCatalog.Default });
        return (engine, ras);
    }

    public static async Task<(StorageEngine Engine, InMemoryRasSink Ras)> OpenAsync(IBlockDevice[] devices, bool readOnly = false, Engine.Layout.LayoutCatalog? catalog = null)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.OpenAsync(devices, new StorageEngineOptions { Ras = ras, ReadOnly = readOnly, Catalog = catalog ?? Engine.Layout.LayoutCatalog.Default });
        return (engine, ras);
    }
}

/// <summary>One switch for one or more <see cref="HoldingDisk"/>s: once armed, the first command one of them matches is held until released.</summary>
internal sealed class IoHold
{
    private int _armed;
    public readonly TaskCompletionSource Held = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public readonly TaskCompletionSource Release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Arm() => Volatile.Write(ref _armed, 1);

    public void Disarm() => Volatile.Write(ref _armed, 0);

    /// <summary>Whether this command is the one to hold (disarms).</summary>
    public bool Take() => Interlocked.Exchange(ref _armed, 0) == 1;
}

/// <summary>
/// A memory target that, while its <see cref="IoHold"/> is armed, holds the first command <paramref name="matches"/>
/// (the disk, opcode, offset, length) until the hold is released: a test's way to stop a read or write in the device.
/// </summary>
internal sealed class HoldingDisk(string name, IoHold hold, Func<HoldingDisk, IoOpcode, long, long, bool> matches) : MemoryBlockDevice(name, TestDevices.TargetSize)
{
    /// <summary>Where a test's predicate starts to look (its shard's data area, once known); nothing before that.</summary>
    public long From = long.MaxValue;

    public IoHold Hold => hold;

    protected override async ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        if (matches(this, opcode, offset, length) && hold.Take())
        {
            hold.Held.TrySetResult();
            await hold.Release.Task;
        }
        await base.SubmitCore(opcode, offset, length, buffer, flags);
    }
}

/// <summary>A memory device that counts the bytes each kind of command moved: what a read path really reads.</summary>
internal sealed class CountingDevice(string name, long capacity) : MemoryBlockDevice(name, capacity)
{
    private long _bytesRead;
    private long _reads;

    public long BytesRead => Interlocked.Read(ref _bytesRead);

    public long Reads => Interlocked.Read(ref _reads);

    private readonly List<(long Offset, long Length)> _writes = new();

    /// <summary>Writes since the last <see cref="Reset"/>: device offset and length.</summary>
    public (long Offset, long Length)[] Writes
    {
        get
        {
            lock (_writes)
                return [.. _writes];
        }
    }

    /// <summary>Bytes written since the last <see cref="Reset"/> inside [<paramref name="from"/>, from + length).</summary>
    public long BytesWrittenIn(long from, long length) =>
        Writes.Sum(w => Math.Max(0, Math.Min(w.Offset + w.Length, from + length) - Math.Max(w.Offset, from)));

    public void Reset()
    {
        Interlocked.Exchange(ref _bytesRead, 0);
        Interlocked.Exchange(ref _reads, 0);
        lock (_writes)
            _writes.Clear();
    }

    protected override void Execute(Engine.Device.IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, Engine.Device.WriteFlags flags)
    {
        if (opcode == Engine.Device.IoOpcode.Read)
        {
            Interlocked.Add(ref _bytesRead, buffer.Length);
            Interlocked.Increment(ref _reads);
        }
        else if (opcode == Engine.Device.IoOpcode.Write)
        {
            lock (_writes)
                _writes.Add((offset, buffer.Length));
        }
        base.Execute(opcode, offset, length, buffer, flags);
    }
}
