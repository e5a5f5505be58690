namespace Strata.Engine.Device;

/// <summary>Which implementation serves a device.</summary>
public enum DeviceKind
{
    /// <summary>io_uring through libstrata_io (files and block devices).</summary>
    Uring,
    /// <summary>SPDK's user-space NVMe driver through libstrata_io.</summary>
    Spdk,
    /// <summary>Managed memory; for tests and the crash simulator.</summary>
    Memory,
}

/// <summary>Capabilities a device reports.</summary>
[Flags]
public enum DeviceFeatures
{
    None = 0,
    DirectIo = 1,
    SqPoll = 2,
    Trim = 4,
    VolatileCache = 8,
    FaultInjection = 16,
    ReadOnly = 32,
    /// <summary>A failed completion carries the backend's reason (SPDK: the NVMe status).</summary>
    CompletionDetail = 64,
    /// <summary>Reads found whole in the page cache complete on the caller's thread (a file opened without O_DIRECT).</summary>
    CachedRead = 128,
    /// <summary>Writes without FUA are copied into the page cache on the caller's thread (direct=0, cached_writes not 0).</summary>
    CachedWrite = 256,
}

/// <summary>Geometry of an opened device.</summary>
public sealed record DeviceGeometry(
    int LogicalBlockSize,
    int OptimalIoSize,
    long BlockCount,
    int BufferAlignment,
    int QueueDepth,
    int MaxTransfer,
    DeviceFeatures Features,
    DeviceKind Kind)
{
    /// <summary>Capacity in bytes.</summary>
    public long Capacity => BlockCount * LogicalBlockSize;

    /// <summary>
    /// Largest read the device serves on the caller's thread when the page cache holds it (a
    /// <see cref="DeviceFeatures.CachedRead"/> device, DeviceOptions.CachedReadLimit; on a polling thread
    /// only up to DeviceOptions.CachedIoLimit); 0 when every read goes through a queue pair.
    /// </summary>
    public int CachedReadLimit { get; init; }
}

/// <summary>Operations of a batch.</summary>
public enum IoOpcode : byte
{
    Read = 0,
    Write = 1,
    Flush = 2,
    Trim = 3,
    WriteZeroes = 4,
}

/// <summary>Flags of a write.</summary>
[Flags]
public enum WriteFlags : byte
{
    None = 0,
    /// <summary>Force unit access: durable when it completes.</summary>
    Fua = 1,
}

/// <summary>One request of a batch. Buffer is used by Read and Write; Length by Trim and WriteZeroes.</summary>
public readonly record struct IoRequest(IoOpcode Opcode, long Offset, Memory<byte> Buffer, long Length = 0, WriteFlags Flags = WriteFlags.None)
{
    public static IoRequest Read(long offset, Memory<byte> destination) => new(IoOpcode.Read, offset, destination, destination.Length);
    public static IoRequest Write(long offset, Memory<byte> source, WriteFlags flags = WriteFlags.None) => new(IoOpcode.Write, offset, source, source.Length, flags);
    public static IoRequest Flush() => new(IoOpcode.Flush, 0, Memory<byte>.Empty);
    public static IoRequest Trim(long offset, long length) => new(IoOpcode.Trim, offset, Memory<byte>.Empty, length);
    public static IoRequest WriteZeroes(long offset, long length) => new(IoOpcode.WriteZeroes, offset, Memory<byte>.Empty, length);
}

/// <summary>
/// A block device as the engine sees it: asynchronous, batched, aligned I/O
/// into DMA buffers from <see cref="Buffers"/>. One interface in front of every
/// backend; contract tests run the same bodies against each.
/// </summary>
/// <remarks>
/// Offsets and lengths must be multiples of <see cref="DeviceGeometry.LogicalBlockSize"/>
/// and buffers aligned to <see cref="DeviceGeometry.BufferAlignment"/>; a violation
/// throws a DeviceArgumentException naming the device and the reason. Device
/// errors surface as <see cref="Strata.Interop.DeviceException"/> carrying the errno.
/// </remarks>
public interface IBlockDevice : IAsyncDisposable, IDisposable
{
    /// <summary>The URI or name used in every message about this device.</summary>
    string Name { get; }

    DeviceGeometry Geometry { get; }

    /// <summary>The device's DMA buffer pool; rent I/O buffers here.</summary>
    DmaBufferPool Buffers { get; }

    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None, CancellationToken cancellationToken = default);

    /// <summary>
    /// Reads <paramref name="head"/>.Length bytes at <paramref name="offset"/> into head and the bytes
    /// right after them into <paramref name="rest"/> (a chunk's block table and the chunk): one
    /// transfer where the backend can (a vectored page-cache read on the caller's thread), else two
    /// reads at once. Each part follows the read rules; completes when both have, and a failure of
    /// either is thrown once both are done.
    /// </summary>
    ValueTask ReadScatterAsync(long offset, Memory<byte> head, Memory<byte> rest, CancellationToken cancellationToken = default);

    /// <summary>
    /// Writes <paramref name="head"/> at <paramref name="offset"/> and <paramref name="rest"/> right after
    /// it: one transfer where the backend can (a vectored page-cache write on the caller's thread), else
    /// two writes at once. Each part follows the write rules; completes when both have, and a failure of
    /// either is thrown once both are done.
    /// </summary>
    ValueTask WriteGatherAsync(long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags = WriteFlags.None, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Deallocates a range; it reads back as zeroes.</summary>
    ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default);

    ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>
    /// Submits the requests together and completes when all have; when any
    /// fail, throws the first failure (by index) after all have completed.
    /// </summary>
    ValueTask ExecuteAsync(ReadOnlyMemory<IoRequest> batch, CancellationToken cancellationToken = default);
}

/// <summary>A device whose backend can inject faults (the shim's fault options).</summary>
public interface IFaultInjectable
{
    /// <summary>Replaces the fault configuration ("fail_io=3&amp;fail_ops=write", "" clears).</summary>
    void SetFaults(string spec);

    FaultStats GetFaultStats();
}

/// <summary>Counters of a fault injector.</summary>
public readonly record struct FaultStats(long IosSeen, long IosFailed, long FlushesFailed, long WritesTorn);
