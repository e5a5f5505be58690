using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Strata.Interop;
using Strata.Interop.Native;

namespace Strata.Engine.Device;

/// <summary>
/// A polling thread that owns one queue pair. Submitters enqueue operations;
/// the poller submits them in batches and busy-polls the completion ring while
/// anything is in flight (no interrupt wake-up on the latency path). When the
/// commands in flight are slow (no completion for BusyPollMicros, e.g. a flush),
/// it waits in the kernel in slices of WaitSliceMicros instead of spinning, so
/// a millisecond flush does not cost a millisecond of CPU. When idle it spins
/// briefly, then parks until the next submission.
/// </summary>
/// <remarks>
/// With inline completions, continuations run on this thread and may re-enter
/// it: submit more I/O (queued, picked up by the loop) or even dispose the
/// device. Completed operations therefore go through one shared cursor
/// (<see cref="_pending"/>) that a nested frame can finish, and a dispose on
/// this thread drains and destroys the queue pair itself before it returns,
/// so the device is really closed (and its lock released) when Dispose returns.
/// </remarks>
internal sealed unsafe class DevicePoller : IDisposable
{
    private readonly SioQueuePairHandle _qp;
    private readonly ConcurrentQueue<IoOperation> _queue = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private readonly int _depth;
    private readonly IoOperation?[] _slots;
    private readonly int[] _freeSlots;
    private readonly IoOperation?[] _pending;
    private readonly sio_cmd* _cmds;
    private readonly sio_completion* _completions;
    private readonly int _idleSpinIterations;
    private readonly int _completionBatch;
    private readonly bool _completionDetail;
    private readonly int? _cpu;
    private int _pendingNext;
    private int _pendingCount;
    private int _freeTop;
    private int _inflight;
    private int _inflightFlushes;
    private int _parked;
    private bool _queuePairGone;
    private volatile bool _stopping;

    private readonly long _busyPollTicks;
    private readonly ulong _waitSliceMicros;

    /// <param name="completionDetail">
    /// The backend records a detail for a failed completion and ends the batch there
    /// (SIO_DEV_F_COMPLETION_DETAIL), so the detail read after the poll is that completion's.
    /// </param>
    /// <param name="cpu">The CPU the thread binds itself to, or null (checked by the caller).</param>
    public DevicePoller(SioQueuePairHandle qp, int depth, string name, int idleSpinIterations, int completionBatch, int busyPollMicros = 0, int waitSliceMicros = 100,
        bool completionDetail = false, int? cpu = null)
    {
        _busyPollTicks = busyPollMicros <= 0 ? long.MaxValue : busyPollMicros * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
        _waitSliceMicros = (ulong)Math.Max(1, waitSliceMicros);
        _cpu = cpu;
        _qp = qp;
        _depth = depth;
        _completionBatch = completionBatch;
        _completionDetail = completionDetail;
        _slots = new IoOperation?[depth];
        _pending = new IoOperation?[depth];
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

    /// <summary>True on this poller's own thread (inside an inline continuation).</summary>
    public bool IsCurrentThread => Thread.CurrentThread == _thread;

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
        if (_cpu is int cpu)
            ThreadAffinity.PinCurrentThread(cpu); // the CPU was checked against the process's set
        try
        {
            int idle = 0;
            long progress = System.Diagnostics.Stopwatch.GetTimestamp();
            while (!_queuePairGone)
            {
                int n = SubmitQueued();
                int got = _inflight > 0 ? Reap() : 0;
                if (n > 0 || got > 0)
                {
                    idle = 0;
                    if (_busyPollTicks != long.MaxValue)
                        progress = System.Diagnostics.Stopwatch.GetTimestamp();
                    continue;
                }
                if (_inflight > 0)
                {
                    // Busy-poll while reads and writes are in flight (microseconds); wait in the
                    // kernel when only flushes are (milliseconds) or, with a busy-poll window,
                    // nothing completed for that long. (No clock read per spin without a window.)
                    if ((_inflight == _inflightFlushes
                            || (_busyPollTicks != long.MaxValue && System.Diagnostics.Stopwatch.GetTimestamp() - progress > _busyPollTicks))
                        && Reap(_waitSliceMicros) > 0 && _busyPollTicks != long.MaxValue)
                        progress = System.Diagnostics.Stopwatch.GetTimestamp();
                    continue;
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
        finally
        {
            NativeMemory.Free(_cmds);
            NativeMemory.Free(_completions);
        }
    }

    private int SubmitQueued()
    {
        if (_queuePairGone)
            return 0;
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
            if (op.Opcode == IoOpcode.Flush)
                _inflightFlushes++;
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
                var op = TakeSlot((int)_cmds[i].tag);
                op.Status = rc;
                op.Detail = detail;
                _pending[i] = op;
            }
            _pendingNext = 0;
            _pendingCount = n;
            CompletePending();
            return n;
        }
        _inflight += n;
        return n;
    }

    /// <summary>Reaps completions; with waitMicros, waits up to that long in the kernel for the first one.</summary>
    private int Reap(ulong waitMicros = 0)
    {
        if (_queuePairGone)
            return 0;
        uint got;
        int rc = waitMicros == 0
            ? StrataIo.sio_qpair_poll(_qp.DangerousGetHandle(), _completions, (uint)_completionBatch, &got)
            : StrataIo.sio_qpair_wait(_qp.DangerousGetHandle(), _completions, (uint)_completionBatch, waitMicros, &got);
        if (rc < 0 || got == 0)
            return 0;
        // Take every completed operation out of its slot before running any
        // continuation: an inline continuation may submit again and must find
        // the depth it is owed.
        _inflight -= (int)got;
        for (uint i = 0; i < got; i++)
        {
            var op = TakeSlot((int)_completions[i].tag);
            op.Status = _completions[i].status;
            _pending[i] = op;
        }
        if (_completionDetail && _pending[got - 1]!.Status < 0)
            _pending[got - 1]!.Detail = StrataIoRuntime.LastErrorDetail();
        _pendingNext = 0;
        _pendingCount = (int)got;
        CompletePending();
        return (int)got;
    }

    private IoOperation TakeSlot(int slot)
    {
        var op = _slots[slot]!;
        if (op.Opcode == IoOpcode.Flush)
            _inflightFlushes--;
        _slots[slot] = null;
        _freeSlots[_freeTop++] = slot;
        return op;
    }

    /// <summary>Completes reaped operations through the shared cursor, so a nested frame can finish them.</summary>
    private void CompletePending()
    {
        while (_pendingNext < _pendingCount)
        {
            var op = _pending[_pendingNext]!;
            _pending[_pendingNext++] = null;
            op.Complete(op.Status, op.Detail);
        }
    }

    /// <summary>Stops after every queued and in-flight command has completed, and destroys the queue pair.</summary>
    public void Dispose()
    {
        _stopping = true;
        if (IsCurrentThread)
        {
            // Called from an inline continuation: this thread is the loop, so drain here.
            CompletePending();
            while (_inflight > 0 || !_queue.IsEmpty)
            {
                SubmitQueued();
                Reap();
            }
            _queuePairGone = true; // the outer loop exits when the continuation returns
        }
        else
        {
            _wake.Set();
            _thread.Join();
        }
        _qp.Dispose();
        _wake.Dispose();
    }
}
