using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Strata.Interop;
using Strata.Interop.Native;

namespace Strata.Engine.Device;

/// <summary>
/// One queue pair and the operations queued for it, served by a <see cref="PollerThread"/>.
/// Submitters enqueue operations; the thread submits them in batches and reaps
/// their completions. A thread may serve the queue pairs of several devices
/// (a <see cref="PollerGroup"/>), so N devices need not cost N spinning cores.
/// </summary>
/// <remarks>
/// With inline completions, continuations run on the polling thread and may re-enter
/// it: submit more I/O (queued, picked up by the loop) or even dispose the
/// device. Completed operations therefore go through one shared cursor
/// (<see cref="_pending"/>) that a nested frame can finish, and a dispose on
/// the polling thread drains and destroys the queue pair itself before it returns,
/// so the device is really closed (and its lock released) when Dispose returns.
/// </remarks>
internal sealed unsafe class DevicePoller : IDisposable
{
    private readonly SioQueuePairHandle _qp;
    private readonly ConcurrentQueue<IoOperation> _queue = new();
    private readonly PollerThread _thread;
    private readonly bool _ownsThread;
    private readonly int _depth;
    private readonly IoOperation?[] _slots;
    private readonly int[] _freeSlots;
    private readonly IoOperation?[] _pending;
    private readonly sio_cmd* _cmds;
    private readonly sio_completion* _completions;
    private readonly int _completionBatch;
    private readonly bool _completionDetail;
    private readonly long _slowBytes;
    private readonly ManualResetEventSlim _released = new(false);
    private int _pendingNext;
    private int _pendingCount;
    private int _freeTop;
    private int _inflight;
    private int _inflightSlow;
    private bool _queuePairGone;
    private volatile bool _detaching;

    /// <param name="completionDetail">
    /// The backend records a detail for a failed completion and ends the batch there
    /// (SIO_DEV_F_COMPLETION_DETAIL), so the detail read after the poll is that completion's.
    /// </param>
    /// <param name="thread">The polling thread; with <paramref name="ownsThread"/> it stops when this queue pair is disposed.</param>
    /// <param name="slowBytes">Reads and writes of at least this many bytes are slow commands, as flushes are (DeviceOptions.SlowTransferBytes).</param>
    /// <param name="placement">CPUs taking the device's completion interrupts, which the thread joins or stays off when it can (IrqPlacement).</param>
    public DevicePoller(SioQueuePairHandle qp, int depth, int completionBatch, bool completionDetail, PollerThread thread, bool ownsThread,
        long slowBytes = long.MaxValue, PollerPlacementRequest? placement = null)
    {
        PlacementRequest = placement ?? PollerPlacementRequest.None;
        _slowBytes = slowBytes;
        _qp = qp;
        _depth = depth;
        _completionBatch = completionBatch;
        _completionDetail = completionDetail;
        _thread = thread;
        _ownsThread = ownsThread;
        _slots = new IoOperation?[depth];
        _pending = new IoOperation?[depth];
        _freeSlots = new int[depth];
        for (int i = 0; i < depth; i++)
            _freeSlots[i] = depth - 1 - i;
        _freeTop = depth;
        _cmds = (sio_cmd*)NativeMemory.AllocZeroed((nuint)depth, (nuint)sizeof(sio_cmd));
        _completions = (sio_completion*)NativeMemory.AllocZeroed((nuint)depth, (nuint)sizeof(sio_completion));
        try
        {
            thread.Attach(this);
        }
        catch
        {
            NativeMemory.Free(_cmds);
            NativeMemory.Free(_completions);
            throw;
        }
    }

    /// <summary>CPUs taking this device's completion interrupts and whether the thread joins or avoids them (no CPUs: nothing to do).</summary>
    public PollerPlacementRequest PlacementRequest { get; }

    /// <summary>The CPUs its thread runs on after placing itself by interrupt CPUs (null: not placed).</summary>
    internal int[]? Placement => _thread.Placed;

    /// <summary>Moves of its thread between interrupt CPUs and the others (<see cref="PollerThread.PlacementMoves"/>).</summary>
    internal long PlacementMoves => _thread.PlacementMoves;

    /// <summary>True on the polling thread (inside an inline continuation).</summary>
    public bool IsCurrentThread => _thread.IsCurrentThread;

    /// <summary>Commands submitted and not yet completed (approximate, for metrics).</summary>
    public int Inflight => Volatile.Read(ref _inflight);

