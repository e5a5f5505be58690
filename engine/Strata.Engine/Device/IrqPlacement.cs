using System.Globalization;

namespace Strata.Engine.Device;

/// <summary>
/// Which CPUs take the completion interrupt of the block device under a file, so that a polling
/// thread can run on them (the default) or stay off them. On a single-queue device (virtio-blk with
/// one request queue, as on the development VM) every completion interrupts one CPU, wherever the
/// I/O was submitted. io_uring posts a read's or write's completion through task work of the
/// submitting thread; a poller spinning on the interrupt's CPU runs it as the interrupt returns
/// (one io_uring_enter per 4 KiB read at QD 1, counted), while a poller elsewhere sees
/// IORING_SQ_TASKRUN and must enter the kernel again (two), after a wake-up of the interrupt's CPU
/// if it was idle. A multi-queue device (NVMe, virtio with a queue per CPU) interrupts the
/// submitting CPU's own queue, so there is nothing to place and the answer is empty.
/// docs/device.md, "Poller placement".
/// </summary>
/// <remarks>
/// Read from /proc and /sys: the file's mount (its device number in /proc/self/mountinfo), the
/// block device's node in /sys/dev/block (a partition's parent disk), its hardware queues
/// (mq/), and the MSI interrupts of the device that carries it, of which the one with the most
/// interrupts (/proc/interrupts) is the request queue's; its effective affinity is the answer.
/// Anything missing (overlay or tmpfs mounts, dm devices, no MSI, another OS) gives an empty set:
/// the poller is then left to the scheduler, as before.
/// </remarks>
internal static class IrqPlacement
{
    /// <summary>The CPUs taking the completion interrupts of the single-queue device holding <paramref name="path"/>; empty when unknown or multi-queue.</summary>
    public static int[] CompletionCpus(string path, string procRoot = "/proc", string sysRoot = "/sys")
    {
        try
        {
            string full = Path.GetFullPath(path);
            if (DeviceOf(full, procRoot) is not { } dev)
                return [];
            return CompletionCpusOf(dev, procRoot, sysRoot);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or ArgumentException)
        {
            return [];
        }
    }

    /// <summary>The device number ("major:minor") of the mount holding <paramref name="fullPath"/>: the longest mount point that is its prefix.</summary>
    internal static string? DeviceOf(string fullPath, string procRoot)
    {
        string? best = null;
        int bestLen = -1;
        foreach (var line in File.ReadLines(Path.Combine(procRoot, "self", "mountinfo")))
        {
            // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": ID, parent, major:minor, root, mount point, ...
            var f = line.Split(' ');
            if (f.Length < 5)
                continue;
            string mount = Unescape(f[4]);
            bool under = mount == "/" || fullPath == mount || fullPath.StartsWith(mount + "/", StringComparison.Ordinal);
            if (under && mount.Length >= bestLen)
            {
                best = f[2];
                bestLen = mount.Length;
            }
        }
        return best;
    }

    /// <summary>Mount points in mountinfo escape space, tab, newline and backslash as \ooo.</summary>
    private static string Unescape(string s)
    {
        if (!s.Contains('\\'))
            return s;
        var sb = new System.Text.StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && IsOctal(s, i + 1))
            {
                sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
                sb.Append(s[i]);
        }
        return sb.ToString();
    }

    private static bool IsOctal(string s, int at) =>
        at + 3 <= s.Length && s[at] is >= '0' and <= '7' && s[at + 1] is >= '0' and <= '7' && s[at + 2] is >= '0' and <= '7';

    internal static int[] CompletionCpusOf(string majorMinor, string procRoot, string sysRoot)
    {
        string node = Path.Combine(sysRoot, "dev", "block", majorMinor);
        if (!Directory.Exists(node))
            return [];
        string disk = Resolve(node);
        if (File.Exists(Path.Combine(disk, "partition")))
            disk = Path.GetDirectoryName(disk)!;
        string mq = Path.Combine(disk, "mq");
        if (!Directory.Exists(mq) || Directory.GetDirectories(mq).Length != 1)
            return []; // no blk-mq (dm, loop without mq) or a queue per CPU group: nothing to avoid
        string device = Path.Combine(disk, "device");
        if (!Directory.Exists(device))
            return [];
        string? msi = null;
        for (string? d = Resolve(device); d != null && d.Length > sysRoot.Length; d = Path.GetDirectoryName(d))
        {
            if (Directory.Exists(Path.Combine(d, "msi_irqs")))
            {
                msi = Path.Combine(d, "msi_irqs");
                break;
            }
        }
        if (msi == null)
            return [];
        var irqs = new HashSet<int>();
        foreach (var e in Directory.EnumerateFileSystemEntries(msi))
            if (int.TryParse(Path.GetFileName(e), NumberStyles.None, CultureInfo.InvariantCulture, out int irq))
                irqs.Add(irq);
        if (irqs.Count == 0)
            return [];
        var counts = InterruptCounts(Path.Combine(procRoot, "interrupts"), irqs);
        // The request queue's interrupt is the busy one (the config interrupt fires a handful of times).
        int chosen = -1;
        long most = 0;
        foreach (var (irq, count) in counts)
        {
            if (count > most || (count == most && chosen >= 0 && irq < chosen))
            {
                chosen = irq;
                most = count;
            }
        }
        if (chosen < 0)
            return [];
        string dir = Path.Combine(procRoot, "irq", chosen.ToString(CultureInfo.InvariantCulture));
        foreach (var name in new[] { "effective_affinity_list", "smp_affinity_list" })
        {
            string file = Path.Combine(dir, name);
            if (File.Exists(file) && ParseCpuList(File.ReadAllText(file)) is { Length: > 0 } cpus)
                return cpus;
        }
        return [];
    }

    private static string Resolve(string path)
    {
        var info = new DirectoryInfo(path);
        return info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? info.FullName;
    }

    /// <summary>Total interrupts per IRQ (summed over CPUs) of the IRQs asked for.</summary>
    internal static Dictionary<int, long> InterruptCounts(string file, HashSet<int> irqs)
    {
        var counts = new Dictionary<int, long>();
        bool header = true;
        foreach (var line in File.ReadLines(file))
        {
            if (header)
            {
                header = false;
                continue;
            }
            int colon = line.IndexOf(':');
            if (colon < 0 || !int.TryParse(line.AsSpan(0, colon).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int irq) || !irqs.Contains(irq))
                continue;
            long total = 0;
            foreach (var field in line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (!long.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out long n))
                    break; // the counts end where the controller's name begins
                total += n;
            }
            counts[irq] = total;
        }
        return counts;
    }

    /// <summary>A kernel CPU list ("0-3,8,10-11") as CPUs; empty when malformed.</summary>
    internal static int[] ParseCpuList(string text)
    {
        var cpus = new SortedSet<int>();
        foreach (var part in text.Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int dash = part.IndexOf('-');
            if (dash < 0)
            {
                if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int c) || c >= 4096)
                    return [];
                cpus.Add(c);
                continue;
            }
            if (!int.TryParse(part.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out int lo)
                || !int.TryParse(part.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int hi)
                || hi < lo || hi >= 4096)
                return [];
            for (int c = lo; c <= hi; c++)
                cpus.Add(c);
        }
        return [.. cpus];
    }
}
