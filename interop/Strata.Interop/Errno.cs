namespace Strata.Interop;

/// <summary>Linux errno values the shim reports (negated) and the engine names.</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int E2BIG = 7;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int EFBIG = 27;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ERANGE = 34;
    public const int ENOSYS = 38;
    public const int EOPNOTSUPP = 95;
    public const int ETIMEDOUT = 110;
    public const int ECANCELED = 125;
    public const int EILSEQ = 84;
    public const int EBADE = 52;
    public const int ENODATA = 61;
    public const int EPIPE = 32;
    public const int EMSGSIZE = 90;

    /// <summary>The symbolic name of an errno value, for messages ("EIO"), or "errno N".</summary>
    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EINTR => "EINTR",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        ENODEV => "ENODEV",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        EFBIG => "EFBIG",
        ENOSPC => "ENOSPC",
        EROFS => "EROFS",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        EOPNOTSUPP => "EOPNOTSUPP",
        ETIMEDOUT => "ETIMEDOUT",
        ECANCELED => "ECANCELED",
        EILSEQ => "EILSEQ",
        EBADE => "EBADE",
        ENODATA => "ENODATA",
        EPIPE => "EPIPE",
        EMSGSIZE => "EMSGSIZE",
        _ => $"errno {errno}",
    };

    /// <summary>A short description of an errno value.</summary>
    public static string Describe(int errno) => errno switch
    {
        EPERM => "operation not permitted",
        ENOENT => "no such file or device",
        EIO => "I/O error",
        ENXIO => "no such device or address",
        E2BIG => "batch larger than the queue depth",
        EAGAIN => "queue full, try again",
        ENOMEM => "out of memory",
        EACCES => "permission denied",
        EBUSY => "device or resource busy",
        EEXIST => "already exists",
        ENODEV => "no such device",
        EISDIR => "is a directory",
        EINVAL => "invalid argument",
        EFBIG => "too large",
        ENOSPC => "no space left on device",
        EROFS => "read-only device",
        ERANGE => "beyond the end of the device",
        ENOSYS => "not implemented",
        EOPNOTSUPP => "not supported",
        ETIMEDOUT => "timed out",
        ECANCELED => "canceled",
        EILSEQ => "data integrity error",
        EBADE => "reservation conflict",
        ENODATA => "no data (deallocated or unwritten block)",
        _ => "unknown error",
    };
}
