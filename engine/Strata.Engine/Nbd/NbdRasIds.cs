namespace Strata.Engine.Nbd;

/// <summary>Stable RAS event ids of the NBD server (raised by the daemon); never rename one that has shipped.</summary>
public static class NbdRasIds
{
    /// <summary>A client refused at the TLS stage: plain on a listener that requires TLS, a failed handshake, a refused certificate or export.</summary>
    public const string TlsClientRefused = "nbd_tls_client_refused";

    /// <summary>A listener's server certificate expires soon.</summary>
    public const string TlsCertificateExpiring = "nbd_tls_cert_expiring";

    /// <summary>The listeners' certificates were loaded again (SIGHUP or `strata system reload-tls`).</summary>
    public const string TlsReloaded = "nbd_tls_reloaded";
}
