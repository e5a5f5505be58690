using System.Runtime.InteropServices;
using Strata.Interop.Native;

namespace Strata.Interop;

/// <summary>An opened libstrata_io device (sio_device*); release closes it.</summary>
public sealed class SioDeviceHandle : SafeHandle
{
    public SioDeviceHandle() : base(IntPtr.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>The URI the device was opened with, for messages.</summary>
    public string Uri { get; internal set; } = "";

    /// <summary>Opens a device by URI after the ABI handshake; throws a DeviceException naming the URI.</summary>
    public static unsafe SioDeviceHandle Open(string uri)
    {
        ArgumentException.ThrowIfNullOrEmpty(uri);
        StrataIoRuntime.EnsureCompatible();
        var h = new SioDeviceHandle { Uri = uri };
        nint dev;
        int rc;
        var bytes = StrataIoRuntime.Utf8z(uri);
        fixed (byte* p = bytes)
            rc = StrataIo.sio_device_open(p, &dev);
        if (rc < 0)
        {
            var detail = StrataIoRuntime.LastErrorDetail();
            h.SetHandleAsInvalid();
            throw DeviceErrors.Create(uri, rc, detail);
        }
        h.SetHandle(dev);
        return h;
    }

    protected override bool ReleaseHandle() => StrataIo.sio_device_close(handle) == 0;
}

/// <summary>
/// A queue pair (sio_qpair*), owned by one polling thread. It holds a
/// reference on its device handle so the device cannot close under it.
/// </summary>
public sealed class SioQueuePairHandle : SafeHandle
{
    private SioDeviceHandle? _device;

    public SioQueuePairHandle() : base(IntPtr.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Creates a queue pair of the given depth (0 = the device's default).</summary>
    public static unsafe SioQueuePairHandle Create(SioDeviceHandle device, uint depth)
    {
        var h = new SioQueuePairHandle();
        bool added = false;
        device.DangerousAddRef(ref added);
        try
        {
            nint qp;
            int rc = StrataIo.sio_qpair_create(device.DangerousGetHandle(), depth, &qp);
            if (rc < 0)
                throw DeviceErrors.Create(device.Uri, rc, StrataIoRuntime.LastErrorDetail());
            h.SetHandle(qp);
            h._device = device;
            added = false; // now owned by h, released in ReleaseHandle
            return h;
        }
        finally
        {
            if (added)
                device.DangerousRelease();
        }
    }

    protected override bool ReleaseHandle()
    {
        int rc = StrataIo.sio_qpair_destroy(handle);
        _device?.DangerousRelease();
        _device = null;
        return rc == 0;
    }
}

/// <summary>Library-wide checks: the ABI handshake and the thread's error detail.</summary>
public static class StrataIoRuntime
{
    private static readonly Lazy<int> LoadedAbi = new(() =>
    {
        StrataIoLibrary.EnsureResolver();
        return StrataIo.sio_abi_version();
    });

    /// <summary>The ABI version the managed bindings were generated for.</summary>
    public static int ExpectedAbiVersion => StrataIo.SIO_ABI_VERSION;

    /// <summary>The ABI version of the loaded library (loads it on first use).</summary>
    public static int LoadedAbiVersion => LoadedAbi.Value;

    /// <summary>Refuses a library whose ABI version differs from the bindings', naming both.</summary>
    public static void EnsureCompatible()
    {
        int loaded = LoadedAbi.Value;
        CheckAbi(loaded, ExpectedAbiVersion, StrataIoLibrary.LoadedFrom);
    }

    internal static void CheckAbi(int loaded, int expected, string? path)
    {
        if (loaded != expected)
            throw new InvalidOperationException(
                $"libstrata_io ABI version mismatch: the library at {path ?? "(unknown path)"} reports ABI {loaded}, " +
                $"but Strata.Interop was generated for ABI {expected}; rebuild native/ and the bindings together");
    }

    /// <summary>The calling thread's last error detail from the shim, or null.</summary>
    public static unsafe string? LastErrorDetail()
    {
        byte* buf = stackalloc byte[StrataIo.SIO_ERROR_DETAIL_MAX];
        if (StrataIo.sio_error_detail(buf, (uint)StrataIo.SIO_ERROR_DETAIL_MAX) < 0)
            return null;
        var s = Marshal.PtrToStringUTF8((nint)buf);
        return string.IsNullOrEmpty(s) ? null : s;
    }

    internal static byte[] Utf8z(string s)
    {
        var bytes = new byte[System.Text.Encoding.UTF8.GetByteCount(s) + 1];
        System.Text.Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }
}
