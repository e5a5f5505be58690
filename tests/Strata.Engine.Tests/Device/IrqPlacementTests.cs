using Strata.Engine.Device;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// Keeping a polling thread off the CPU that takes its disk's completion interrupts: the /proc and /sys
/// lookup on laid-out trees of the shapes the kernel gives (a virtio disk with one request queue, a
/// partition, a multi-queue disk, an overlay mount), and on this machine's own disk, where the
/// poller of a file device is checked to have placed itself off that CPU.
/// </summary>
[TestClass]
public sealed class IrqPlacementTests
{
    private string _root = null!;

    [TestInitialize]
    public void Init() => _root = Directory.CreateTempSubdirectory("strata-irq-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_root, recursive: true);

    private string Proc => Path.Combine(_root, "proc");
    private string Sys => Path.Combine(_root, "sys");

    private void Write(string relative, string text)
    {
        string path = Path.Combine(_root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }

    /// <summary>
    /// The development VM's shape: /dev/vda (254:0, partition vda1 254:1) on virtio1 under PCI device
    /// 0000:00:02.0, MSI-X interrupts 35 (config) and 36 (the request queue, on CPU 1).
    /// </summary>
    private void LayOutVirtioDisk(int queues = 1)
    {
        Write("proc/self/mountinfo",
            "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
            "27 26 254:1 / /data rw,relatime - ext4 /dev/vda1 rw\n" +
            "28 26 0:55 / /data/over\\040lay rw - overlay overlay rw\n");
        Write("proc/interrupts",
            "           CPU0       CPU1\n" +
            " 35:          0          1  PCI-MSIX-0000:00:02.0   0-edge      virtio1-config\n" +
            " 36:         12   39272952  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n" +
            " 37:        500        500  PCI-MSIX-0000:00:03.0   0-edge      virtio2-req.0\n" +
            "NMI:          0          0   Non-maskable interrupts\n");
        Write("proc/irq/36/effective_affinity_list", "1\n");
        Write("proc/irq/36/smp_affinity_list", "0-1\n");
        Write("proc/irq/35/effective_affinity_list", "0\n");
        string pci = "sys/devices/pci0000:00/0000:00:02.0";
        Write($"{pci}/msi_irqs/35", "msix\n");
        Write($"{pci}/msi_irqs/36", "msix\n");
        string disk = $"{pci}/virtio1/block/vda";
        for (int q = 0; q < queues; q++)
            Write($"{disk}/mq/{q}/cpu_list", "0-1\n");
        Write($"{disk}/vda1/partition", "1\n");
        Directory.CreateDirectory(Path.Combine(Sys, "dev", "block"));
        File.CreateSymbolicLink(Path.Combine(Sys, "dev", "block", "254:0"), Path.Combine(_root, disk));
        File.CreateSymbolicLink(Path.Combine(Sys, "dev", "block", "254:1"), Path.Combine(_root, disk, "vda1"));
        File.CreateSymbolicLink(Path.Combine(_root, disk, "device"), Path.Combine(_root, pci, "virtio1"));
    }

    [TestMethod]
    public void SingleQueueDisk_TheRequestInterruptsCpu()
    {
        LayOutVirtioDisk();
        CollectionAssert.AreEqual(new[] { 1 }, IrqPlacement.CompletionCpus("/var/tmp/t.dat", Proc, Sys));
    }

    [TestMethod]
    public void Partition_ResolvesToItsDisk()
    {
        LayOutVirtioDisk();
        Assert.AreEqual("254:1", IrqPlacement.DeviceOf("/data/images/t.dat", Proc));
        CollectionAssert.AreEqual(new[] { 1 }, IrqPlacement.CompletionCpus("/data/images/t.dat", Proc, Sys));
    }

    [TestMethod]
    public void MultiQueueDisk_NothingToAvoid()
    {
        LayOutVirtioDisk(queues: 2);
        Assert.AreEqual(0, IrqPlacement.CompletionCpus("/var/tmp/t.dat", Proc, Sys).Length);
    }

    [TestMethod]
    public void MountWithoutBlockDevice_NothingToAvoid()
    {
        LayOutVirtioDisk();
        Assert.AreEqual("0:55", IrqPlacement.DeviceOf("/data/over lay/t.dat", Proc), "mountinfo's \\040 is a space");
        Assert.AreEqual(0, IrqPlacement.CompletionCpus("/data/over lay/t.dat", Proc, Sys).Length);
        Assert.AreEqual("254:1", IrqPlacement.DeviceOf("/data/overlay2/t.dat", Proc), "a mount point is a whole path component");
    }

    [TestMethod]
    public void NoEffectiveAffinity_FallsBackToTheConfiguredOne()
    {
        LayOutVirtioDisk();
        File.Delete(Path.Combine(Proc, "irq", "36", "effective_affinity_list"));
        CollectionAssert.AreEqual(new[] { 0, 1 }, IrqPlacement.CompletionCpus("/var/tmp/t.dat", Proc, Sys));
    }

    [TestMethod]
    public void MissingProcOrSys_NothingToAvoid()
    {
        Assert.AreEqual(0, IrqPlacement.CompletionCpus("/var/tmp/t.dat", Proc, Sys).Length);
        Write("proc/self/mountinfo", "26 1 254:0 / / rw - ext4 /dev/vda rw\n");
        Assert.AreEqual(0, IrqPlacement.CompletionCpus("/var/tmp/t.dat", Proc, Sys).Length);
    }

    [TestMethod]
    [DataRow("0-1,3\n", new[] { 0, 1, 3 })]
    [DataRow("5", new[] { 5 })]
    [DataRow("2-2,0", new[] { 0, 2 })]
    [DataRow("3-1", new int[0])]
    [DataRow("x", new int[0])]
    [DataRow("0-99999", new int[0])]
    public void ParseCpuList(string text, int[] expected) =>
        CollectionAssert.AreEqual(expected, IrqPlacement.ParseCpuList(text));

    /// <summary>
    /// This machine's disk: by default a file device's poller runs on the CPUs taking the disk's
    /// completion interrupts, with Avoid off them, and with Ignore where the scheduler puts it (each
    /// read back from the kernel on the polling thread).
    /// </summary>
    [TestMethod]
    public async Task FileDevice_PollerJoinsOrAvoidsTheInterruptCpus()
    {
        using var devices = new TestDevices();
        TestDevices.EnsureShim();
        string path = devices.Path("irq");
        string uri = $"file:{path}?create=1&size=4M&direct=1"; // direct: the read goes through the poller, not the page-cache path
        var interrupts = IrqPlacement.CompletionCpus(path);
        var allowed = ThreadAffinity.Allowed();
        if (interrupts.Length == 0 || allowed.All(c => interrupts.Contains(c)) || !allowed.Any(c => interrupts.Contains(c)))
            Assert.Inconclusive($"this machine's disk under {path} has no single completion CPU to join or avoid (interrupt CPUs: {string.Join(",", interrupts)}; allowed: {string.Join(",", allowed)})");

        Assert.AreEqual(InterruptPlacement.Ignore, new DeviceOptions().InterruptPlacement, "the scheduler places the poller by default");
        foreach (var mode in new[] { InterruptPlacement.Join, InterruptPlacement.Avoid })
        {
            using var dev = NativeBlockDevice.Open(uri, new DeviceOptions { InterruptPlacement = mode });
            CollectionAssert.AreEqual(interrupts, dev.InterruptCpus.ToArray());
            using var buf = dev.Buffers.Rent(4096);
            // The loop applies a placement before it submits anything queued after the device attached,
            // so once this read completed the thread has placed itself.
            await dev.ReadAsync(0, buf.Memory[..4096]);
            var placed = dev.PollerPlacement;
            Assert.IsNotNull(placed, $"the poller placed itself ({mode})");
            Assert.IsTrue(placed.Length > 0);
            foreach (int cpu in placed)
            {
                Assert.IsTrue(allowed.Contains(cpu));
                if (mode == InterruptPlacement.Join)
                    Assert.IsTrue(interrupts.Contains(cpu), $"joining poller may run on CPU {cpu}, which takes no completion interrupt: {string.Join(",", placed)}");
                else
                    Assert.IsFalse(interrupts.Contains(cpu), $"avoiding poller may run on interrupt CPU {cpu}: {string.Join(",", placed)}");
            }
        }

        using (var dev = NativeBlockDevice.Open(uri, new DeviceOptions { InterruptPlacement = InterruptPlacement.Ignore }))
        {
            using var buf = dev.Buffers.Rent(4096);
            await dev.ReadAsync(0, buf.Memory[..4096]);
            Assert.AreEqual(0, dev.InterruptCpus.Count);
            Assert.IsNull(dev.PollerPlacement, "left to the scheduler");
        }
    }

    /// <summary>
    /// A joining poller serves lone commands on the interrupt CPUs and moves off them while it serves
    /// many at once (QD 32 reads), and back when the load goes back to one at a time; counted in loop
    /// turns, not time, so the bounds below are generous counts of reads.
    /// </summary>
    [TestMethod]
    public async Task JoiningPoller_DeepThenLoneReads_MovesOffTheInterruptCpusAndBack()
    {
        using var devices = new TestDevices();
        TestDevices.EnsureShim();
        string path = devices.Path("irqdepth");
        string uri = $"file:{path}?create=1&size=4M&direct=1";
        var interrupts = IrqPlacement.CompletionCpus(path);
        var allowed = ThreadAffinity.Allowed();
        if (interrupts.Length == 0 || allowed.All(c => interrupts.Contains(c)) || !allowed.Any(c => interrupts.Contains(c)))
            Assert.Inconclusive($"this machine's disk under {path} has no single completion CPU to join (interrupt CPUs: {string.Join(",", interrupts)}; allowed: {string.Join(",", allowed)})");

        using var dev = NativeBlockDevice.Open(uri, new DeviceOptions { InterruptPlacement = InterruptPlacement.Join });
        var buffers = Enumerable.Range(0, 32).Select(_ => dev.Buffers.Rent(4096)).ToArray();
        try
        {
            // Written first: reads of a sparse file's holes complete inside the submission, with no interrupt.
            using (var fill = dev.Buffers.Rent(1 << 20))
            {
                fill.Memory.Span[..(1 << 20)].Fill(0x5a);
                for (long off = 0; off < 4L << 20; off += 1 << 20)
                    await dev.WriteAsync(off, fill.Memory[..(1 << 20)]);
                await dev.FlushAsync();
            }
            await dev.ReadAsync(0, buffers[0].Memory[..4096]);
            Assert.IsTrue(dev.PollerPlacement!.All(interrupts.Contains), "lone reads: on the interrupt CPUs");

            // 32 reads in flight (each worker issues its next read when its last one completes).
            long reads = 0;
            const long MaxDeepReads = 2_000_000;
            await Task.WhenAll(buffers.Select((b, i) => Task.Run(async () =>
            {
                long off = i * 4096L;
                while (dev.PollerPlacementMoves == 0 && Interlocked.Increment(ref reads) < MaxDeepReads)
                {
                    await dev.ReadAsync(off, b.Memory[..4096]);
                    off = (off + 32 * 4096L) % (4L << 20);
                }
            })));
            Assert.AreEqual(1, dev.PollerPlacementMoves, $"moved off after {reads} reads at QD 32");
            Assert.IsFalse(dev.PollerPlacement!.Any(interrupts.Contains), $"deep: off the interrupt CPUs ({string.Join(",", dev.PollerPlacement!)})");

            for (long i = 0; i < 1_000_000 && dev.PollerPlacementMoves == 1; i++)
                await dev.ReadAsync(i % 1024 * 4096, buffers[0].Memory[..4096]);
            Assert.AreEqual(2, dev.PollerPlacementMoves, "moved back under lone reads");
            Assert.IsTrue(dev.PollerPlacement!.All(interrupts.Contains), $"lone reads again: on the interrupt CPUs ({string.Join(",", dev.PollerPlacement!)})");
        }
        finally
        {
            foreach (var b in buffers)
                b.Dispose();
        }
    }
}