    /// <summary>Only slow commands are in flight (flushes, large transfers): the thread may wait in the kernel.</summary>
    internal bool OnlySlow => _inflight == _inflightSlow;

    /// <summary>Small reads and writes in flight (the commands a poller busy-polls for).</summary>
    internal int InflightFast => _inflight - _inflightSlow;

    /// <summary>A command that takes long enough that a wake-up from the kernel costs less than spinning through it.</summary>
    private bool IsSlow(IoOperation op) => op.Opcode == IoOpcode.Flush || op.Length >= _slowBytes;

    internal bool HasQueued => !_queue.IsEmpty;

    /// <summary>Disposal asked for this queue pair to go once drained.</summary>
    internal bool Detaching => _detaching;

    internal bool Gone => _queuePairGone;

    public void Enqueue(IoOperation op)
    {
        _queue.Enqueue(op);
        _thread.Wake();
    }

    internal int SubmitQueued()
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
            if (IsSlow(op))
                _inflightSlow++;
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
    internal int Reap(ulong waitMicros = 0)
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
        if (IsSlow(op))
            _inflightSlow--;
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

    /// <summary>On the polling thread: destroys the drained queue pair (nothing touches it afterwards).</summary>
    internal void Release()
    {
        if (_queuePairGone)
            return;
        _queuePairGone = true;
        NativeMemory.Free(_cmds);
        NativeMemory.Free(_completions);
        _qp.Dispose();
        _released.Set();
    }

    /// <summary>Stops after every queued and in-flight command has completed, and destroys the queue pair.</summary>
    public void Dispose()
    {
        _detaching = true;
        if (IsCurrentThread)
        {
            // Called from an inline continuation: this thread is the loop, so drain here.
            CompletePending();
            while (_inflight > 0 || !_queue.IsEmpty)
            {
                SubmitQueued();
                Reap();
            }
            _thread.Detach(this);
            Release();
            if (_ownsThread)
                _thread.Stop(); // the loop exits when the continuation returns
        }
        else
        {
            _thread.Wake(force: true);
            _released.Wait();
            if (_ownsThread)
                _thread.Stop();
        }
    }
}

/// <summary>
/// A polling thread serving one or more queue pairs. It busy-polls while reads or
/// writes are in flight (no interrupt wake-up on the latency path). When only slow
/// commands are in flight (flushes and large transfers, or nothing completed for
/// BusyPollMicros) it waits in the kernel in slices of WaitSliceMicros instead of
/// spinning, so a millisecond flush or 1 MiB write does not cost a millisecond of CPU.
/// With the adaptive default (BusyPollMicros 0) and more than <see cref="SpinDepth"/>
/// small commands in flight it also waits in the kernel while another runnable task waits
/// for a CPU: completions then arrive often enough that a wake-up costs little latency, and
/// the spin would take the core its own consumers (the store's committer, completer and
/// callers, io_uring's workers) or other processes need (issue 17: on 2 CPUs the spin was
/// 55-60% of the store's samples during durable 4 KiB writes at QD 32).
/// When idle it spins briefly, then parks until the next submission.
/// </summary>
internal sealed class PollerThread
{
    private readonly object _attachLock = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private readonly int _idleSpinIterations;
    private readonly long _busyPollTicks;
    private readonly bool _adaptive;

    /// <summary>
    /// Small commands in flight up to which the adaptive poller always busy-polls: a QD 1 read or write
    /// (or a store write's data and log write) completes in tens of microseconds, and a kernel wake-up on
    /// a busy 2-CPU machine can cost as much again.
    /// </summary>
    internal const int SpinDepth = 2;

    /// <summary>How often (stopwatch ticks) a spinning adaptive poller looks for tasks waiting for a CPU: 100 µs.</summary>
    private static readonly long ContentionCheckTicks = System.Diagnostics.Stopwatch.Frequency / 10_000;
    private readonly ulong _waitSliceMicros;
    private readonly int? _cpu;
    private volatile DevicePoller[] _rings = [];
    /// <summary>
    /// Loop turns that did work (a submission or a completion) over which the thread judges whether it
    /// serves commands one or two at a time or deeper, for placement: 0.1-0.3 s at the rates measured.
    /// </summary>
    internal const int PlacementWindow = 4096;

    private volatile int[] _join = [];
    private bool _deep;
    private long _placementMoves;
    private volatile int[] _avoid = [];
    private volatile int _placementVersion;
    private int[]? _placed;
    private int _parked;
    private volatile bool _stopping;
    private long _kernelWaits;

