using Strata.Interop;
using Strata.Interop.Native;

namespace Strata.Engine.Device;

/// <summary>Options for opening a device.</summary>
public sealed record DeviceOptions
{
    /// <summary>Polling threads, each with its own queue pair.</summary>
    public int Pollers { get; init; } = 1;

    /// <summary>Queue depth per queue pair (0 = the URI's qd option or the shim's default).</summary>
    public int QueueDepth { get; init; }

    /// <summary>Bytes of the DMA pool's registered arena.</summary>
    public long ArenaBytes { get; init; } = 16 * 1024 * 1024;

    /// <summary>Spin iterations of an idle poller before it parks (each about a microsecond).</summary>
    public int IdleSpinIterations { get; init; } = 200;

    /// <summary>
    /// Microseconds a poller busy-polls with reads or writes in flight and no
    /// completion before it waits in the kernel instead. 0 (the default) is adaptive:
    /// with at most <see cref="PollerThread.SpinDepth"/> small commands in flight it
    /// busy-polls (the QD 1 latency path); with more it busy-polls only while no
    /// runnable task waits for a CPU (/proc/loadavg, read every 100 µs of spinning), and
    /// waits in the kernel otherwise, so it does not take a core from the threads that
    /// consume its completions, or from the rest of the machine. Negative: busy-poll as long
    /// as any read or write smaller than <see cref="SlowTransferBytes"/> is in flight. With
    /// only flushes and large transfers in flight it always waits in the kernel: a flush
    /// (up to milliseconds on a file) would otherwise keep a CPU spinning for its whole duration.
    /// </summary>
    public int BusyPollMicros { get; init; }

    /// <summary>
    /// Reads and writes of at least this many bytes are slow commands, as flushes are: a poller with
    /// only slow commands in flight waits in the kernel (in slices of <see cref="WaitSliceMicros"/>)
    /// instead of spinning. A 1 MiB transfer takes hundreds of microseconds (a buffered one is copied
    /// by an io_uring worker meanwhile), a wake-up a few: spinning through it cost a CPU for nothing
    /// (measured: NBD 1 MiB writes to a page-cache target, the poller at a third of the server's CPU).
    /// </summary>
    public int SlowTransferBytes { get; init; } = 256 * 1024;

    /// <summary>Longest kernel wait for a completion (µs); a submission queued meanwhile waits at most this long.</summary>
    public int WaitSliceMicros { get; init; } = 100;

    /// <summary>Register the arena with each queue pair (io_uring fixed buffers).</summary>
    public bool RegisterArena { get; init; } = true;

    /// <summary>
    /// Run I/O continuations on the poller thread instead of the thread pool.
    /// Continuations must then never block (no sync-over-async on this device).
    /// </summary>
    public bool InlineCompletions { get; init; } = true;

    /// <summary>
    /// Completions reaped per poll before the poller submits again: the commands their
    /// continuations queue go to the device together, one system call (io_uring_enter)
    /// and, on virtio, one doorbell write (a VM exit) for the batch instead of one each.
    /// Measured on the development VM (4 KiB random reads at QD 32 through the store): 1 cost a
    /// doorbell per read and held the poller at about 45k IOPS; 32 gave about 8 reads per
    /// io_uring_enter and 75-85k IOPS. 1 submits after every completion (the device waits
    /// for no other continuation), at a system call per command.
    /// Session 20 (perf/README.md, "Completion batch"): 8 against 32, alternating runs with nothing
    /// else running, device 4 KiB reads at QD 32 69.5k / 72.7k against 65.8k / 64.3k IOPS (fio
    /// 66.7k / 73.0k), store 4 KiB reads 65.9k / 63.3k against 59.0k / 57.4k, store durable 4 KiB
    /// writes 41.1k / 40.2k against 36.2k / 34.6k; 1 MiB rows level. Reaping all 32 before
    /// submitting left the device short of commands while the poller ran 32 continuations; 8 still
    /// submits several commands per system call.
    /// </summary>
    public int CompletionBatch { get; init; } = 8;

    /// <summary>
    /// CPUs the polling threads run on (poller i on PollerCpus[i % Count]); null leaves them to the
    /// scheduler. A busy poller must not share a core with another one, such as an SPDK target's.
    /// </summary>
    public IReadOnlyList<int>? PollerCpus { get; init; }

