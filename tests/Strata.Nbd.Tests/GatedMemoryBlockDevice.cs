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

    protected override ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        if (opcode == IoOpcode.Flush)
            Interlocked.Increment(ref _flushes);
        var gate = _gate.Task;
        if (opcode != IoOpcode.Write || gate.IsCompleted)
            return base.SubmitCore(opcode, offset, length, buffer, flags);
        _held.TrySetResult();
        return WaitAsync(gate, opcode, offset, length, buffer, flags);
    }

    private async ValueTask WaitAsync(Task gate, IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        await gate.ConfigureAwait(false);
        await base.SubmitCore(opcode, offset, length, buffer, flags).ConfigureAwait(false);
    }
}
