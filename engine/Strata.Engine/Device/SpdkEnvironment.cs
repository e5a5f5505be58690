using System.Globalization;
using System.Text;
using Strata.Interop;
using Strata.Interop.Native;

namespace Strata.Engine.Device;

/// <summary>
/// Options of the process-wide SPDK environment (DPDK's EAL), which the shim starts once,
/// on the first nvme-* open. The defaults are SPDK's: hugepages, core 0, PCI scanning.
/// </summary>
public sealed record SpdkEnvOptions
{
    /// <summary>Use hugepages (false: ordinary memory, NVMe-oF only, IOVA mode va).</summary>
    public bool Hugepages { get; init; } = true;

    /// <summary>Memory for DMA buffers and queues in MB; 0 for SPDK's default.</summary>
    public int MemSizeMb { get; init; }

    /// <summary>"va" or "pa"; null lets DPDK choose.</summary>
    public string? IovaMode { get; init; }

    /// <summary>Hexadecimal CPU mask of the environment's cores (SPDK's default 0x1); null for the default.</summary>
    public string? CoreMask { get; init; }

    /// <summary>Shared-memory group id; -1 keeps the process private (the default).</summary>
    public int ShmId { get; init; } = -1;

    /// <summary>Scan the PCI bus (needed for nvme-pcie; false for NVMe-oF only).</summary>
    public bool Pci { get; init; } = true;

    /// <summary>The CPUs of <see cref="CoreMask"/> (for DeviceOptions.PollerCpus), or null when it is unset.</summary>
    public IReadOnlyList<int>? CoreMaskCpus() => string.IsNullOrEmpty(CoreMask) ? null : ThreadAffinity.FromMask(CoreMask);

    /// <summary>The shim's option text, "hugepages=0&amp;mem_size_mb=1024&amp;...".</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append("hugepages=").Append(Hugepages ? '1' : '0');
        sb.Append("&mem_size_mb=").Append(MemSizeMb.ToString(CultureInfo.InvariantCulture));
        if (!string.IsNullOrEmpty(IovaMode))
            sb.Append("&iova_mode=").Append(IovaMode);
        if (!string.IsNullOrEmpty(CoreMask))
            sb.Append("&core_mask=").Append(CoreMask);
        sb.Append("&shm_id=").Append(ShmId.ToString(CultureInfo.InvariantCulture));
        sb.Append("&pci=").Append(Pci ? '1' : '0');
        return sb.ToString();
    }
}

/// <summary>The shim's SPDK environment: configure it before the first nvme-* device opens.</summary>
public static unsafe class SpdkEnvironment
{
    /// <summary>Name used in error messages.</summary>
    public const string Name = "spdk-env";

    /// <summary>True for URIs that the SPDK backend serves (nvme-tcp:, nvme-pcie:).</summary>
    public static bool IsNvmeUri(string uri) =>
        uri.StartsWith("nvme-tcp:", StringComparison.Ordinal) || uri.StartsWith("nvme-pcie:", StringComparison.Ordinal);

    /// <summary>Whether the loaded libstrata_io was built with the SPDK backend.</summary>
    public static bool IsAvailable
    {
        get
        {
            StrataIoRuntime.EnsureCompatible();
            return StrataIo.sio_env_configure(null) == 0;
        }
    }

    /// <summary>
    /// Sets the environment's options (sio_env_configure). Throws DeviceArgumentException for a bad
    /// option, DeviceNotSupportedException when the library has no SPDK, and DeviceBusyException when
    /// the environment already runs with other options (it starts once per process).
    /// </summary>
    public static void Configure(SpdkEnvOptions options) => Configure(options.ToString());

    /// <summary>Sets the environment's options from the shim's "key=value&amp;..." text.</summary>
    public static void Configure(string options)
    {
        ArgumentNullException.ThrowIfNull(options);
        StrataIoRuntime.EnsureCompatible();
        var bytes = Encoding.UTF8.GetBytes(options + "\0");
        int rc;
        fixed (byte* p = bytes)
            rc = StrataIo.sio_env_configure(p);
        DeviceErrors.ThrowIfError(rc, Name, StrataIoRuntime.LastErrorDetail);
    }
}