    /// <summary>
    /// Without <see cref="PollerCpus"/>: where a file device's polling thread runs relative to the CPUs
    /// that take the completion interrupts of the single-queue block device under the file
    /// (IrqPlacement). The default leaves it to the scheduler. <see cref="InterruptPlacement.Join"/>
    /// (session 19's default) ran it on them, where io_uring's completion work runs as the interrupt
    /// returns to the spinning poller; but every engine's poller then spun on the one CPU whose
    /// per-CPU kernel work (ext4's O_DIRECT write completions, "dio/vda") the I/O needs, and the
    /// io_uring workers it creates inherit its mask: under load the kernel reported that work stuck
    /// for 30-130 s and both of session 20's CI timeouts fell in such a stall. docs/device.md,
    /// "Poller placement".
    /// </summary>
    public InterruptPlacement InterruptPlacement { get; init; } = InterruptPlacement.Ignore;

    /// <summary>
    /// Polling threads shared with other devices (null: this device gets <see cref="Pollers"/> threads of
    /// its own). With a group, <see cref="Pollers"/> is the number of queue pairs, each attached to the
    /// group's next thread, and the thread settings (spin, busy-poll, wait slice, CPUs) are the group's.
    /// </summary>
    public PollerGroup? Group { get; init; }

    /// <summary>
    /// Largest read or write served on any thread, a polling thread included, through the page cache
    /// (devices with CachedRead or CachedWrite); off polling threads <see cref="CachedReadLimit"/> and
    /// <see cref="CachedWriteLimit"/> go further. Longer ones go through a queue pair, their copies on
    /// an io_uring worker (1 MiB NBD reads were once measured at half the rate copied on the receiving
    /// thread; with replies sent as they are read, session 26 measured the other way round: CachedReadLimit).
    /// 0 turns the cached path off. 512 KiB: a
    /// 256 KiB NBD read of a 128 KiB-chunk image (nbdcopy's requests; two chunks and their block
    /// tables, 264 KiB) through the queue pair cost a wake-up of the polling thread and one of the
    /// send loop per request; served here, nbdcopy's copy out of Strata took about 40% less server CPU.
    /// </summary>
    public int CachedIoLimit { get; init; } = 512 * 1024;

    /// <summary>
    /// Largest write without FUA copied into the page cache on the caller's thread, when that thread
    /// is not a polling thread (a long copy there would hold up every queue pair it serves); at least
    /// <see cref="CachedIoLimit"/>, and nothing when that is 0. Unlike a read, a write through a queue
    /// pair costs the same copy on an io_uring worker plus the hand-offs to it, to the polling thread
    /// and back (measured: NBD 1 MiB writes to a page-cache target at 550-580 us of server CPU per MiB
    /// written on the receiving thread, against 820-1,250 through the queue pair).
    /// </summary>
    public int CachedWriteLimit { get; init; } = 1024 * 1024;

    /// <summary>
    /// Largest read served on the caller's thread from the page cache when that thread is not a polling
    /// thread: at least <see cref="CachedIoLimit"/>, and nothing when that is 0. 2 MiB: a whole 1 MiB chunk
    /// with its block table is one read. Through a queue pair, an io_uring worker on the other core copied the
    /// chunk, and the caller then verified and sent bytes that were in that core's cache, not its own: NBD
    /// 1 MiB reads of a 1 MiB-chunk image at 442-487 us of server CPU per read against 343-377 here (2,138-2,424
    /// MB/s against 2,713-2,981; at a fixed 1,000 reads a second 611-645 us against 291-520; perf/README.md,
    /// "Session 26").
    /// </summary>
    public int CachedReadLimit { get; init; } = 2 * 1024 * 1024;

    public static DeviceOptions Default { get; } = new();
}

/// <summary>
/// A device served by libstrata_io (io_uring today, SPDK where built): the
/// SafeHandle, one poller per queue pair, and a DMA pool from the shim's allocator.
/// </summary>
public sealed unsafe class NativeBlockDevice : BlockDeviceBase, IFaultInjectable
{
    private readonly SioDeviceHandle _handle;
    private readonly DevicePoller[] _pollers;
    private readonly DmaBufferPool _pool;
    private readonly IoOperationPool _ops;
    private readonly long _cachedIoLimit;
    private readonly long _cachedWriteLimit;
    private readonly long _cachedReadLimit;
    private int _next;
    private long _cachedPairs;