    /// <param name="cpu">The CPU the thread binds itself to, or null (checked by the caller).</param>
    public PollerThread(string name, int idleSpinIterations, int busyPollMicros = 0, int waitSliceMicros = 100, int? cpu = null)
    {
        _idleSpinIterations = idleSpinIterations;
        _busyPollTicks = busyPollMicros <= 0 ? long.MaxValue : busyPollMicros * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
        _adaptive = busyPollMicros == 0 && CpuContention.Available;
        _waitSliceMicros = (ulong)Math.Max(1, waitSliceMicros);
        _cpu = cpu;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public bool IsCurrentThread => Thread.CurrentThread == _thread;

    [ThreadStatic]
    private static bool t_polling;

    /// <summary>True on any polling thread (inside an inline continuation), whichever queue pairs it serves.</summary>
    public static bool OnPollerThread => t_polling;

    /// <summary>Queue pairs served now.</summary>
    public int Attached => _rings.Length;

    /// <summary>Moves between a joining device's interrupt CPUs and the others as the depth served changed (tests and diagnostics).</summary>
    internal long PlacementMoves => Volatile.Read(ref _placementMoves);

    /// <summary>Waits in the kernel for a completion while commands were in flight (tests and diagnostics).</summary>
    internal long KernelWaits => Volatile.Read(ref _kernelWaits);

    /// <summary>
    /// The CPUs the thread may run on, as the kernel reported them after the thread last placed itself
    /// by its devices' interrupt CPUs (null: it has not placed itself, or runs on its configured CPU).
    /// </summary>
    internal int[]? Placed => Volatile.Read(ref _placed);

    public void Attach(DevicePoller ring)
    {
        lock (_attachLock)
        {
            if (_stopping)
                throw new ObjectDisposedException(_thread.Name, "the polling thread was stopped");
            _rings = [.. _rings, ring];
            UpdatePlacement();
        }
        Wake(force: true);
    }

    public void Detach(DevicePoller ring)
    {
        lock (_attachLock)
        {
            _rings = Array.FindAll(_rings, r => r != ring);
            UpdatePlacement();
        }
    }

    /// <summary>
    /// Under the attach lock: the unions of the attached devices' interrupt CPUs to join and to avoid,
    /// applied by the thread when they changed.
    /// </summary>
    private void UpdatePlacement()
    {
        if (_cpu != null)
            return;
        int[] join = [.. _rings.Where(r => r.PlacementRequest.Join).SelectMany(r => r.PlacementRequest.Cpus).Distinct().Order()];
        int[] avoid = [.. _rings.Where(r => !r.PlacementRequest.Join).SelectMany(r => r.PlacementRequest.Cpus).Distinct().Order()];
        if (join.AsSpan().SequenceEqual(_join) && avoid.AsSpan().SequenceEqual(_avoid))
            return;
        _join = join;
        _avoid = avoid;
        _placementVersion++;
    }

    /// <summary>
    /// On the thread: run on the CPUs the process may use that take a joining device's completion
    /// interrupts while commands go one or two at a time, else (no device joins, or <paramref name="deep"/>:
    /// more than <see cref="SpinDepth"/> small commands in flight) off every device's interrupt CPUs;
    /// on all of them when that leaves none (the process may not run there, or a one-CPU process).
    /// Nothing to join or avoid puts the thread back on all of them (the scheduler's choice).
    /// </summary>
    private void ApplyPlacement(int[] allowed, bool deep)
    {
        var join = _join;
        var avoid = _avoid;
        int[] target = join.Length > 0 && !deep
            ? [.. allowed.Where(c => Array.IndexOf(join, c) >= 0)]
            : [.. allowed.Where(c => Array.IndexOf(avoid, c) < 0 && Array.IndexOf(join, c) < 0)];
        if (target.Length == 0)
            target = allowed;
        if (ThreadAffinity.SetCurrentThread(target) == 0)
            Volatile.Write(ref _placed, join.Length == 0 && avoid.Length == 0 ? null : ThreadAffinity.CurrentThread());
    }

    public void Wake(bool force = false)
    {
        if (force || Volatile.Read(ref _parked) == 1)
            _wake.Set();
    }

    /// <summary>The thread exits once no queue pair is attached; joins it unless called on it.</summary>
    public void Stop()
    {
        lock (_attachLock)
            _stopping = true;
        _wake.Set();
        if (!IsCurrentThread)
            _thread.Join();
    }

    private void Run()
    {
        t_polling = true;
        if (_cpu is int cpu)
            ThreadAffinity.PinCurrentThread(cpu); // the CPU was checked against the process's set
        int[] allowed = _cpu == null ? ThreadAffinity.Allowed() : [];
        int placed = 0;
        int window = 0, windowDeep = 0;
        bool lastDeep = false;
        int idle = 0;
        int nextWait = 0;
        long lastCheck = 0;
        bool contended = false;
        long progress = System.Diagnostics.Stopwatch.GetTimestamp();
        while (true)
        {
            if (_placementVersion != placed)
            {
                placed = _placementVersion;
                ApplyPlacement(allowed, _deep);
            }
            var rings = _rings;
            bool worked = false;
            int busy = 0;
            int fast = 0;
            bool slowOnly = true;
            foreach (var r in rings)
            {
                if (r.Gone)
                    continue;
                int n = r.SubmitQueued();
                int got = r.Inflight > 0 ? r.Reap() : 0;
                if (n > 0 || got > 0)
                    worked = true;
                if (r.Inflight > 0)
                {
                    busy++;
                    fast += r.InflightFast;
                    slowOnly &= r.OnlySlow;
                }
                else if (r.Detaching && !r.HasQueued)
                {
                    Detach(r);
                    r.Release();
                }
            }
            if (worked)
            {
                idle = 0;
                if (_join.Length > 0 && ++window == PlacementWindow)
                {
                    // Two windows in a row on the other side of SpinDepth move the thread (docs/device.md, "Poller placement").
                    bool deep = windowDeep * 2 > window;
                    if (deep == lastDeep && deep != _deep)
                    {
                        _deep = deep;
                        Volatile.Write(ref _placementMoves, _placementMoves + 1);
                        ApplyPlacement(allowed, deep);
                    }
                    lastDeep = deep;
                    window = windowDeep = 0;
                }
                else if (fast > SpinDepth)
                    windowDeep++;
                if (_busyPollTicks != long.MaxValue)
                    progress = System.Diagnostics.Stopwatch.GetTimestamp();
                continue;
            }
            if (busy > 0)
            {
                // Busy-poll while small reads and writes are in flight (microseconds); wait in the
                // kernel when only slow commands are (flushes, large transfers: hundreds of
                // microseconds or more) or, with a busy-poll window,
                // nothing completed for that long. (No clock read per spin without a window.)
                // With several queue pairs busy, the wait goes to each in turn, a share of the slice each.
                // Adaptive: above SpinDepth small commands, wait in the kernel while another task waits for a CPU
                // (looked up every 100 µs of spinning; the last answer holds in between).
                bool yieldCpu = false;
                if (_adaptive && !slowOnly && fast > SpinDepth)
                {
                    long now = System.Diagnostics.Stopwatch.GetTimestamp();
                    if (now - lastCheck > ContentionCheckTicks)
                    {
                        lastCheck = now;
                        contended = CpuContention.OthersWaiting();
                    }
                    yieldCpu = contended;
                }
                if (slowOnly || yieldCpu || (_busyPollTicks != long.MaxValue && System.Diagnostics.Stopwatch.GetTimestamp() - progress > _busyPollTicks))
                {
                    DevicePoller? target = null;
                    for (int i = 0; i < rings.Length && target == null; i++)
                    {
                        var r = rings[(nextWait + i) % rings.Length];
                        if (!r.Gone && r.Inflight > 0)
                            target = r;
                    }
                    nextWait++;
                    if (target != null)
                        Volatile.Write(ref _kernelWaits, _kernelWaits + 1);
                    if (target != null && target.Reap(Math.Max(1, _waitSliceMicros / (ulong)busy)) > 0 && _busyPollTicks != long.MaxValue)
                        progress = System.Diagnostics.Stopwatch.GetTimestamp();
                }
                continue;
            }
            if (_stopping && _rings.Length == 0)
                break;
            if (idle++ < _idleSpinIterations)
            {
                Thread.SpinWait(20);
                continue;
            }
            Interlocked.Exchange(ref _parked, 1);
            if (Quiet(_rings) && !_stopping)
                _wake.Wait(100);
            _wake.Reset();
            Volatile.Write(ref _parked, 0);
            idle = 0;
        }
    }

    private static bool Quiet(DevicePoller[] rings)
    {
        foreach (var r in rings)
            if (r.HasQueued || r.Detaching)
                return false;
        return true;
    }
}

/// <summary>
/// Polling threads shared by several devices: each thread polls the queue pairs of
/// every device attached to it, as an SPDK reactor polls many qpairs. Two file
/// targets with a poller each keep two cores spinning; on a small machine that
/// starves everything else (measured: 4 KiB random writes through the store on two
/// targets at 16k IOPS with a poller per device, against 42k on one target).
/// Devices attach through <see cref="DeviceOptions.Group"/>; dispose the group
/// after its devices.
/// </summary>
public sealed class PollerGroup : IDisposable
{
    private readonly PollerThread[] _threads;
    private int _next = -1;
    private int _disposed;

