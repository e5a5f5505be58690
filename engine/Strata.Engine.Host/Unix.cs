using System.Net.Sockets;
using System.Runtime.InteropServices;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Strata.Engine.Host;

/// <summary>The few libc calls and account-file lookups the daemon needs (no extra packages).</summary>
internal static partial class Unix
{
    /// <summary>geteuid(2): the engine's effective uid.</summary>
    [LibraryImport("libc", EntryPoint = "geteuid")]
    internal static partial uint GetEuid();

    /// <summary>lchown(2): sets owner and group without following a symlink.</summary>
    [LibraryImport("libc", EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int LChown(string path, uint uid, uint gid);

    /// <summary>The caller at the other end of a Unix socket (SO_PEERCRED: struct ucred { pid, uid, gid }).</summary>
    internal static (int Pid, uint Uid, uint Gid)? PeerCredentials(Socket socket)
    {
        Span<byte> buf = stackalloc byte[12];
        const int SolSocket = 1, SoPeerCred = 17;
        int n = socket.GetRawSocketOption(SolSocket, SoPeerCred, buf);
        if (n < 12)
            return null;
        return (BitConverter.ToInt32(buf[..4]), BitConverter.ToUInt32(buf[4..8]), BitConverter.ToUInt32(buf[8..12]));
    }

    /// <summary>A group's gid and member names from /etc/group, or null.</summary>
    internal static (uint Gid, string[] Members)? FindGroup(string name)
    {
        foreach (var f in ReadColonFile("/etc/group"))
            if (f.Length >= 4 && f[0] == name && uint.TryParse(f[2], out uint gid))
                return (gid, f[3].Split(',', StringSplitOptions.RemoveEmptyEntries));
        return null;
    }

    /// <summary>A user's name and primary gid from /etc/passwd, or null.</summary>
    internal static (string Name, uint Gid)? FindUser(uint uid)
    {
        foreach (var f in ReadColonFile("/etc/passwd"))
            if (f.Length >= 4 && uint.TryParse(f[2], out uint u) && u == uid && uint.TryParse(f[3], out uint g))
                return (f[0], g);
        return null;
    }

    private static IEnumerable<string[]> ReadColonFile(string path)
    {
        if (!File.Exists(path))
            yield break;
        foreach (var line in File.ReadLines(path))
            if (line.Length > 0 && line[0] != '#')
                yield return line.Split(':');
    }
}
