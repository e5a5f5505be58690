using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Strata.Engine.Host;

/// <summary>
/// Prepares the control socket's path the way DAOS does: the directory is the barrier
/// (Kestrel cannot set a socket's mode), so it is created or tightened to 0750, owned by
/// the engine's user and the admin group. A live engine on the path is never displaced:
/// we connect first and remove only a socket nobody answers on. A symlink or a regular
/// file at the path is refused, never removed.
/// </summary>
internal static class ControlSocket
{
    public const UnixFileMode DirMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
        | UnixFileMode.GroupRead | UnixFileMode.GroupExecute;

    public static void Prepare(ResolvedConfig cfg, uint? adminGid, ILogger logger)
    {
        var dir = new DirectoryInfo(cfg.SocketDir);
        if (dir.Exists && dir.LinkTarget != null)
            throw new ConfigException($"socket directory {cfg.SocketDir} is a symlink; refusing to use it");
        if (File.Exists(cfg.SocketDir))
            throw new ConfigException($"socket directory {cfg.SocketDir} is a file");
        Directory.CreateDirectory(cfg.SocketDir, DirMode);
        File.SetUnixFileMode(cfg.SocketDir, DirMode);
        if (adminGid is { } gid && Unix.LChown(cfg.SocketDir, Unix.GetEuid(), gid) != 0)
            throw new ConfigException($"cannot give socket directory {cfg.SocketDir} to group {cfg.AdminGroup} (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");

        PreparePath(cfg.SocketPath, $"another engine is listening on {cfg.SocketPath}; stop it first (strata system stop --socket {cfg.SocketPath})", logger);
    }

    /// <summary>
    /// Clears the way for binding a Unix socket at <paramref name="path"/>: nothing there is fine, a stale
    /// socket is removed, anything else (a live socket, a symlink, a file, a directory) is refused.
    /// </summary>
    public static void PreparePath(string path, string liveMessage, ILogger logger)
    {
        var info = new FileInfo(path);
        if (!info.Exists && info.LinkTarget == null && !Directory.Exists(path))
            return;
        if (info.LinkTarget != null)
            throw new ConfigException($"{path} is a symlink (to {info.LinkTarget}); refusing to replace it");
        if (Directory.Exists(path))
            throw new ConfigException($"{path} is a directory; refusing to replace it");
        if (IsRegularFile(path))
            throw new ConfigException($"{path} is a regular file, not a socket; refusing to replace it");
        if (IsLive(path))
            throw new ConfigException(liveMessage);
        File.Delete(path);
        Log.StaleSocketRemoved(logger, path);
    }

    /// <summary>
    /// Binds and listens on the control socket. The daemon binds it (not Kestrel) so that a hot
    /// swap can hand the descriptor on; Kestrel takes it with ListenHandle and owns it from here.
    /// </summary>
    public static int Bind(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(path));
            s.Listen(512);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        // Kestrel closes the descriptor; this Socket must never close it too, nor unlink the path
        // (.NET's Socket removes the file it bound when disposed or finalized): kept, never disposed.
        Kept.Add(s);
        GC.SuppressFinalize(s);
        return (int)s.SafeHandle.DangerousGetHandle();
    }

    private static readonly List<Socket> Kept = [];

    /// <summary>A clean stop removes the control socket file (Kestrel does not know its path).</summary>
    public static void Remove(string path)
    {
        try
        {
            if (File.Exists(path) && !IsRegularFile(path))
                File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>An NBD socket: read-write for the engine's user and the admin group (0660), like the control socket.</summary>
    public static void SecureNbdSocket(string path, string? adminGroup, uint? adminGid)
    {
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
        if (adminGid is { } gid && Unix.LChown(path, Unix.GetEuid(), gid) != 0)
            throw new ConfigException($"cannot give NBD socket {path} to group {adminGroup} (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
    }

    /// <summary>
    /// Connecting needs write permission on the socket file: Kestrel binds it with the process umask,
    /// so give the admin group read-write (0660) once it exists. Until then it is only stricter.
    /// </summary>
    public static void SecureSocketFile(ResolvedConfig cfg, uint? adminGid)
    {
        File.SetUnixFileMode(cfg.SocketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
        if (adminGid is { } gid && Unix.LChown(cfg.SocketPath, Unix.GetEuid(), gid) != 0)
            throw new ConfigException($"cannot give socket {cfg.SocketPath} to group {cfg.AdminGroup} (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
    }

    private static bool IsRegularFile(string path)
    {
        // .NET has no S_ISSOCK: open(2) on a socket fails with ENXIO, a regular file opens.
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static bool IsLive(string path)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable)
        {
            return false;
        }
        catch (SocketException)
        {
            // Any other failure (EACCES, EAGAIN on a full backlog) may be a live engine: do not remove it.
            return true;
        }
    }
}

/// <summary>
/// The pid file: refuses to overwrite the pid of a live strata-engine. A clean stop removes it, so
/// one left by an engine that is gone means that engine was killed or crashed (<see cref="Previous"/>).
/// </summary>
internal sealed class PidFile : IDisposable
{
    private readonly string _path;

    private PidFile(string path, (int? Pid, DateTime Since)? previous)
    {
        _path = path;
        Previous = previous;
    }

    /// <summary>The engine that left the file without a clean stop: its pid (null if unreadable) and when it wrote the file.</summary>
    public (int? Pid, DateTime Since)? Previous { get; }

    /// <param name="replacing">Hot swap: the engine this one replaces, whose pid the file may name (it is exiting).</param>
    public static PidFile Create(string path, int? replacing = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        (int? Pid, DateTime Since)? previous = null;
        if (File.Exists(path))
        {
            int? old = int.TryParse(File.ReadAllText(path).Trim(), out int p) ? p : null;
            if (old is { } live && live != Environment.ProcessId && live != replacing && IsEngine(live))
                throw new ConfigException($"pid file {path} names a running engine (pid {live}); stop it first");
            previous = (old, File.GetLastWriteTimeUtc(path));
        }
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, Environment.ProcessId + "\n");
        File.Move(tmp, path, overwrite: true);
        return new PidFile(path, replacing != null ? null : previous);
    }

    private bool _keep;

    /// <summary>Hot swap: the new engine owns the pid file now (it may not have rewritten it yet); leave it.</summary>
    public void KeepForSuccessor() => _keep = true;

    private static bool IsEngine(int pid)
    {
        try
        {
            string cmdline = File.ReadAllText($"/proc/{pid}/cmdline");
            return cmdline.Contains("strata-engine", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    public void Dispose()
    {
        if (_keep)
            return;
        try
        {
            if (File.Exists(_path) && File.ReadAllText(_path).Trim() == Environment.ProcessId.ToString())
                File.Delete(_path);
        }
        catch (IOException)
        {
        }
    }
}