    /// <param name="threads">Polling threads (queue pairs are spread over them in turn).</param>
    /// <param name="options">
    /// The threads' settings: IdleSpinIterations, BusyPollMicros, WaitSliceMicros and PollerCpus
    /// (thread i on PollerCpus[i % Count]).
    /// </param>
    public PollerGroup(int threads = 1, DeviceOptions? options = null, string name = "strata-poll")
    {
        options ??= DeviceOptions.Default;
        if (threads < 1)
            throw new ArgumentOutOfRangeException(nameof(threads), threads, "a poller group needs at least one thread");
        if (ThreadAffinity.Unavailable(options.PollerCpus) is { } why)
            throw new ArgumentException(why, nameof(options));
        _threads = new PollerThread[threads];
        for (int i = 0; i < threads; i++)
            _threads[i] = new PollerThread($"{name}-{i}", options.IdleSpinIterations, options.BusyPollMicros, options.WaitSliceMicros,
                options.PollerCpus is { Count: > 0 } c ? c[i % c.Count] : null);
    }

    public int Threads => _threads.Length;

    /// <summary>Waits in the kernel for a completion while commands were in flight, over the group's threads.</summary>
    internal long KernelWaits => _threads.Sum(t => t.KernelWaits);

    internal PollerThread Next()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return _threads[(int)((uint)Interlocked.Increment(ref _next) % (uint)_threads.Length)];
    }

