using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// Opens a fresh device of a given backend for a contract test. Backends not
/// available here make the test Inconclusive, never Passed.
/// </summary>
internal sealed class TestDevices : IDisposable
{
    public const long Capacity = 64L * 1024 * 1024;

    private readonly string _dir = Directory.CreateTempSubdirectory("strata-dev-").FullName;

    public string Path(string name) => System.IO.Path.Combine(_dir, name);

    public IBlockDevice Open(DeviceKind kind, string options = "", DeviceOptions? deviceOptions = null)
    {
        switch (kind)
        {
            case DeviceKind.Memory:
                return new MemoryBlockDevice("mem:test", Capacity);
            case DeviceKind.Uring:
                EnsureShim();
                return NativeBlockDevice.Open($"file:{Path("dev")}?create=1&size={Capacity}{(options.Length > 0 ? "&" + options : "")}", deviceOptions);
            case DeviceKind.Spdk:
                var uri = NvmeTargetUri();
                var dev = NativeBlockDevice.Open(uri, deviceOptions);
                if (dev.Geometry.Kind != DeviceKind.Spdk)
                {
                    dev.Dispose();
                    Assert.Fail($"STRATA_TEST_NVME_URI={uri} opened a {dev.Geometry.Kind} device: the SPDK rows must run on the SPDK backend");
                }
                return dev;
            default:
                throw new ArgumentOutOfRangeException(nameof(kind));
        }
    }

    /// <summary>SPDK environment options of the test process (STRATA_TEST_SPDK_ENV overrides them).</summary>
    public const string DefaultSpdkEnv = "hugepages=0&mem_size_mb=512&pci=0";

    /// <summary>
    /// The NVMe-oF target the SPDK rows run against, with the SPDK environment configured;
    /// Inconclusive when STRATA_TEST_NVME_URI is not set. The target's namespace is scratch space.
    /// </summary>
    public static string NvmeTargetUri()
    {
        var uri = Environment.GetEnvironmentVariable("STRATA_TEST_NVME_URI");
        if (string.IsNullOrEmpty(uri))
            Assert.Inconclusive("SPDK backend not exercised: set STRATA_TEST_NVME_URI to an NVMe-oF target (nvme-tcp://127.0.0.1:4420/nqn...)");
        ConfigureSpdkEnvironment();
        return uri!;
    }

    /// <summary>Sets the test process's SPDK environment options; a library without SPDK fails here (ENOTSUP).</summary>
    public static void ConfigureSpdkEnvironment()
    {
        EnsureShim();
        var env = Environment.GetEnvironmentVariable("STRATA_TEST_SPDK_ENV");
        // A named target must be tested, not skipped: no Inconclusive past this point.
        SpdkEnvironment.Configure(string.IsNullOrEmpty(env) ? DefaultSpdkEnv : env);
    }

    public static void EnsureShim()
    {
        try
        {
            StrataIoRuntime.EnsureCompatible();
        }
        catch (DllNotFoundException e)
        {
            Assert.Inconclusive($"libstrata_io is not built: {e.Message}");
        }
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
