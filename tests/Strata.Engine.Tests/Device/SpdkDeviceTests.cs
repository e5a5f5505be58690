using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// The SPDK side of opening devices: environment options and nvme URIs. The checks that
/// need no target run in every build (a library without SPDK must say so, not guess);
/// the rest need STRATA_TEST_NVME_URI and are Inconclusive without it.
/// </summary>
[TestClass]
public sealed class SpdkDeviceTests
{
    [TestInitialize]
    public void Init() => TestDevices.EnsureShim();

    [TestMethod]
    public void EnvOptions_ToString_IsTheShimSyntax()
    {
        Assert.AreEqual("hugepages=1&mem_size_mb=0&shm_id=-1&pci=1", new SpdkEnvOptions().ToString());
        Assert.AreEqual("hugepages=0&mem_size_mb=1024&iova_mode=va&core_mask=0x2&shm_id=-1&pci=0",
            new SpdkEnvOptions { Hugepages = false, MemSizeMb = 1024, IovaMode = "va", CoreMask = "0x2", Pci = false }.ToString());
    }

    [TestMethod]
    public void Configure_BadOption_NamesTheOptionInEveryBuild()
    {
        var e = Assert.ThrowsExactly<DeviceArgumentException>(() => SpdkEnvironment.Configure("hugepages=maybe"));
        StringAssert.Contains(e.Message, "'hugepages'");
        StringAssert.Contains(e.Message, SpdkEnvironment.Name);
        e = Assert.ThrowsExactly<DeviceArgumentException>(() => SpdkEnvironment.Configure(new SpdkEnvOptions { Hugepages = false, IovaMode = "pa" }));
        StringAssert.Contains(e.Message, "iova_mode=pa needs hugepages");
    }

    [TestMethod]
    public void NvmeUri_LibraryWithoutSpdk_NotSupported()
    {
        if (SpdkEnvironment.IsAvailable)
            Assert.Inconclusive("this libstrata_io has the SPDK backend");
        var uri = "nvme-tcp://127.0.0.1:4420/nqn.2016-06.io.spdk:cnode1";
        var e = Assert.ThrowsExactly<DeviceNotSupportedException>(() => NativeBlockDevice.Open(uri).Dispose());
        StringAssert.Contains(e.Message, uri);
        StringAssert.Contains(e.Message, "SPDK");
        var c = Assert.ThrowsExactly<DeviceNotSupportedException>(() => SpdkEnvironment.Configure(new SpdkEnvOptions { Hugepages = false }));
        StringAssert.Contains(c.Message, "built without SPDK");
    }

    [TestMethod]
    public void NvmeUri_Malformed_NamesTheReason()
    {
        if (!SpdkEnvironment.IsAvailable)
            Assert.Inconclusive("this libstrata_io has no SPDK backend");
        var e = Assert.ThrowsExactly<DeviceArgumentException>(() => NativeBlockDevice.Open("nvme-tcp://127.0.0.1:4420/").Dispose());
        StringAssert.Contains(e.Message, "names no subsystem");
        e = Assert.ThrowsExactly<DeviceArgumentException>(() => NativeBlockDevice.Open("nvme-tcp://127.0.0.1:4420/nqn.x?colour=blue").Dispose());
        StringAssert.Contains(e.Message, "unknown option 'colour'");
    }

    [TestMethod]
    public void Open_NvmeTarget_SpdkGeometry()
    {
        var uri = TestDevices.NvmeTargetUri();
        using var dev = NativeBlockDevice.Open(uri + (uri.Contains('?') ? "&" : "?") + "qd=64");
        var g = dev.Geometry;
        Assert.AreEqual(DeviceKind.Spdk, g.Kind);
        Assert.AreEqual(64, g.QueueDepth);
        Assert.IsTrue(g.LogicalBlockSize is 512 or 4096, $"block size {g.LogicalBlockSize}");
        Assert.IsGreaterThan(0L, g.BlockCount);
        var want = DeviceFeatures.DirectIo | DeviceFeatures.Trim | DeviceFeatures.CompletionDetail;
        Assert.AreEqual(want, g.Features & want);
        Assert.IsFalse(dev.RegisteredArena, "SPDK memory needs no registration");
    }

    [TestMethod]
    public void Open_NvmeTarget_MissingNamespace_DeviceNotFound()
    {
        var uri = TestDevices.NvmeTargetUri() + "?ns=4242";
        if (uri.Count(ch => ch == '?') > 1)
            Assert.Inconclusive("STRATA_TEST_NVME_URI already has options");
        var e = Assert.ThrowsExactly<DeviceNotFoundException>(() => NativeBlockDevice.Open(uri).Dispose());
        StringAssert.Contains(e.Message, "no active namespace 4242");
        Assert.AreEqual(Errno.ENXIO, e.Errno);
    }

    [TestMethod]
    public async Task Read_TargetFailsIt_ExceptionCarriesNvmeStatus()
    {
        // A namespace whose reads the target fails (an SPDK error bdev, docs/spdk.md).
        var uri = Environment.GetEnvironmentVariable("STRATA_TEST_NVME_ERROR_URI");
        if (string.IsNullOrEmpty(uri))
            Assert.Inconclusive("set STRATA_TEST_NVME_ERROR_URI to a namespace whose reads fail (docs/spdk.md)");
        TestDevices.ConfigureSpdkEnvironment();
        await using var dev = NativeBlockDevice.Open(uri);
        using var buf = dev.Buffers.Rent(dev.Geometry.LogicalBlockSize);
        var e = await Assert.ThrowsAsync<DeviceException>(async () => await dev.ReadAsync(0, buf.Memory));
        StringAssert.Contains(e.Message, "read of");
        StringAssert.Contains(e.Message, "NVMe status 0x");
        Assert.IsFalse(e.Message.Contains('\n'), "one line");
        await dev.WriteAsync(0, buf.Memory); // only reads fail there
    }

    [TestMethod]
    public void Configure_AfterStart_OtherOptionsBusy()
    {
        var uri = TestDevices.NvmeTargetUri();
        using (NativeBlockDevice.Open(uri))
        {
        }
        // The environment started with the test options; it cannot change inside this process.
        var e = Assert.ThrowsExactly<DeviceBusyException>(() => SpdkEnvironment.Configure("hugepages=1&mem_size_mb=64&core_mask=0x1"));
        StringAssert.Contains(e.Message, "already runs with");
    }
}
