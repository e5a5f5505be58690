using System.Globalization;
using System.Net;

namespace Strata.Engine.Nbd;

/// <summary>
/// One configured NBD listener: <c>unix:PATH</c> (relative paths resolve against a base
/// directory, the engine's data dir) or <c>tcp:HOST:PORT</c>. NBD has no authentication of its
/// own; a Unix socket is guarded by its file mode and the caller's credentials, loopback TCP only
/// by being local, so Strata listens on any other address only when the listener requires TLS
/// (<see cref="NbdTlsMode.Require"/>, client certificates checked against a CA).
/// </summary>
public sealed record NbdListenerAddress
{
    private NbdListenerAddress(string spec, string? unixPath, IPEndPoint? tcp)
    {
        Spec = spec;
        UnixPath = unixPath;
        Tcp = tcp;
    }

    /// <summary>As configured.</summary>
    public string Spec { get; }

    /// <summary>Absolute socket path, for unix: listeners.</summary>
    public string? UnixPath { get; }

    /// <summary>Loopback address and port (0: any free port), for tcp: listeners.</summary>
    public IPEndPoint? Tcp { get; }

    /// <summary>The listener's TLS configuration (<see cref="NbdTlsSettings.Disabled"/> unless configured).</summary>
    public NbdTlsSettings Tls { get; init; } = NbdTlsSettings.Disabled;

    public static NbdListenerAddress Unix(string path) => new("unix:" + path, Path.GetFullPath(path), null);

    public static NbdListenerAddress Loopback(int port) => new($"tcp:127.0.0.1:{port}", null, new IPEndPoint(IPAddress.Loopback, port));

    /// <summary>
    /// Parses one listener; throws <see cref="FormatException"/> with a one-line reason. A TCP
    /// address other than loopback is accepted only when <paramref name="tls"/> is Require.
    /// </summary>
    public static NbdListenerAddress Parse(string spec, string baseDir, NbdTlsMode tls = NbdTlsMode.Off)
    {
        if (spec.StartsWith("unix:", StringComparison.Ordinal))
        {
            string p = spec["unix:".Length..];
            if (p.Length == 0)
                throw new FormatException($"nbd listener '{spec}' has no socket path (unix:PATH)");
            string abs = Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(baseDir, p));
            // sockaddr_un.sun_path is 108 bytes with its NUL.
            if (System.Text.Encoding.UTF8.GetByteCount(abs) > 107)
                throw new FormatException($"nbd listener '{spec}': socket path {abs} is longer than the 107 bytes a Unix socket address holds");
            return new NbdListenerAddress(spec, abs, null);
        }
        if (spec.StartsWith("tcp:", StringComparison.Ordinal))
        {
            string hp = spec["tcp:".Length..];
            int colon = hp.LastIndexOf(':');
            if (colon <= 0)
                throw new FormatException($"nbd listener '{spec}' is not tcp:HOST:PORT");
            string host = hp[..colon];
            string port = hp[(colon + 1)..];
            if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p > 65535)
                throw new FormatException($"nbd listener '{spec}': '{port}' is not a TCP port (0-65535)");
            IPAddress? ip = host == "localhost" ? IPAddress.Loopback
                : IPAddress.TryParse(host.Trim('[', ']'), out var a) ? a : null;
            if (ip == null)
                throw new FormatException($"nbd listener '{spec}': '{host}' is not an IP address (use 127.0.0.1)");
            if (!IPAddress.IsLoopback(ip) && tls != NbdTlsMode.Require)
                throw new FormatException($"nbd listener '{spec}': {host} is not a loopback address; NBD has no authentication of its own, so Strata serves other addresses only with 'tls: require' (client certificates checked against a CA; see docs/nbd.md)");
            return new NbdListenerAddress(spec, null, new IPEndPoint(ip, p));
        }
        throw new FormatException($"nbd listener '{spec}' must be unix:PATH or tcp:HOST:PORT");
    }
}
