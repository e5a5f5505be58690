using System.Threading.Tasks.Sources;
using Strata.Engine.Device;

namespace Strata.Engine.Store;

/// <summary>
/// One device write at a time whose completion completes a reusable ValueTask source, without an
/// async state machine: what a commit round awaits for a chunk's one replica write (PoolLog's pooled
/// commits own one each). A pooled async method would not do: its box goes back to the cache of the
/// thread that awaits it, the committer, while writers on other threads rent new ones (issue 17).
/// The device's own ValueTask gets a cached continuation, as NbdRequest does.
/// </summary>
internal sealed class SignalledWrite : IValueTaskSource
{
    // Completed inline on the device's thread, as the Task of an unpooled write was: the committer's
    // wait for it continues there.
    private ManualResetValueTaskSourceCore<bool> _core;
    private readonly Action _onWritten;
    private ValueTask _write;
    private DmaBuffer? _buffer;
    private readonly Action? _finished;
    private readonly Action<SignalledWrite>? _taken;

    /// <param name="finished">Called after each write completed the source (its owner's hold on it ends there).</param>
    /// <param name="taken">Called after the awaiter took each write's result: the source may be reused from then on (a pool's return).</param>
    public SignalledWrite(Action? finished = null, Action<SignalledWrite>? taken = null)
    {
        _onWritten = OnWritten;
        _finished = finished;
        _taken = taken;
    }

    /// <summary>Prepare, then Start: the ValueTask of one write, awaited exactly once.</summary>
    public ValueTask Run(IBlockDevice device, long offset, ReadOnlyMemory<byte> source)
    {
        var done = Prepare();
        Start(device, offset, source);
        return done;
    }

    /// <summary>Readies the source for the next write; the ValueTask completes when that write does and is awaited exactly once.</summary>
    public ValueTask Prepare()
    {
        _core.Reset();
        return new ValueTask(this, _core.Version);
    }

    /// <summary>
    /// Starts the write of <paramref name="source"/> at <paramref name="offset"/> (as DeviceIo.WriteAsync:
    /// through a DMA buffer of the device unless the memory is one already). Never throws: a failure to
    /// start completes the source with it.
    /// </summary>
    public void Start(IBlockDevice device, long offset, ReadOnlyMemory<byte> source)
    {
        try
        {
            if (source.Length > DeviceIo.PieceSize(device))
            {
                // Several pieces (chunks above the transfer limit): the general path.
                _write = DeviceIo.WriteAsync(device, offset, source);
            }
            else if (DeviceIo.AnyBuffer(device) || DeviceIo.IsDmaReady(device, source))
            {
                _write = device.WriteAsync(offset, source);
            }
            else
            {
                _buffer = device.Buffers.Rent(source.Length);
                source.CopyTo(_buffer.Memory);
                _write = device.WriteAsync(offset, _buffer.Memory);
            }
        }
        catch (Exception e)
        {
            Finish(e);
            return;
        }
        if (_write.IsCompleted)
            OnWritten();
        else
            _write.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(_onWritten);
    }

    /// <summary>
    /// Completes the source with the outcome of a write its owner ran itself (after <see cref="Prepare"/>,
    /// instead of <see cref="Start"/>): an in-place write of one or more pieces. Called exactly once per Prepare.
    /// </summary>
    public void Complete(Exception? error) => Finish(error);

    private void OnWritten()
    {
        var write = _write;
        _write = default;
        Exception? error = null;
        try
        {
            write.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            error = e;
        }
        Finish(error);
    }

    private void Finish(Exception? error)
    {
        _buffer?.Dispose();
        _buffer = null;
        if (error == null)
            _core.SetResult(true);
        else
            _core.SetException(error);
        _finished?.Invoke();
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public void GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _taken?.Invoke(this);
        }
    }
}
