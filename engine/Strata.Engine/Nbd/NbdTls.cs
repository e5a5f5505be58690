using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Strata.Engine.Nbd;

/// <summary>
/// How a listener treats NBD_OPT_STARTTLS (NBD protocol, "TLS support"): Off is NOTLS (STARTTLS
/// answered NBD_REP_ERR_POLICY), On is SELECTIVETLS with no TLS-only export (the client chooses),
/// Require is FORCEDTLS (every option but STARTTLS and ABORT answered NBD_REP_ERR_TLS_REQD).
/// </summary>
public enum NbdTlsMode { Off, On, Require }

/// <summary>One entry of a listener's allow list: a client certificate identity and the exports it may open.</summary>
/// <param name="Identity">The certificate's common name (CN), or its whole subject ("CN=hv1,O=Example") when it contains '='.</param>
/// <param name="Exports">Pools, pool/container or pool/container/image names; empty for every export.</param>
public sealed record NbdTlsClientRule(string Identity, IReadOnlyList<string> Exports)
{
    public bool Matches(string commonName, string subject) => Identity.Contains('=', StringComparison.Ordinal)
        ? string.Equals(Normalize(Identity), Normalize(subject), StringComparison.OrdinalIgnoreCase)
        : string.Equals(Identity, commonName, StringComparison.Ordinal);

    public bool Covers(string export) => Exports.Count == 0
        || Exports.Any(e => export == e || export.StartsWith(e + "/", StringComparison.Ordinal));

    private static string Normalize(string dn) => string.Join(",", dn.Split(',').Select(p => p.Trim()));
}

/// <summary>A listener's TLS configuration (paths absolute); <see cref="NbdTlsCredentials"/> is what it loads.</summary>
public sealed record NbdTlsSettings
{
    public static readonly NbdTlsSettings Disabled = new();

    public NbdTlsMode Mode { get; init; }

    /// <summary>PEM server certificate, optionally followed by its intermediate CA certificates.</summary>
    public string? CertificateFile { get; init; }

    /// <summary>PEM private key of the server certificate.</summary>
    public string? KeyFile { get; init; }

    /// <summary>PEM CA certificate(s) client certificates must chain to.</summary>
    public string? CaFile { get; init; }

    /// <summary>Clients must present a certificate signed by <see cref="CaFile"/> (qemu-nbd's verify-peer, nbdkit's --tls-verify-peer).</summary>
    public bool VerifyPeer { get; init; } = true;

    /// <summary>Client identities admitted and what each may open; empty admits every certificate the CA signed, for every export.</summary>
    public IReadOnlyList<NbdTlsClientRule> Allow { get; init; } = [];
}

/// <summary>A TLS configuration refused (unreadable or mismatched files, a CA that is not PEM, an expired certificate): one line.</summary>
public sealed class NbdTlsException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>
/// A listener's loaded certificates: the server certificate with its key and chain, and the CA
/// that client certificates must chain to. Immutable; a reload builds a new one, and connections
/// keep the one they started their handshake with. The certificates hold native key handles:
/// credentials a reload replaced (<see cref="Retire"/>) are disposed once the last connection that
/// started its handshake with them (<see cref="TryAcquire"/> .. <see cref="Release"/>) has closed.
/// </summary>
public sealed class NbdTlsCredentials
{
    private readonly SslStreamCertificateContext _context;
    private readonly X509Certificate2Collection _ca;
    private readonly X509Certificate2Collection _intermediates;
    private readonly object _sync = new();
    private int _users;
    private bool _retired, _disposed;

    private NbdTlsCredentials(NbdTlsSettings settings, X509Certificate2 certificate, SslStreamCertificateContext context, X509Certificate2Collection ca,
        X509Certificate2Collection intermediates)
    {
        Settings = settings;
        Certificate = certificate;
        _context = context;
        _ca = ca;
        _intermediates = intermediates;
    }

    /// <summary>The certificates and keys were released (replaced, and no connection uses them any more).</summary>
    public bool IsDisposed
    {
        get
        {
            lock (_sync)
                return _disposed;
        }
    }

