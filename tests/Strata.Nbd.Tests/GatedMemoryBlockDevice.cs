using Strata.Engine.Device;

namespace Strata.Nbd.Tests;

/// <summary>
/// A memory device whose writes can be held at a gate: while closed, every write waits
/// (asynchronously) until it opens. Lets a test keep a request in flight for as long as it needs.
/// </summary>
internal sealed class GatedMemoryBlockDevice(string name, long capacity) : MemoryBlockDevice(name, capacity)
{
    private TaskCompletionSource _gate = Open();
    private TaskCompletionSource _held = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private static TaskCompletionSource Open()
    {
        var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        t.SetResult();
        return t;
    }

    /// <summary>Completes when a write is waiting at the closed gate.</summary>
    public Task Held => _held.Task;

    public void Close()
    {
        _held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public void Release() => _gate.TrySetResult();

    private int _flushes;

    /// <summary>Flush commands this device was given.</summary>
    public int Flushes => Volatile.Read(ref _flushes);

    /// <summary>What each write since the last flush overwrote (a volatile write cache's contents, as undo records).</summary>
    private readonly List<(long Offset, byte[] Old)> _volatile = [];

    /// <summary>
    /// The device as a power cut now would leave it, modelling a volatile write cache: the bytes with
    /// every write (without FUA) since the last flush command undone. Writes racing a flush count as
    /// flushed, so this is slightly kind to the engine; tests call it with no I/O in flight.
    /// </summary>
    public byte[] CrashImage()
    {
        var image = new byte[Geometry.Capacity];
        ReadBytes(0, image);
        lock (_volatile)
            for (int i = _volatile.Count - 1; i >= 0; i--)
                _volatile[i].Old.CopyTo(image, _volatile[i].Offset);
        return image;
    }

    /// <summary>Whether writes are tracked for <see cref="CrashImage"/> (a copy of what each write overwrote); off for allocation tests.</summary>
    public bool ModelsCrashes { get; init; } = true;

    private void Track(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        if (!ModelsCrashes)
            return;
        if (opcode == IoOpcode.Flush)
        {
            lock (_volatile)
                _volatile.Clear();
            return;
        }
        if (opcode is not (IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.Trim) || (flags & WriteFlags.Fua) != 0)
            return;
        var old = new byte[opcode == IoOpcode.Write ? buffer.Length : length];
        lock (_volatile)
        {
            ReadBytes(offset, old);
            _volatile.Add((offset, old));
        }
    }

    protected override ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        if (opcode == IoOpcode.Flush)
            Interlocked.Increment(ref _flushes);
        var gate = _gate.Task;
        if (opcode != IoOpcode.Write || gate.IsCompleted)
        {
            Track(opcode, offset, length, buffer, flags);
            return base.SubmitCore(opcode, offset, length, buffer, flags);
        }
        _held.TrySetResult();
        return WaitAsync(gate, opcode, offset, length, buffer, flags);
    }

    private async ValueTask WaitAsync(Task gate, IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        await gate.ConfigureAwait(false);
        Track(opcode, offset, length, buffer, flags);
        await base.SubmitCore(opcode, offset, length, buffer, flags).ConfigureAwait(false);
    }
}
