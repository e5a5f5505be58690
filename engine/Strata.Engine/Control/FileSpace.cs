using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Strata.Engine.Control;

/// <summary>
/// Reserves disk space for an append before the bytes are written, so that a full disk refuses
/// the append whole instead of part-way: fallocate(2) with FALLOC_FL_KEEP_SIZE allocates the
/// blocks past the end without changing the file's size, so a reader never sees the reservation.
/// </summary>
internal static partial class FileSpace
{
    private const int KeepSize = 1;      // FALLOC_FL_KEEP_SIZE
    private const int NoSpace = 28;      // ENOSPC
    private const int QuotaExceeded = 122; // EDQUOT
    private const int Interrupted = 4;   // EINTR

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int Fallocate(int fd, int mode, long offset, long len);

    /// <summary>
    /// Reserves [offset, offset + length) of the file. Throws an IOException (HResult ENOSPC or
    /// EDQUOT) when the filesystem cannot hold it; returns quietly where the filesystem cannot
    /// reserve (no fallocate), leaving the write itself to fail.
    /// </summary>
    public static void Reserve(SafeFileHandle file, long offset, long length)
    {
        if (length <= 0 || !OperatingSystem.IsLinux())
            return;
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            int fd = (int)file.DangerousGetHandle();
            while (Fallocate(fd, KeepSize, offset, length) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Interrupted)
                    continue;
                if (errno is NoSpace or QuotaExceeded)
                    throw new IOException(errno == NoSpace ? "No space left on device" : "Disk quota exceeded", errno);
                return; // EOPNOTSUPP and the like: the write decides
            }
        }
        finally
        {
            if (added)
                file.DangerousRelease();
        }
    }
}
