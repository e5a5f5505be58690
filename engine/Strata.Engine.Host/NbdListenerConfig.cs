using Strata.Engine.Nbd;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;

namespace Strata.Engine.Host;

/// <summary>
/// One entry of `nbd:` in the engine's YAML: either the address alone (`- unix:run/nbd.sock`) or a
/// mapping with `listen:` and TLS settings. The certificate files are laid out as nbdkit's
/// --tls-certificates directory (ca-cert.pem, server-cert.pem, server-key.pem); single files may
/// be named instead. See docs/nbd.md.
/// </summary>
public class NbdListenerConfig
{
    /// <summary>unix:PATH or tcp:HOST:PORT.</summary>
    public string? Listen { get; set; }

    /// <summary>off (default), on (the client chooses) or require.</summary>
    public string? Tls { get; set; }

    /// <summary>Directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit's and qemu's layout).</summary>
    public string? TlsCertificates { get; set; }

    /// <summary>PEM server certificate (and intermediates); overrides the directory's server-cert.pem.</summary>
    public string? TlsCertificate { get; set; }

    /// <summary>PEM server private key; overrides the directory's server-key.pem.</summary>
    public string? TlsKey { get; set; }

    /// <summary>PEM CA certificate(s) client certificates must chain to; overrides the directory's ca-cert.pem.</summary>
    public string? TlsCa { get; set; }

    /// <summary>Clients must present a certificate signed by the CA (default true; false is refused on non-loopback addresses).</summary>
    public bool TlsVerifyPeer { get; set; } = true;

    /// <summary>Client identities admitted and the exports each may open; left out, every certificate the CA signed opens every export.</summary>
    public List<AllowEntry>? TlsAllow { get; set; }

    /// <summary>A psktool key file: refused, the platform's TLS has no PSK support (docs/nbd.md).</summary>
    public string? TlsPsk { get; set; }

    public sealed class AllowEntry
    {
        /// <summary>The certificate's CN, or its whole subject when it contains '='.</summary>
        public string? Identity { get; set; }

        /// <summary>Pools, pool/container or pool/container/image; left out, every export.</summary>
        public List<string>? Exports { get; set; }
    }

    /// <summary>The listener with its TLS settings, paths made absolute against <paramref name="dataDir"/>; one-line FormatException otherwise.</summary>
    public NbdListenerAddress Resolve(string dataDir)
    {
        string spec = Listen ?? throw new FormatException("an nbd listener mapping has no 'listen:' address (unix:PATH or tcp:HOST:PORT)");
        string Abs(string p) => Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(dataDir, p));
        var mode = Tls switch
        {
            null or "off" => NbdTlsMode.Off,
            "on" => NbdTlsMode.On,
            "require" => NbdTlsMode.Require,
            _ => throw new FormatException($"nbd listener '{spec}': tls '{Tls}' is not off, on or require"),
        };
        if (TlsPsk != null)
            throw new FormatException($"nbd listener '{spec}': tls_psk is not supported: .NET's TLS (SslStream) has no pre-shared-key API, so a PSK handshake cannot complete; use x509 certificates (docs/nbd.md)");
        var address = NbdListenerAddress.Parse(spec, dataDir, mode);
        if (mode == NbdTlsMode.Off)
        {
            if (TlsCertificates != null || TlsCertificate != null || TlsKey != null || TlsCa != null || TlsAllow != null)
                throw new FormatException($"nbd listener '{spec}' names TLS certificates but tls is off (set tls: on or tls: require)");
            return address;
        }
        string? dir = TlsCertificates == null ? null : Abs(TlsCertificates);
        string? FromDir(string? explicitPath, string file) =>
            explicitPath != null ? Abs(explicitPath) : dir != null ? Path.Combine(dir, file) : null;
        string cert = FromDir(TlsCertificate, "server-cert.pem")
            ?? throw new FormatException($"nbd listener '{spec}': tls: {Tls} needs tls_certificates (a directory with server-cert.pem, server-key.pem and ca-cert.pem) or tls_certificate and tls_key");
        string key = FromDir(TlsKey, "server-key.pem")
            ?? throw new FormatException($"nbd listener '{spec}': tls_certificate {TlsCertificate} needs its tls_key");
        string? ca = FromDir(TlsCa, "ca-cert.pem");
        if (TlsVerifyPeer && ca == null)
            throw new FormatException($"nbd listener '{spec}': tls_verify_peer needs a CA to check client certificates against (tls_ca, or ca-cert.pem in tls_certificates)");
        if (!TlsVerifyPeer && address.Tcp != null && !System.Net.IPAddress.IsLoopback(address.Tcp.Address))
            throw new FormatException($"nbd listener '{spec}': tls_verify_peer: false on a non-loopback address would let anyone who reaches it use every image; client certificates are the only authentication NBD has");
        if (!TlsVerifyPeer && TlsAllow != null)
            throw new FormatException($"nbd listener '{spec}': tls_allow names client certificates but tls_verify_peer is false");
        var allow = new List<NbdTlsClientRule>();
        foreach (var e in TlsAllow ?? [])
        {
            if (string.IsNullOrWhiteSpace(e.Identity))
                throw new FormatException($"nbd listener '{spec}': a tls_allow entry has no identity (the client certificate's CN)");
            foreach (var x in e.Exports ?? [])
                if (x.Length == 0 || x.Split('/').Length > 3 || x.Split('/').Any(p => p.Length == 0))
                    throw new FormatException($"nbd listener '{spec}': tls_allow export '{x}' is not pool, pool/container or pool/container/image");
            allow.Add(new NbdTlsClientRule(e.Identity, e.Exports ?? []));
        }
        return address with
        {
            Tls = new NbdTlsSettings
            {
                Mode = mode,
                CertificateFile = cert,
                KeyFile = key,
                CaFile = ca,
                VerifyPeer = TlsVerifyPeer,
                Allow = allow,
            },
        };
    }

    /// <summary>Reads a listener given as a plain scalar or as a mapping.</summary>
    internal sealed class Converter : IYamlTypeConverter
    {
        public bool Accepts(Type type) => type == typeof(NbdListenerConfig);

        public object? ReadYaml(IParser parser, Type type, ObjectDeserializer rootDeserializer)
        {
            if (parser.TryConsume<Scalar>(out var scalar))
                return new NbdListenerConfig { Listen = scalar.Value };
            // The subclass is not accepted by this converter, so YamlDotNet maps its keys as usual.
            return rootDeserializer(typeof(Mapping));
        }

        public void WriteYaml(IEmitter emitter, object? value, Type type, ObjectSerializer serializer) =>
            throw new NotSupportedException("NBD listener configuration is read, never written");
    }

    private sealed class Mapping : NbdListenerConfig;
}
