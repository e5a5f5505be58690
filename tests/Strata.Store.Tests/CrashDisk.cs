using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Store.Tests;

/// <summary>What happens to one device command.</summary>
internal enum CrashAction { Run, PowerLost, Fault }

/// <summary>What a crash did to one write pending since the last flush.</summary>
internal enum PendingFate { Lost, Kept, Torn }

/// <summary>
/// Shared power switch of the disks of one simulated machine, which can also
/// inject one device error (EIO) at a chosen command.
/// </summary>
internal sealed class CrashSwitch
{
    private int _ops;

    /// <summary>Device commands (on any disk) after which power fails; 0 = never.</summary>
    public int CrashAfter { get; private set; }

    /// <summary>The command (counted like CrashAfter) that fails with EIO; 0 = none.</summary>
    public int FaultAt { get; private set; }

    public bool Crashed { get; private set; }

    /// <summary>Power fails at the next flush command (before it runs): the writes since the last flush are all pending.</summary>
    public bool CrashAtFlush { get; set; }

    public bool Faulted { get; private set; }

    public Random Rng { get; private set; } = new(0);

    /// <summary>Counts a command and says whether it runs, fails, or never happens.</summary>
    public CrashAction Tick(IoOpcode opcode)
    {
        lock (this)
        {
            if (CrashAtFlush && opcode == IoOpcode.Flush)
                Crashed = true;
            if (Crashed)
                return CrashAction.PowerLost;
            ++_ops;
            if (FaultAt > 0 && _ops == FaultAt)
            {
                Faulted = true;
                return CrashAction.Fault;
            }
            if (CrashAfter > 0 && _ops >= CrashAfter)
                Crashed = true;
            return Crashed ? CrashAction.PowerLost : CrashAction.Run;
        }
    }

    public void Reset(int crashAfter, int faultAt = 0, Random? rng = null)
    {
        lock (this)
        {
            _ops = 0;
            CrashAfter = crashAfter;
            FaultAt = faultAt;
            Faulted = false;
            Crashed = false;
            if (rng != null)
                Rng = rng;
        }
    }

    /// <summary>Cuts the power now (after the workload, or right after a fault).</summary>
    public void CutPower()
    {
        lock (this)
            Crashed = true;
    }
}

/// <summary>
/// An in-memory disk with a volatile write cache: reads see every completed write,
/// but only flushed (or FUA) writes are durable. At a crash, a random subset of
/// the writes pending since the last flush reaches the media, one of them torn
/// (a random subset of its 512-byte sectors), and the rest is lost.
/// </summary>
internal sealed class CrashDisk : MemoryBlockDevice
{
    private const int Sector = 512;
    private readonly Dictionary<long, byte[]> _durable = new();
    private readonly List<(long Offset, byte[]? Data, long Length)> _pending = new();
    private readonly CrashSwitch _power;

    public CrashDisk(string name, long capacity, CrashSwitch power) : base(name, capacity)
    {
        _power = power;
    }

    /// <summary>Writes (and trims) completed since the last flush: what a crash now could lose.</summary>
    public int PendingWrites
    {
        get
        {
            lock (_pending)
                return _pending.Count;
        }
    }

    /// <summary>
    /// After this many of its own commands (0: never), every write, flush, trim and write-zeroes of this
    /// disk fails with EIO, reads still work (a disk that stopped writing, as the shim's
    /// `fail_after=N&amp;fail_ops=write,flush`). Not carried over a crash: the disk after it is sound.
    /// </summary>
    public int FailWritesAfter { get; set; }

    /// <summary>Whether a command failed because of <see cref="FailWritesAfter"/>.</summary>
    public bool WritesFailed { get; private set; }

    private int _commands;

    protected override void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
    {
        var action = _power.Tick(opcode);
        if (action == CrashAction.Run && FailWritesAfter > 0 && Interlocked.Increment(ref _commands) > FailWritesAfter && opcode != IoOpcode.Read)
        {
            WritesFailed = true;
            throw new DeviceException(Name, Errno.EIO, $"injected {opcode} failure: the disk stopped writing");
        }
        switch (action)
        {
            case CrashAction.PowerLost:
                throw new DeviceException(Name, Errno.EIO, "simulated power loss");
            case CrashAction.Fault when opcode == IoOpcode.Flush:
                // Like Linux after a writeback error: some dirty data reached the media,
                // the rest is dropped, and the cache forgets it was ever dirty.
                lock (_pending)
                {
                    foreach (var p in _pending.Where(_ => _power.Rng.Next(2) == 0))
                        Apply(_durable, p.Offset, p.Data ?? new byte[p.Length]);
                    _pending.Clear();
                }
                throw new DeviceException(Name, Errno.EIO, "injected flush failure");
            case CrashAction.Fault:
                throw new DeviceException(Name, Errno.EIO, $"injected {opcode} failure");
        }
        base.Execute(opcode, offset, length, buffer, flags);
        lock (_pending)
        {
            switch (opcode)
            {
                case IoOpcode.Write when (flags & WriteFlags.Fua) != 0:
                    Apply(_durable, offset, buffer.Span);
                    break;
                case IoOpcode.Write:
                    _pending.Add((offset, buffer.ToArray(), buffer.Length));
                    break;
                case IoOpcode.Trim:
                case IoOpcode.WriteZeroes:
                    _pending.Add((offset, null, length));
                    break;
                case IoOpcode.Flush:
                    foreach (var p in _pending)
                        Apply(_durable, p.Offset, p.Data ?? new byte[p.Length]);
                    _pending.Clear();
                    break;
            }
        }
    }

