using System.Net;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Strata.Engine.Nbd;

namespace Strata.Perf.Nbd;

/// <summary>
/// `nbd --tls`: a throwaway CA, a server certificate for 127.0.0.1 (the directory layout nbdkit,
/// qemu-nbd and Strata read: ca-cert.pem, server-cert.pem, server-key.pem) and a client
/// certificate where libnbd looks for it ($HOME/.pki/libnbd). fio's nbd engine cannot name
/// certificate files in its URI (libnbd refuses local files there), so fio runs with HOME set to
/// that directory; libnbd reads /etc/pki/libnbd for root instead, so as root fio runs as nobody.
/// </summary>
internal sealed partial class BenchTls : IDisposable
{
    private BenchTls(string dir)
    {
        Dir = dir;
        ServerDir = Path.Combine(dir, "server");
        Home = Path.Combine(dir, "home");
    }

    public string Dir { get; }

    public string ServerDir { get; }

    public string Home { get; }

    public NbdTlsSettings StrataSettings => new()
    {
        Mode = NbdTlsMode.Require,
        CertificateFile = Path.Combine(ServerDir, "server-cert.pem"),
        KeyFile = Path.Combine(ServerDir, "server-key.pem"),
        CaFile = Path.Combine(ServerDir, "ca-cert.pem"),
    };

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEuid();

    /// <summary>What runs fio: env with HOME, under setpriv as nobody when this process is root.</summary>
    public IReadOnlyList<string> FioPrefix => GetEuid() == 0
        ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "HOME=" + Home]
        : ["env", "HOME=" + Home];

    public static BenchTls Create()
    {
        var t = new BenchTls(Directory.CreateTempSubdirectory("strata-nbd-tls-").FullName);
        using var caKey = RSA.Create(2048);
        var caReq = new CertificateRequest("CN=Strata perf CA", caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        caReq.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caReq.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        using var ca = caReq.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        string caPem = ca.ExportCertificatePem();
        string libnbd = Path.Combine(t.Home, ".pki", "libnbd");
        Directory.CreateDirectory(t.ServerDir);
        Directory.CreateDirectory(libnbd);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        Write(t.ServerDir, "server", Issue(ca, "localhost", "1.3.6.1.5.5.7.3.1", san.Build()), caPem);
        Write(libnbd, "client", Issue(ca, "perf-client", "1.3.6.1.5.5.7.3.2", null), caPem);
        // The server processes (qemu-nbd, nbdkit) run as this user; fio may run as nobody.
        if (OperatingSystem.IsLinux() && GetEuid() == 0)
            foreach (var p in Directory.EnumerateFileSystemEntries(t.Home, "*", SearchOption.AllDirectories).Append(t.Home).Append(t.Dir))
                File.SetUnixFileMode(p, File.GetUnixFileMode(p) | UnixFileMode.OtherRead | (Directory.Exists(p) ? UnixFileMode.OtherExecute : 0));
        return t;
    }

    private static (string Cert, string Key) Issue(X509Certificate2 ca, string cn, string purpose, X509Extension? san)
    {
        using var key = RSA.Create(2048);
        var req = new CertificateRequest($"CN={cn}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(purpose)], false));
        if (san != null)
            req.CertificateExtensions.Add(san);
        using var cert = req.Create(ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddDays(29), RandomNumberGenerator.GetBytes(8));
        return (cert.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }

    private static void Write(string dir, string role, (string Cert, string Key) pair, string caPem)
    {
        File.WriteAllText(Path.Combine(dir, "ca-cert.pem"), caPem);
        File.WriteAllText(Path.Combine(dir, $"{role}-cert.pem"), pair.Cert);
        File.WriteAllText(Path.Combine(dir, $"{role}-key.pem"), pair.Key);
    }

    public void Dispose() => Directory.Delete(Dir, recursive: true);
}
