using System.Globalization;
using System.Runtime.InteropServices;

namespace Strata.Engine.Device;

/// <summary>
/// CPU placement of polling threads (sched_setaffinity on the calling thread). A busy poller that
/// shares a core with another busy poller, such as an SPDK target's reactor, halves both.
/// </summary>
internal static unsafe partial class ThreadAffinity
{
    private const int MaskWords = 16; // 1024 CPUs

    /// <summary>sched_getaffinity(2) of thread <c>pid</c> (0: the calling thread).</summary>
    [LibraryImport("libc", EntryPoint = "sched_getaffinity", SetLastError = true)]
    private static partial int SchedGetAffinity(int pid, nuint size, ulong* mask);

    /// <summary>sched_setaffinity(2) of the calling thread (<c>pid</c> 0).</summary>
    [LibraryImport("libc", EntryPoint = "sched_setaffinity", SetLastError = true)]
    private static partial int SchedSetAffinity(int pid, nuint size, ulong* mask);

    /// <summary>
    /// The CPUs the process may run on: the mask of its main thread (sched_getaffinity of the pid),
    /// never that of the calling thread, which may be a placed poller running a continuation inline
    /// (CI of 460cb21 refused PollerCpus outside such a poller's CPU).
    /// </summary>
    public static int[] Allowed() => Of(Environment.ProcessId) ?? [.. Enumerable.Range(0, Environment.ProcessorCount)];

    /// <summary>The CPUs the calling thread may run on.</summary>
    public static int[] CurrentThread() => Of(0) ?? Allowed();

    /// <summary>The CPUs thread <paramref name="tid"/> (0: the calling one) may run on, or null when the kernel does not say.</summary>
    private static int[]? Of(int tid)
    {
        ulong* mask = stackalloc ulong[MaskWords];
        if (SchedGetAffinity(tid, (nuint)(MaskWords * sizeof(ulong)), mask) != 0)
            return null;
        var cpus = new List<int>();
        for (int i = 0; i < MaskWords * 64; i++)
            if ((mask[i / 64] & (1UL << (i % 64))) != 0)
                cpus.Add(i);
        return cpus.ToArray();
    }

    /// <summary>Why polling threads cannot run on <paramref name="cpus"/> (one this process may not use), or null when they can.</summary>
    public static string? Unavailable(IReadOnlyList<int>? cpus)
    {
        if (cpus is null)
            return null;
        var allowed = Allowed();
        foreach (int cpu in cpus)
            if (Array.IndexOf(allowed, cpu) < 0)
                return $"poller CPU {cpu} is not one this process may run on ({string.Join(",", allowed)})";
        return null;
    }

    /// <summary>Binds the calling thread to one CPU; 0 or the errno.</summary>
    public static int PinCurrentThread(int cpu) => SetCurrentThread([cpu]);

    /// <summary>Lets the calling thread run on <paramref name="cpus"/> (each below 1024); 0 or the errno.</summary>
    public static int SetCurrentThread(IReadOnlyList<int> cpus)
    {
        ulong* mask = stackalloc ulong[MaskWords];
        new Span<ulong>(mask, MaskWords).Clear();
        foreach (int cpu in cpus)
            if (cpu is >= 0 and < MaskWords * 64)
                mask[cpu / 64] |= 1UL << (cpu % 64);
        return SchedSetAffinity(0, (nuint)(MaskWords * sizeof(ulong)), mask) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>The CPUs of a hexadecimal mask such as "0x6" (1 and 2).</summary>
    public static int[] FromMask(string hex)
    {
        var digits = hex.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? hex[2..] : hex;
        var cpus = new List<int>();
        for (int i = 0; i < digits.Length; i++)
        {
            int v = int.Parse(digits[digits.Length - 1 - i].ToString(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            for (int b = 0; b < 4; b++)
                if ((v & (1 << b)) != 0)
                    cpus.Add(i * 4 + b);
        }
        return cpus.ToArray();
    }
}