    /// <summary>The disk as the machine finds it after power returns.</summary>
    public CrashDisk AfterCrash(Random rng, CrashSwitch power)
    {
        int torn = -1, survivor = 0;
        List<bool> kept;
        lock (_pending)
            kept = _pending.Select(_ => rng.Next(2) == 0).ToList();
        int survivors = kept.Count(k => k);
        if (survivors > 0)
            torn = rng.Next(survivors);
        return AfterCrash(power, (i, _, _) =>
        {
            if (!kept[i])
                return PendingFate.Lost;
            return survivor++ == torn ? PendingFate.Torn : PendingFate.Kept;
        }, rng);
    }

    /// <summary>
    /// The disk after a crash where <paramref name="fate"/> decides what became of each
    /// pending write (index in issue order, offset, length); a torn write keeps a random
    /// subset of its 512-byte sectors (with rng), else its first half.
    /// </summary>
    public CrashDisk AfterCrash(CrashSwitch power, Func<int, long, long, PendingFate> fate, Random? rng = null)
    {
        var image = new Dictionary<long, byte[]>();
        lock (_pending)
        {
            foreach (var (page, data) in _durable)
                image[page] = (byte[])data.Clone();
            for (int i = 0; i < _pending.Count; i++)
            {
                var (offset, data, length) = _pending[i];
                data ??= new byte[length];
                switch (fate(i, offset, length))
                {
                    case PendingFate.Kept:
                        Apply(image, offset, data);
                        break;
                    case PendingFate.Torn:
                        int sectors = (data.Length + Sector - 1) / Sector;
                        for (int s = 0; s < sectors; s++)
                            if (rng != null ? rng.Next(2) == 0 : s < sectors / 2)
                                Apply(image, offset + s * Sector, data.AsSpan(s * Sector, Math.Min(Sector, data.Length - s * Sector)));
                        break;
                }
            }
        }
        var disk = new CrashDisk(Name, Geometry.Capacity, power);
        foreach (var (page, data) in image)
        {
            disk.WriteBytes(page * PageSize, data);
            disk._durable[page] = data;
        }
        return disk;
    }

    private static void Apply(Dictionary<long, byte[]> pages, long offset, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            long page = offset / PageSize;
            int within = (int)(offset % PageSize);
            int n = Math.Min(data.Length, PageSize - within);
            if (!pages.TryGetValue(page, out var p))
                pages[page] = p = new byte[PageSize];
            data[..n].CopyTo(p.AsSpan(within));
            data = data[n..];
            offset += n;
        }
    }
}

/// <summary>Reopens a crashed single-disk pool 'tank' and says which of its whole contents image c/v's chunk 0 holds.</summary>
internal static class CrashReopen
{
    /// <summary>
    /// Reopens <paramref name="disk"/> as a crash with <paramref name="fate"/> leaves it (on a copy: the disk stays as it
    /// is) and reads chunk 0: no read may meet a checksum error, and the chunk must hold one of
    /// <paramref name="contents"/> whole; returns which.
    /// </summary>
    public static async Task<int> WhichAsync(CrashDisk disk, List<byte[]> contents, Func<int, long, long, PendingFate> fate, string what, bool readOnly = false)
    {
        var after = disk.AfterCrash(new CrashSwitch(), fate, new Random(7));
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.OpenAsync([after], new StorageEngineOptions { WritebackFlushInterval = Timeout.InfiniteTimeSpan, Ras = ras, ReadOnly = readOnly });
        try
        {
            var pool = await engine.OpenPoolAsync("tank");
            var back = new byte[contents[0].Length];
            await pool.OpenImage("c", "v").ReadAsync(0, back);
            Assert.IsFalse(ras.Events.Any(e => e.Id is RasIds.DataChecksumMismatch or RasIds.DataUnrecoverable), $"{what}: {string.Join("; ", ras.Events.Select(e => e.Message))}");
            int which = contents.FindIndex(c => c.AsSpan().SequenceEqual(back));
            Assert.IsTrue(which >= 0, $"{what}: the chunk holds bytes it never held as a whole");
            return which;
        }
        finally
        {
            await engine.DisposeAsync();
        }
    }
}
