using Strata.Interop.Native;
using System.Net.Sockets;

namespace Strata.Interop;

/// <summary>Passing descriptors failed; carries the raw errno (EPIPE: the peer is gone, EAGAIN: the socket's timeout passed).</summary>
public sealed class FdPassingException(string what, int errno, string? detail)
    : IOException($"{what}: {Strata.Interop.Errno.Name(errno)}{(string.IsNullOrEmpty(detail) ? "" : ": " + detail)}")
{
    public int Errno { get; } = errno;
}

/// <summary>
/// Descriptor passing over a connected Unix stream socket (SCM_RIGHTS), through the shim's
/// sio_fd_send / sio_fd_recv: the hot swap hands listening sockets and client connections to
/// the new engine process with it. Calls block; use them off the thread pool's hot paths.
/// </summary>
public static unsafe class FdPassing
{
    /// <summary>The most descriptors one <see cref="Send"/> carries.</summary>
    public const int MaxFds = StrataIo.SIO_MAX_PASSED_FDS;

    /// <summary>Sends <paramref name="data"/> (at least one byte) with <paramref name="fds"/> attached to its first byte.</summary>
    public static void Send(Socket socket, ReadOnlySpan<byte> data, ReadOnlySpan<int> fds)
    {
        StrataIoRuntime.EnsureCompatible();
        int rc;
        fixed (byte* d = data)
        fixed (int* f = fds)
            rc = StrataIo.sio_fd_send(Fd(socket), d, (uint)data.Length, f, (uint)fds.Length);
        if (rc != 0)
            throw new FdPassingException("sending descriptors", -rc, StrataIoRuntime.LastErrorDetail());
    }

    /// <summary>Receives exactly data.Length bytes and returns the descriptors that came with them (close-on-exec; the caller owns them).</summary>
    public static int[] Receive(Socket socket, Span<byte> data, int maxFds)
    {
        StrataIoRuntime.EnsureCompatible();
        var fds = new int[Math.Clamp(maxFds, 1, MaxFds)];
        uint n = 0;
        int rc;
        fixed (byte* d = data)
        fixed (int* f = fds)
            rc = StrataIo.sio_fd_recv(Fd(socket), d, (uint)data.Length, f, (uint)maxFds, &n);
        if (rc != 0)
            throw new FdPassingException("receiving descriptors", -rc, StrataIoRuntime.LastErrorDetail());
        return fds[..(int)n];
    }

    /// <summary>
    /// Marks a socket handed to another process as shared (clears close-on-exec): the runtime then
    /// closes it without shutting the connection down, which would cut off the other process too.
    /// </summary>
    public static void MarkShared(Socket socket)
    {
        StrataIoRuntime.EnsureCompatible();
        int rc = StrataIo.sio_fd_set_shared(Fd(socket));
        if (rc != 0)
            throw new FdPassingException("marking a descriptor shared", -rc, StrataIoRuntime.LastErrorDetail());
    }

    private static int Fd(Socket s) => (int)s.SafeHandle.DangerousGetHandle();
}