    /// <summary>Stops the threads; every device attached to the group must be closed first.</summary>
    public void Dispose()
    {
        if (_threads.Any(t => t.Attached > 0))
            throw new InvalidOperationException("a poller group is disposed while devices still use it; close them first");
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        foreach (var t in _threads)
            t.Stop();
    }
}

/// <summary>
/// Whether a runnable task waits for a CPU: the kernel's count of runnable tasks (the fourth field of
/// /proc/loadavg, "running/total", the reader included) exceeds the CPUs. One pread of a kept handle,
/// no allocation.
/// </summary>
internal static class CpuContention
{
    private static readonly Microsoft.Win32.SafeHandles.SafeFileHandle? s_loadavg = Open();

    /// <summary>/proc/loadavg could be opened (Linux).</summary>
    public static bool Available => s_loadavg != null;

    private static Microsoft.Win32.SafeHandles.SafeFileHandle? Open()
    {
        try
        {
            return File.OpenHandle("/proc/loadavg");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public static bool OthersWaiting()
    {
        if (s_loadavg == null)
            return false;
        Span<byte> buf = stackalloc byte[128];
        int n;
        try
        {
            n = RandomAccess.Read(s_loadavg, buf, 0);
        }
        catch (IOException)
        {
            return false;
        }
        return Runnable(buf[..n]) > Environment.ProcessorCount;
    }

    /// <summary>The runnable tasks in a /proc/loadavg line ("0.52 0.58 0.59 3/456 12345": 3); -1 if it has none.</summary>
    internal static int Runnable(ReadOnlySpan<byte> line)
    {
        int i = 0;
        for (int spaces = 0; i < line.Length && spaces < 3; i++)
            if (line[i] == (byte)' ')
                spaces++;
        int start = i, running = 0;
        for (; i < line.Length && line[i] is >= (byte)'0' and <= (byte)'9'; i++)
            running = running * 10 + (line[i] - '0');
        return i > start && i < line.Length && line[i] == (byte)'/' ? running : -1;
    }
}

/// <summary>Where a file device's polling thread runs relative to the CPUs taking its disk's completion interrupts (docs/device.md, "Poller placement").</summary>
public enum InterruptPlacement
{
    /// <summary>On those CPUs at low depth: completions are posted as the interrupt returns to the spinning poller.</summary>
    Join,

    /// <summary>Off those CPUs, when the process has another.</summary>
    Avoid,

    /// <summary>Wherever the scheduler puts it (the default).</summary>
    Ignore,
}

/// <summary>A device's interrupt CPUs and whether its polling thread joins (true) or avoids (false) them.</summary>
internal sealed record PollerPlacementRequest(int[] Cpus, bool Join)
{
    public static readonly PollerPlacementRequest None = new([], false);
}
