using ErrnoNames = Strata.Interop.Errno;

namespace Strata.Interop;

/// <summary>
/// A device operation failed. Carries the raw errno and the device it happened
/// on; the message is one line naming both, e.g.
/// "file:/data/t0: EIO (I/O error): write at 4096".
/// </summary>
public class DeviceException : IOException
{
    public DeviceException(string device, int errno, string? detail, Exception? inner = null)
        : base(Format(device, errno, detail), inner)
    {
        Device = device;
        Errno = errno;
        Detail = detail;
        HResult = errno;
    }

    /// <summary>The device URI or name.</summary>
    public string Device { get; }

    /// <summary>The positive errno value.</summary>
    public int Errno { get; }

    /// <summary>The shim's or the caller's one-line reason, if any.</summary>
    public string? Detail { get; }

    private static string Format(string device, int errno, string? detail) =>
        string.IsNullOrEmpty(detail)
            ? $"{device}: {ErrnoNames.Name(errno)} ({ErrnoNames.Describe(errno)})"
            : $"{device}: {ErrnoNames.Name(errno)} ({ErrnoNames.Describe(errno)}): {detail}";
}

/// <summary>ENOENT, ENODEV, ENXIO: the device does not exist.</summary>
public sealed class DeviceNotFoundException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>EACCES, EPERM: the caller may not open or use the device.</summary>
public sealed class DeviceAccessDeniedException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>ENOSPC, EFBIG: the device or file is too small or full.</summary>
public sealed class DeviceFullException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>EINVAL, E2BIG, ERANGE: a malformed URI, option, command or buffer.</summary>
public sealed class DeviceArgumentException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>EROFS: a write to a device opened read-only.</summary>
public sealed class DeviceReadOnlyException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>EBUSY, EAGAIN: the device or queue is busy.</summary>
public sealed class DeviceBusyException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>EOPNOTSUPP, ENOSYS: the backend cannot do this.</summary>
public sealed class DeviceNotSupportedException(string device, int errno, string? detail)
    : DeviceException(device, errno, detail);

/// <summary>ECANCELED: the operation was canceled (for example by closing the device).</summary>
public sealed class DeviceOperationCanceledException(string device, int errno, string? detail)
    : OperationCanceledException($"{device}: {ErrnoNames.Name(errno)} ({ErrnoNames.Describe(errno)}){(detail is null ? "" : ": " + detail)}")
{
    public string Device { get; } = device;
    public int Errno { get; } = errno;
}

/// <summary>Maps shim status codes to exceptions: the one place errno becomes an exception.</summary>
public static class DeviceErrors
{
    /// <summary>Builds the exception for a negative status (or positive errno).</summary>
    public static Exception Create(string device, int status, string? detail = null)
    {
        int errno = status < 0 ? -status : status;
        return errno switch
        {
            Errno.ENOENT or Errno.ENODEV or Errno.ENXIO => new DeviceNotFoundException(device, errno, detail),
            Errno.EACCES or Errno.EPERM => new DeviceAccessDeniedException(device, errno, detail),
            Errno.ENOSPC or Errno.EFBIG => new DeviceFullException(device, errno, detail),
            Errno.EINVAL or Errno.E2BIG or Errno.ERANGE => new DeviceArgumentException(device, errno, detail),
            Errno.EROFS => new DeviceReadOnlyException(device, errno, detail),
            Errno.EBUSY or Errno.EAGAIN => new DeviceBusyException(device, errno, detail),
            Errno.EOPNOTSUPP or Errno.ENOSYS => new DeviceNotSupportedException(device, errno, detail),
            Errno.ECANCELED => new DeviceOperationCanceledException(device, errno, detail),
            _ => new DeviceException(device, errno, detail),
        };
    }

    /// <summary>Throws when status is negative; detail is fetched from the shim only then.</summary>
    public static void ThrowIfError(int status, string device, Func<string?>? detail = null)
    {
        if (status < 0)
            throw Create(device, status, detail?.Invoke());
    }
}
