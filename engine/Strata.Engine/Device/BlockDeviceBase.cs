using System.Runtime.InteropServices;
using Strata.Interop;

namespace Strata.Engine.Device;

/// <summary>
/// What every backend shares: argument validation with messages naming the
/// device and the reason, the convenience calls, batches, and the
/// closing protocol (no new I/O once closing; accepted I/O completes).
/// </summary>
public abstract class BlockDeviceBase : IBlockDevice
{
    private int _activeSubmitters;
    private volatile bool _closing;
    private int _disposed;

    protected BlockDeviceBase(string name) => Name = name;

    public string Name { get; }

    public abstract DeviceGeometry Geometry { get; }

    public abstract DmaBufferPool Buffers { get; }

    /// <summary>Starts one validated command; the returned task completes when it has.</summary>
    protected abstract ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags);

    /// <summary>Releases backend resources once closing and every accepted command is done.</summary>
    protected abstract void CloseCore();

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) =>
        Start(IoOpcode.Read, offset, destination.Length, destination, WriteFlags.None, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None, CancellationToken cancellationToken = default) =>
        Start(IoOpcode.Write, offset, source.Length, source, flags, cancellationToken);

    public ValueTask ReadScatterAsync(long offset, Memory<byte> head, Memory<byte> rest, CancellationToken cancellationToken = default) =>
        StartPair(IoOpcode.Read, offset, head, rest, WriteFlags.None, cancellationToken);

    public ValueTask WriteGatherAsync(long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags = WriteFlags.None, CancellationToken cancellationToken = default) =>
        StartPair(IoOpcode.Write, offset, head, rest, flags, cancellationToken);

    /// <summary>
    /// Starts a validated read or write of two buffers that follow one another on the device
    /// (<paramref name="head"/> at <paramref name="offset"/>, <paramref name="rest"/> after it). The
    /// default is two commands; a backend that can move both in one transfer overrides it.
    /// </summary>
    protected virtual ValueTask SubmitPairCore(IoOpcode opcode, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags) =>
        SubmitApart(opcode, offset, head, rest, flags);

    /// <summary>The two commands of a pair, at once; completes when both have (a failure of either thrown once both are done).</summary>
    protected ValueTask SubmitApart(IoOpcode opcode, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags)
    {
        var first = SubmitCore(opcode, offset, head.Length, head, flags);
        ValueTask second;
        try
        {
            second = SubmitCore(opcode, offset + head.Length, rest.Length, rest, flags);
        }
        catch (Exception e)
        {
            // The first is under way: its completion is still awaited before the failure is reported.
            second = ValueTask.FromException(e);
        }
        return Both(first, second);
    }

    /// <summary>Completes when both have; a failure of either is thrown once both are done.</summary>
    protected static ValueTask Both(ValueTask first, ValueTask second)
    {
        if (first.IsCompletedSuccessfully && second.IsCompletedSuccessfully)
        {
            // Consumed, so pooled operations go back to their pool.
            first.GetAwaiter().GetResult();
            second.GetAwaiter().GetResult();
            return ValueTask.CompletedTask;
        }
        return BothAsync(first, second);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(Strata.Engine.Threading.SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask BothAsync(ValueTask first, ValueTask second)
    {
        try
        {
            await first.ConfigureAwait(false);
        }
        finally
        {
            await second.ConfigureAwait(false);
        }
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        Start(IoOpcode.Flush, 0, 0, ReadOnlyMemory<byte>.Empty, WriteFlags.None, cancellationToken);

    public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Start(IoOpcode.Trim, offset, length, ReadOnlyMemory<byte>.Empty, WriteFlags.None, cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Start(IoOpcode.WriteZeroes, offset, length, ReadOnlyMemory<byte>.Empty, WriteFlags.None, cancellationToken);

    public async ValueTask ExecuteAsync(ReadOnlyMemory<IoRequest> batch, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        for (int i = 0; i < batch.Length; i++)
        {
            var r = batch.Span[i];
            Validate(r.Opcode, r.Offset, LengthOf(r), r.Buffer, i);
        }
        var tasks = new ValueTask[batch.Length];
        EnterSubmit();
        try
        {
            for (int i = 0; i < batch.Length; i++)
            {
                var r = batch.Span[i];
                tasks[i] = SubmitCore(r.Opcode, r.Offset, LengthOf(r), r.Buffer, r.Flags);
            }
        }
        finally
        {
            ExitSubmit();
        }
        Exception? first = null;
        foreach (var t in tasks)
        {
            try
            {
                await t.ConfigureAwait(false);
            }
            catch (Exception e)
            {
                first ??= e;
            }
        }
        if (first != null)
            throw first;
    }

    private static long LengthOf(in IoRequest r) =>
        r.Opcode is IoOpcode.Read or IoOpcode.Write ? r.Buffer.Length : r.Length;

    private ValueTask Start(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags, CancellationToken ct)
    {
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled(ct);
        Validate(opcode, offset, length, buffer, -1);
        EnterSubmit();
        try
        {
            return SubmitCore(opcode, offset, length, buffer, flags);
        }
        finally
        {
            ExitSubmit();
        }
    }

    private ValueTask StartPair(IoOpcode opcode, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags, CancellationToken ct)
    {
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled(ct);
        Validate(opcode, offset, head.Length, head, -1);
        Validate(opcode, offset + head.Length, rest.Length, rest, -1);
        EnterSubmit();
        try
        {
            return SubmitPairCore(opcode, offset, head, rest, flags);
        }
        finally
        {
            ExitSubmit();
        }
    }

    private void EnterSubmit()
    {
        Interlocked.Increment(ref _activeSubmitters);
        if (_closing)
        {
            Interlocked.Decrement(ref _activeSubmitters);
            throw new ObjectDisposedException(Name, $"{Name}: device is closed");
        }
    }

    private void ExitSubmit() => Interlocked.Decrement(ref _activeSubmitters);

    /// <summary>Checks alignment and range; throws DeviceArgumentException naming the device and reason.</summary>
    protected unsafe void Validate(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, int index)
    {
        var g = Geometry;
        string where = index >= 0 ? $"request {index}: " : "";
        string what = opcode switch
        {
            IoOpcode.Read => "read",
            IoOpcode.Write => "write",
            IoOpcode.Trim => "trim",
            IoOpcode.WriteZeroes => "write-zeroes",
            IoOpcode.Flush => "flush",
            _ => throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}unknown opcode {(int)opcode}"),
        };
        if (opcode == IoOpcode.Flush)
            return;
        if (opcode == IoOpcode.Write && (g.Features & DeviceFeatures.ReadOnly) != 0)
            throw new DeviceReadOnlyException(Name, Errno.EROFS, $"{where}write at offset {offset}: device is read-only");
        if (length <= 0)
            throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} at offset {offset}: length {length} is not positive");
        if (offset < 0 || offset % g.LogicalBlockSize != 0)
            throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} at offset {offset}: offset is not a multiple of the {g.LogicalBlockSize}-byte block");
        if (length % g.LogicalBlockSize != 0)
            throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} of {length} bytes: length is not a multiple of the {g.LogicalBlockSize}-byte block");
        if (offset > g.Capacity - length)
            throw new DeviceArgumentException(Name, Errno.ERANGE, $"{where}{what} of {length} bytes at offset {offset}: beyond the device's end at {g.Capacity}");
        if (opcode is IoOpcode.Read or IoOpcode.Write)
        {
            if (length > g.MaxTransfer)
                throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} of {length} bytes: larger than the device's {g.MaxTransfer}-byte transfer limit");
            if ((g.Features & DeviceFeatures.DirectIo) != 0)
            {
                using var pin = buffer.Pin();
                if ((nint)pin.Pointer % g.BufferAlignment != 0)
                    throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} at offset {offset}: buffer at 0x{(nint)pin.Pointer:x} is not aligned to {g.BufferAlignment} bytes (rent buffers from the device's DMA pool)");
            }
        }
        else if (length > uint.MaxValue)
        {
            throw new DeviceArgumentException(Name, Errno.EINVAL, $"{where}{what} of {length} bytes: too large for one command");
        }
    }

    /// <summary>Stops accepting I/O, waits for accepted I/O, then closes the backend.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _closing = true;
        var spin = new SpinWait();
        while (Volatile.Read(ref _activeSubmitters) != 0)
            spin.SpinOnce();
        CloseCore();
        GC.SuppressFinalize(this);
    }

    public ValueTask DisposeAsync()
    {
        // Closing waits for in-flight commands, which a poller completes in microseconds to milliseconds.
        Dispose();
        return ValueTask.CompletedTask;
    }
}