    private NativeBlockDevice(string uri, SioDeviceHandle handle, DeviceGeometry geometry, DeviceOptions options) : base(uri)
    {
        _handle = handle;
        _cachedReadLimit = options.CachedIoLimit > 0 ? Math.Max(options.CachedIoLimit, options.CachedReadLimit) : 0;
        Geometry = (geometry.Features & DeviceFeatures.CachedRead) != 0 ? geometry with { CachedReadLimit = (int)_cachedReadLimit } : geometry;
        int depth = options.QueueDepth > 0 ? options.QueueDepth : geometry.QueueDepth;
        if (ThreadAffinity.Unavailable(options.PollerCpus) is { } why)
            throw new DeviceArgumentException(uri, Errno.EINVAL, why);
        _pool = new DmaBufferPool(new ShimAllocator(handle), uri, geometry.BufferAlignment, options.ArenaBytes);
        _cachedIoLimit = options.CachedIoLimit;
        _cachedWriteLimit = options.CachedIoLimit > 0 ? Math.Max(options.CachedIoLimit, options.CachedWriteLimit) : 0;
        _ops = new IoOperationPool(depth * Math.Max(1, options.Pollers) * 2, options.InlineCompletions);
        _pollers = new DevicePoller[Math.Max(1, options.Pollers)];
        int[]? irq = options.InterruptPlacement != InterruptPlacement.Ignore && options.PollerCpus is null && geometry.Kind == DeviceKind.Uring
            && FilePathOf(uri) is { } file
            ? IrqPlacement.CompletionCpus(file)
            : null;
        InterruptCpus = irq ?? [];
        var placement = new PollerPlacementRequest(irq ?? [], options.InterruptPlacement == InterruptPlacement.Join);
        try
        {
            for (int i = 0; i < _pollers.Length; i++)
            {
                var qp = SioQueuePairHandle.Create(handle, (uint)depth);
                if (options.RegisterArena && _pool.Arena.Base != 0)
                {
                    int rc = StrataIo.sio_qpair_register_region(qp.DangerousGetHandle(), (void*)_pool.Arena.Base, (ulong)_pool.Arena.Length);
                    RegisteredArena = rc == 0;
                }
                var completionBatch = Math.Clamp(options.CompletionBatch, 1, depth);
                bool detail = (geometry.Features & DeviceFeatures.CompletionDetail) != 0;
                if (options.Group is { } group)
                {
                    try
                    {
                        _pollers[i] = new DevicePoller(qp, depth, completionBatch, detail, group.Next(), ownsThread: false, SlowBytes(options), placement);
                    }
                    catch
                    {
                        qp.Dispose();
                        throw;
                    }
                }
                else
                {
                    int? cpu = options.PollerCpus is { Count: > 0 } cpus ? cpus[i % cpus.Count] : null;
                    var thread = new PollerThread($"strata-poll-{i}", options.IdleSpinIterations, options.BusyPollMicros, options.WaitSliceMicros, cpu);
                    try
                    {
                        _pollers[i] = new DevicePoller(qp, depth, completionBatch, detail, thread, ownsThread: true, SlowBytes(options), placement);
                    }
                    catch
                    {
                        thread.Stop();
                        qp.Dispose();
                        throw;
                    }
                }
            }
        }
        catch
        {
            foreach (var p in _pollers)
                p?.Dispose();
            _pool.Dispose();
            throw;
        }
    }

    /// <summary>CPUs taking the completion interrupts of the device under this file, which its pollers join or stay off (empty: none known, or ignored).</summary>
    public IReadOnlyList<int> InterruptCpus { get; }

    /// <summary>The CPUs the first polling thread may run on after placing itself by <see cref="InterruptCpus"/> (null: not placed).</summary>
    internal int[]? PollerPlacement => _pollers[0].Placement;

    /// <summary>How often the first polling thread moved between the interrupt CPUs and the others as the depth it served changed.</summary>
    internal long PollerPlacementMoves => _pollers[0].PlacementMoves;

    /// <summary>Pairs of buffers read or written in one vectored page-cache call (for tests: not counted atomically).</summary>
    internal long CachedPairs => Volatile.Read(ref _cachedPairs);