    /// <summary>A connection starts a handshake with these credentials; false once they are disposed (take the listener's current ones).</summary>
    internal bool TryAcquire()
    {
        lock (_sync)
        {
            if (_disposed)
                return false;
            _users++;
            return true;
        }
    }

    /// <summary>A connection that acquired these credentials has closed.</summary>
    internal void Release()
    {
        lock (_sync)
        {
            _users--;
            DisposeIfUnused();
        }
    }

    /// <summary>No new handshake will use these (a reload replaced them, or the server stopped): disposed once unused.</summary>
    internal void Retire()
    {
        lock (_sync)
        {
            _retired = true;
            DisposeIfUnused();
        }
    }

    private void DisposeIfUnused()
    {
        if (!_retired || _users > 0 || _disposed)
            return;
        _disposed = true;
        Certificate.Dispose();
        foreach (var c in _intermediates)
            c.Dispose();
        foreach (var c in _ca)
            c.Dispose();
    }

    public NbdTlsSettings Settings { get; }

    public X509Certificate2 Certificate { get; }

    public DateTime NotAfter => Certificate.NotAfter.ToUniversalTime();

    /// <summary>When the expiry warning for these credentials was last given (ticks of Environment.TickCount64, 0 for never).</summary>
    internal long LastExpiryWarning;

    /// <summary>Loads and checks what <paramref name="s"/> names; throws <see cref="NbdTlsException"/> with one line saying what is wrong.</summary>
    public static NbdTlsCredentials Load(NbdTlsSettings s, string listener, DateTime? now = null)
    {
        if (s.Mode == NbdTlsMode.Off)
            throw new ArgumentException("TLS is off", nameof(s));
        string certFile = s.CertificateFile ?? throw new NbdTlsException($"nbd listener {listener}: no server certificate configured");
        string keyFile = s.KeyFile ?? throw new NbdTlsException($"nbd listener {listener}: no server key configured");
        string certText = ReadPem(certFile, "server certificate", listener);
        string keyText = ReadPem(keyFile, "server key", listener);
        X509Certificate2 cert;
        try
        {
            cert = X509Certificate2.CreateFromPem(certText, keyText);
        }
        catch (CryptographicException e)
        {
            if (!certText.Contains("-----BEGIN CERTIFICATE-----", StringComparison.Ordinal))
                throw new NbdTlsException($"nbd listener {listener}: server certificate {certFile} is not a PEM certificate (-----BEGIN CERTIFICATE-----)", e);
            if (!keyText.Contains("PRIVATE KEY-----", StringComparison.Ordinal))
                throw new NbdTlsException($"nbd listener {listener}: server key {keyFile} is not a PEM private key (-----BEGIN PRIVATE KEY-----)", e);
            throw new NbdTlsException($"nbd listener {listener}: server key {keyFile} does not match the certificate in {certFile} ({e.Message.TrimEnd('.')})", e);
        }
        var when = now ?? DateTime.UtcNow;
        if (cert.NotAfter.ToUniversalTime() <= when)
            throw new NbdTlsException($"nbd listener {listener}: server certificate {certFile} ('{cert.Subject}') expired on {cert.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC");
        if (cert.NotBefore.ToUniversalTime() > when)
            throw new NbdTlsException($"nbd listener {listener}: server certificate {certFile} ('{cert.Subject}') is not valid before {cert.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} UTC");

        var chain = new X509Certificate2Collection();
        chain.ImportFromPem(certText);
        var intermediates = new X509Certificate2Collection();
        foreach (var c in chain)
        {
            if (c.Thumbprint != cert.Thumbprint)
                intermediates.Add(c);
            else
                c.Dispose(); // the leaf again, without its key: cert is the one kept
        }

        var ca = new X509Certificate2Collection();
        if (s.CaFile is { } caFile)
        {
            string caText = ReadPem(caFile, "CA", listener);
            try
            {
                ca.ImportFromPem(caText);
            }
            catch (CryptographicException e)
            {
                throw new NbdTlsException($"nbd listener {listener}: CA file {caFile} holds a damaged PEM certificate ({e.Message.TrimEnd('.')})", e);
            }
            if (ca.Count == 0)
                throw new NbdTlsException($"nbd listener {listener}: CA file {caFile} is not PEM: it holds no -----BEGIN CERTIFICATE----- block");
        }
        else if (s.VerifyPeer)
        {
            throw new NbdTlsException($"nbd listener {listener}: verifying client certificates needs a CA (tls_ca, or ca-cert.pem in tls_certificates)");
        }

        // The CA's names go out in the CertificateRequest, so a client holding several certificates picks the right one.
        var trust = ca.Count > 0 ? SslCertificateTrust.CreateForX509Collection(ca, sendTrustInHandshake: true) : null;
        var context = SslStreamCertificateContext.Create(cert, intermediates, offline: true, trust);
        return new NbdTlsCredentials(s, cert, context, ca, intermediates);
    }

