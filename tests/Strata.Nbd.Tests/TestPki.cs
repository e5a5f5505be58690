using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Strata.Nbd.Tests;

/// <summary>
/// Certificates made by the tests (.NET's CertificateRequest), written as PEM files in the layout
/// nbdkit, qemu and libnbd read: a server directory (ca-cert.pem, server-cert.pem, server-key.pem)
/// and client directories (ca-cert.pem, client-cert.pem, client-key.pem).
/// </summary>
internal sealed class TestPki
{
    private readonly X509Certificate2 _ca;
    private readonly RSA _caKey;

    private TestPki(string name)
    {
        _caKey = RSA.Create(2048);
        var req = new CertificateRequest($"CN={name}", _caKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        req.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(req.PublicKey, false));
        _ca = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-30), DateTimeOffset.UtcNow.AddYears(10));
    }

    public static TestPki Create(string name = "Strata test CA") => new(name);

    public string CaPem => _ca.ExportCertificatePem();

    /// <summary>A server certificate for localhost, this host's name and 127.0.0.1, valid for <paramref name="days"/> days.</summary>
    public (string Cert, string Key) Server(double days = 365, string cn = "localhost")
    {
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddDnsName(Dns.GetHostName());
        san.AddIpAddress(IPAddress.Loopback);
        return Issue(cn, "1.3.6.1.5.5.7.3.1", san.Build(), DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(days));
    }

    public (string Cert, string Key) Client(string cn, DateTimeOffset? notBefore = null, DateTimeOffset? notAfter = null) =>
        Issue(cn, "1.3.6.1.5.5.7.3.2", null, notBefore ?? DateTimeOffset.UtcNow.AddDays(-1), notAfter ?? DateTimeOffset.UtcNow.AddYears(1));

    private (string Cert, string Key) Issue(string cn, string purpose, X509Extension? san, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        using var key = RSA.Create(2048);
        var req = new CertificateRequest($"CN={cn}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(purpose)], false));
        req.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_ca, true, false));
        if (san != null)
            req.CertificateExtensions.Add(san);
        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7f;
        using var cert = req.Create(_ca, notBefore, notAfter, serial);
        return (cert.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }

    /// <summary>Writes ca-cert.pem, server-cert.pem and server-key.pem into <paramref name="dir"/>.</summary>
    public string WriteServerDir(string dir, double days = 365)
    {
        Directory.CreateDirectory(dir);
        var (cert, key) = Server(days);
        File.WriteAllText(Path.Combine(dir, "ca-cert.pem"), CaPem);
        File.WriteAllText(Path.Combine(dir, "server-cert.pem"), cert);
        File.WriteAllText(Path.Combine(dir, "server-key.pem"), key);
        return dir;
    }

    /// <summary>
    /// Writes a client directory: <paramref name="trust"/>'s CA (the one the server's certificate
    /// chains to) and, unless <paramref name="client"/> is null, a client certificate and key.
    /// </summary>
    public static string WriteClientDir(string dir, TestPki trust, (string Cert, string Key)? client)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "ca-cert.pem"), trust.CaPem);
        if (client is { } c)
        {
            File.WriteAllText(Path.Combine(dir, "client-cert.pem"), c.Cert);
            File.WriteAllText(Path.Combine(dir, "client-key.pem"), c.Key);
        }
        return dir;
    }
}
