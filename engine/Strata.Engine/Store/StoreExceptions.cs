using Strata.Interop;

namespace Strata.Engine.Store;

/// <summary>
/// An error of the storage core that an operator or client can act on. Carries
/// an errno so the control API and NBD can map it; the message is one line.
/// </summary>
public class StoreException : IOException
{
    public StoreException(int errno, string message, Exception? inner = null) : base(message, inner)
    {
        Errno = errno;
        HResult = errno;
    }

    /// <summary>The positive errno value this error maps to.</summary>
    public int Errno { get; }
}

/// <summary>
/// EIO: a chunk write whose every replica is on a target excluded while it ran (a target that failed a
/// write left the pool); its record was voided in the log, so its new extents may be freed at once.
/// </summary>
public sealed class WriteVoidedException(string message) : StoreException(Interop.Errno.EIO, message);

/// <summary>ENOENT: no pool, container or image of that name.</summary>
public sealed class NotFoundException(string message) : StoreException(Interop.Errno.ENOENT, message);

/// <summary>EEXIST: the label is already in use.</summary>
public sealed class DuplicateLabelException(string message) : StoreException(Interop.Errno.EEXIST, message);

/// <summary>EINVAL: a malformed label, property, size or range.</summary>
public sealed class InvalidRequestException(string message) : StoreException(Interop.Errno.EINVAL, message);

/// <summary>ENOSPC: the pool (or a target) has no room; nothing already acknowledged is affected.</summary>
public sealed class NoSpaceException(string message) : StoreException(Interop.Errno.ENOSPC, message);

/// <summary>EROFS: the pool is read-only (unknown ro_compat features, or after a device failure).</summary>
public sealed class PoolReadOnlyException(string message, Exception? inner = null) : StoreException(Interop.Errno.EROFS, message, inner);

/// <summary>EILSEQ: no copy of the data verifies; wrong bytes are never returned.</summary>
public sealed class DataIntegrityException(string pool, string image, long offset, string message)
    : StoreException(Interop.Errno.EILSEQ, message)
{
    public string Pool { get; } = pool;
    public string Image { get; } = image;
    public long Offset { get; } = offset;
}

/// <summary>EOPNOTSUPP: the on-disk layout is newer than (or unknown to) this engine; nothing was written.</summary>
public sealed class IncompatibleLayoutException(string message) : StoreException(Interop.Errno.EOPNOTSUPP, message);

/// <summary>EIO: on-disk structures are damaged (both header copies bad, a torn checkpoint, a wrong device).</summary>
public sealed class CorruptMetadataException(string message, Exception? inner = null) : StoreException(Interop.Errno.EIO, message, inner);

/// <summary>EBUSY: the pool is open or an exclusive operation is running.</summary>
public sealed class BusyException(string message) : StoreException(Interop.Errno.EBUSY, message);

/// <summary>The pool is closed to I/O for a while (an exclusive upgrade action): retry when it completes.</summary>
public sealed class PoolBusyException(string message) : StoreException(Interop.Errno.EAGAIN, message);

/// <summary>
/// EIO: a reintegration's batch lifting the exclusion of <see cref="Target"/> was not written because
/// the target left the log first (its device failed a write while it rejoined); it stays excluded.
/// </summary>
internal sealed class RejoinFailedException(int target)
    : StoreException(Interop.Errno.EIO, $"target {target} left the log before its exclusion was lifted")
{
    public int Target { get; } = target;
}
