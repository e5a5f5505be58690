using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Strata.Interop;
using Strata.Interop.Native;

namespace Strata.Engine.Device;

/// <summary>
/// A polling thread that owns one queue pair. Submitters enqueue operations;
/// the poller submits them in batches and busy-polls the completion ring while
/// anything is in flight (no interrupt wake-up on the latency path). When idle
/// it spins briefly, then parks until the next submission.
/// </summary>
internal sealed unsafe class DevicePoller : IDisposable
{
    private readonly SioQueuePairHandle _qp;
    private readonly ConcurrentQueue<IoOperation> _queue = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private readonly int _depth;
    private readonly IoOperation?[] _slots;
    private readonly int[] _freeSlots;
    private readonly sio_cmd* _cmds;
    private readonly sio_completion* _completions;
    private readonly int _idleSpinIterations;
    private int _freeTop;
    private int _inflight;
    private int _parked;
    private volatile bool _stopping;

    public DevicePoller(SioQueuePairHandle qp, int depth, string name, int idleSpinIterations)
    {
        _qp = qp;
        _depth = depth;
        _slots = new IoOperation?[depth];
        _freeSlots = new int[depth];
        for (int i = 0; i < depth; i++)
            _freeSlots[i] = depth - 1 - i;
        _freeTop = depth;
        _cmds = (sio_cmd*)NativeMemory.AllocZeroed((nuint)depth, (nuint)sizeof(sio_cmd));
        _completions = (sio_completion*)NativeMemory.AllocZeroed((nuint)depth, (nuint)sizeof(sio_completion));
        _idleSpinIterations = idleSpinIterations;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>Commands submitted and not yet completed (approximate, for metrics).</summary>
    public int Inflight => Volatile.Read(ref _inflight);

    public void Enqueue(IoOperation op)
    {
        _queue.Enqueue(op);
        if (Volatile.Read(ref _parked) == 1)
            _wake.Set();
    }

    private void Run()
    {
        int idle = 0;
        while (true)
        {
            int n = SubmitQueued();
            int got = _inflight > 0 ? Reap() : 0;
            if (n > 0 || got > 0 || _inflight > 0)
            {
                idle = 0;
                continue; // busy-poll while anything is in flight
            }
            if (_stopping && _queue.IsEmpty)
                break;
            if (idle++ < _idleSpinIterations)
            {
                Thread.SpinWait(20);
                continue;
            }
            Interlocked.Exchange(ref _parked, 1);
            if (_queue.IsEmpty && !_stopping)
                _wake.Wait(100);
            _wake.Reset();
            Volatile.Write(ref _parked, 0);
            idle = 0;
        }
    }

    private int SubmitQueued()
    {
        int n = 0;
        while (_inflight + n < _depth && _queue.TryDequeue(out var op))
        {
            int slot = _freeSlots[--_freeTop];
            _slots[slot] = op;
            sio_cmd* c = _cmds + n;
            c->tag = (ulong)slot;
            c->offset = (ulong)op.Offset;
            c->buf = (void*)op.Buffer;
            c->length = (uint)op.Length;
            c->opcode = (byte)op.Opcode;
            c->flags = (byte)op.Flags;
            c->reserved = 0;
            n++;
        }
        if (n == 0)
            return 0;
        int rc = StrataIo.sio_qpair_submit(_qp.DangerousGetHandle(), _cmds, (uint)n);
        if (rc < 0)
        {
            // Validation happens before enqueueing, so this is rare: fail the batch.
            string? detail = StrataIoRuntime.LastErrorDetail();
            for (int i = 0; i < n; i++)
            {
                int slot = (int)_cmds[i].tag;
                var op = _slots[slot]!;
                _slots[slot] = null;
                _freeSlots[_freeTop++] = slot;
                op.Complete(rc, detail);
            }
            return n;
        }
        _inflight += n;
        return n;
    }

    private int Reap()
    {
        uint got;
        int rc = StrataIo.sio_qpair_poll(_qp.DangerousGetHandle(), _completions, (uint)_depth, &got);
        if (rc < 0)
            return 0;
        for (uint i = 0; i < got; i++)
        {
            sio_completion* c = _completions + i;
            int slot = (int)c->tag;
            var op = _slots[slot]!;
            _slots[slot] = null;
            _freeSlots[_freeTop++] = slot;
            op.Complete(c->status);
        }
        _inflight -= (int)got;
        return (int)got;
    }

    /// <summary>Stops after every queued and in-flight command has completed.</summary>
    public void Dispose()
    {
        _stopping = true;
        _wake.Set();
        if (Thread.CurrentThread != _thread)
            _thread.Join();
        _qp.Dispose();
        NativeMemory.Free(_cmds);
        NativeMemory.Free(_completions);
        _wake.Dispose();
    }
}