    private static string ReadPem(string path, string what, string listener)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new NbdTlsException($"nbd listener {listener}: cannot read {what} {path}: {e.Message}", e);
        }
    }

    /// <summary>Options for one connection's handshake; <paramref name="validate"/> decides on the client's certificate.</summary>
    internal SslServerAuthenticationOptions ServerOptions(RemoteCertificateValidationCallback validate) => new()
    {
        ServerCertificateContext = _context,
        ClientCertificateRequired = Settings.VerifyPeer,
        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        AllowRenegotiation = false,
        RemoteCertificateValidationCallback = validate,
    };

    /// <summary>
    /// Checks a client certificate against the CA and the allow list: null when admitted, else why
    /// not. <paramref name="commonName"/> and <paramref name="subject"/> name the client for logs
    /// and the per-export check.
    /// </summary>
    internal string? CheckClient(X509Certificate? presented, X509Chain? sent, out string? commonName, out string? subject)
    {
        commonName = null;
        subject = null;
        if (!Settings.VerifyPeer)
            return null;
        if (presented == null)
            return "the client sent no certificate (this listener requires one signed by its CA)";
        using var cert = new X509Certificate2(presented);
        commonName = cert.GetNameInfo(X509NameType.SimpleName, forIssuer: false);
        subject = cert.Subject;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid("1.3.6.1.5.5.7.3.2")); // TLS client authentication
        if (sent != null)
            foreach (var e in sent.ChainElements)
                chain.ChainPolicy.ExtraStore.Add(e.Certificate);
        if (!chain.Build(cert))
        {
            var status = chain.ChainStatus.Select(c => c.Status).Aggregate(X509ChainStatusFlags.NoError, (a, b) => a | b);
            if ((status & X509ChainStatusFlags.NotTimeValid) != 0)
                return cert.NotAfter.ToUniversalTime() < DateTime.UtcNow
                    ? $"client certificate '{subject}' expired on {cert.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC"
                    : $"client certificate '{subject}' is not valid before {cert.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} UTC";
            if ((status & (X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain)) != 0)
                return $"client certificate '{subject}' (issuer '{cert.Issuer}') is not signed by this listener's CA";
            if ((status & X509ChainStatusFlags.NotValidForUsage) != 0)
                return $"client certificate '{subject}' is not valid for TLS client authentication (extended key usage)";
            return $"client certificate '{subject}' does not verify: {string.Join("; ", chain.ChainStatus.Select(c => c.StatusInformation.Trim()))}";
        }
        string cn = commonName, dn = subject;
        if (Settings.Allow.Count > 0 && !Settings.Allow.Any(r => r.Matches(cn, dn)))
            return $"client certificate '{subject}' is not on this listener's tls_allow list";
        return null;
    }

    /// <summary>Whether a client that proved <paramref name="commonName"/>/<paramref name="subject"/> may open <paramref name="export"/>.</summary>
    internal bool Allows(string? commonName, string? subject, string export) =>
        Settings.Allow.Count == 0 || (commonName != null && Settings.Allow.Any(r => r.Matches(commonName, subject!) && r.Covers(export)));
}