    /// <summary>The file a file: URI names (the text between "file:" and its options), or null for another scheme.</summary>
    public static string? FilePathOf(string uri)
    {
        if (!uri.StartsWith("file:", StringComparison.Ordinal))
            return null;
        string p = uri["file:".Length..];
        int q = p.IndexOf('?');
        return q < 0 ? p : p[..q];
    }

    /// <summary>
    /// Opens a device by URI (file:PATH?..., nvme-tcp://HOST:PORT/SUBNQN, nvme-pcie://BDF); errors name
    /// the URI and the reason. The first nvme-* open starts the SPDK environment with the options
    /// <see cref="SpdkEnvironment.Configure"/> set, or its defaults.
    /// </summary>
    public static NativeBlockDevice Open(string uri, DeviceOptions? options = null)
    {
        options ??= DeviceOptions.Default;
        var handle = SioDeviceHandle.Open(uri);
        try
        {
            sio_geometry g;
            int rc = StrataIo.sio_device_geometry(handle.DangerousGetHandle(), &g);
            DeviceErrors.ThrowIfError(rc, uri, StrataIoRuntime.LastErrorDetail);
            var geometry = new DeviceGeometry(
                (int)g.logical_block_size, (int)g.optimal_io_size, (long)g.block_count, (int)g.buffer_alignment,
                (int)g.queue_depth, (int)g.max_transfer, (DeviceFeatures)g.flags,
                g.backend == StrataIo.SIO_BACKEND_SPDK ? DeviceKind.Spdk : DeviceKind.Uring);
            return new NativeBlockDevice(uri, handle, geometry, options);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static long SlowBytes(DeviceOptions o) => o.SlowTransferBytes > 0 ? o.SlowTransferBytes : long.MaxValue;

    public override DeviceGeometry Geometry { get; }

    public override DmaBufferPool Buffers => _pool;

    /// <summary>Whether the DMA arena is registered with the queue pairs (fixed buffers).</summary>
    public bool RegisteredArena { get; private set; }

    protected override ValueTask SubmitCore(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        // A read the page cache holds whole is served on this thread (sio_device_read_cached), and a
        // write without FUA is copied into the page cache here (sio_device_write_cached; durable only
        // after a flush either way): one syscall, no hand-off to the polling thread (or an io_uring
        // worker) and back. Anything else goes through a queue pair (also what fails here: the queue
        // pair reports it with its detail).
        if (CachedLength(opcode, length) && TryCached(opcode, offset, buffer, flags))
            return ValueTask.CompletedTask;
        return Enqueue(opcode, offset, length, buffer, flags);
    }

    /// <summary>
    /// A table and its chunk (or any two adjacent buffers) in one vectored page-cache call on this thread
    /// (sio_device_readv_cached / writev_cached) where <see cref="SubmitCore"/> would have taken each
    /// of them that way: the same copies, one syscall instead of two (a 1 MiB chunk's write with its
    /// table, each part within CachedWriteLimit, is one pwritev2). When that fails (not all cached,
    /// faults, an error) both go through a queue pair, which reports errors with their detail; when it
    /// does not apply (a part too long, FUA, direct) each part goes its own way as through SubmitCore.
    /// </summary>
    protected override ValueTask SubmitPairCore(IoOpcode opcode, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest, WriteFlags flags)
    {
        if (!CachedLength(opcode, head.Length) || !CachedLength(opcode, rest.Length) || !CanCache(opcode, flags))
            return SubmitApart(opcode, offset, head, rest, flags);
        if (TryCachedPair(opcode, offset, head, rest))
        {
            _cachedPairs++;
            return ValueTask.CompletedTask;
        }
        var first = Enqueue(opcode, offset, head.Length, head, flags);
        ValueTask second;
        try
        {
            second = Enqueue(opcode, offset + head.Length, rest.Length, rest, flags);
        }
        catch (Exception e)
        {
            second = ValueTask.FromException(e);
        }
        return Both(first, second);
    }

    /// <summary>Whether a transfer of this length may be tried on the caller's thread (the device's features and the flags aside).</summary>
    private bool CachedLength(IoOpcode opcode, long length) =>
        length <= _cachedIoLimit || (length <= (opcode == IoOpcode.Write ? _cachedWriteLimit : _cachedReadLimit) && !PollerThread.OnPollerThread);

    private bool CanCache(IoOpcode opcode, WriteFlags flags)
    {
        var f = Geometry.Features;
        return opcode == IoOpcode.Read ? (f & DeviceFeatures.CachedRead) != 0
            : opcode == IoOpcode.Write && flags == WriteFlags.None && (f & DeviceFeatures.CachedWrite) != 0;
    }

    private ValueTask Enqueue(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        var op = _ops.Rent();
        op.DeviceName = Name;
        op.Opcode = opcode;
        op.Offset = offset;
        op.Length = length;
        op.Flags = flags;
        if (opcode is IoOpcode.Read or IoOpcode.Write)
        {
            op.Pin = buffer.Pin();
            op.Buffer = (nint)op.Pin.Pointer;
        }
        else
        {
            op.Buffer = 0;
        }
        var task = op.AsValueTask();
        var pollers = _pollers;
        var poller = pollers.Length == 1 ? pollers[0] : pollers[(int)((uint)Interlocked.Increment(ref _next) % (uint)pollers.Length)];
        poller.Enqueue(op);
        return task;
    }

    private bool TryCached(IoOpcode opcode, long offset, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        if (!CanCache(opcode, flags))
            return false;
        using var pin = buffer.Pin();
        nint dev = _handle.DangerousGetHandle();
        return (opcode == IoOpcode.Read
            ? StrataIo.sio_device_read_cached(dev, pin.Pointer, (uint)buffer.Length, (ulong)offset)
            : StrataIo.sio_device_write_cached(dev, pin.Pointer, (uint)buffer.Length, (ulong)offset)) == 0;
    }

    /// <summary>Both buffers in one vectored call; the caller checked <see cref="CanCache"/>.</summary>
    private bool TryCachedPair(IoOpcode opcode, long offset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest)
    {
        using var headPin = head.Pin();
        using var restPin = rest.Pin();
        sio_iovec* iov = stackalloc sio_iovec[2];
        iov[0].@base = headPin.Pointer;
        iov[0].length = (ulong)head.Length;
        iov[1].@base = restPin.Pointer;
        iov[1].length = (ulong)rest.Length;
        nint dev = _handle.DangerousGetHandle();
        return (opcode == IoOpcode.Read
            ? StrataIo.sio_device_readv_cached(dev, iov, 2, (ulong)offset)
            : StrataIo.sio_device_writev_cached(dev, iov, 2, (ulong)offset)) == 0;
    }

    public void SetFaults(string spec)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(spec + "\0");
        int rc;
        fixed (byte* p = bytes)
            rc = StrataIo.sio_device_set_faults(_handle.DangerousGetHandle(), p);
        DeviceErrors.ThrowIfError(rc, Name, StrataIoRuntime.LastErrorDetail);
    }

    public FaultStats GetFaultStats()
    {
        sio_fault_stats s;
        int rc = StrataIo.sio_device_fault_stats(_handle.DangerousGetHandle(), &s);
        DeviceErrors.ThrowIfError(rc, Name, StrataIoRuntime.LastErrorDetail);
        return new FaultStats((long)s.ios_seen, (long)s.ios_failed, (long)s.flushes_failed, (long)s.writes_torn);
    }

    protected override void CloseCore()
    {
        foreach (var p in _pollers)
            p.Dispose();
        _pool.Dispose();
        _handle.Dispose();
    }

    /// <summary>DMA memory from the shim (SPDK needs its own allocator; io_uring gets aligned pages).</summary>
    private sealed class ShimAllocator : IDmaAllocator, IDisposable
    {
        private readonly SioDeviceHandle _device;

        // Holds a reference on the device so memory is never freed through a closed device.
        public ShimAllocator(SioDeviceHandle device)
        {
            bool added = false;
            device.DangerousAddRef(ref added);
            _device = device;
        }

        public void* Allocate(long size, int alignment)
        {
            void* p;
            int rc = StrataIo.sio_dma_alloc(_device.DangerousGetHandle(), (ulong)size, (uint)alignment, &p);
            DeviceErrors.ThrowIfError(rc, _device.Uri, StrataIoRuntime.LastErrorDetail);
            return p;
        }

        public void Free(void* pointer) => StrataIo.sio_dma_free(_device.DangerousGetHandle(), pointer);

        public void Dispose() => _device.DangerousRelease();
    }
}
