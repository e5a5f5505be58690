using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Strata.Cli.Tests;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// NBD over TLS in the real daemon with the clients operators run (qemu-img, qemu-io, nbdinfo,
/// fio), certificates made by the test: a TCP listener on every address (0.0.0.0, allowed only
/// because it requires TLS) with an allow list (hv1: pool p; hv2: p/c/only2). Each refusal has
/// its own reason, so its RAS event is told apart and none is held back by the rate limit (the
/// same refusal of the same address at most every 10 s).
/// </summary>
[TestClass]
public sealed class NbdTlsClientTests
{
    private static TestPki _pki = null!;
    private static string _dir = null!;
    private static EngineProcess _engine = null!;
    private static StrataCli _cli = null!;
    private static int _port;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint geteuid();

    private static string ServerDir => Path.Combine(_dir, "server");
    private static string Hv1 => Path.Combine(_dir, "hv1");
    private static string RasFile => Path.Combine(_engine.DataDir, "ras", "events.jsonl");

    [ClassInitialize]
    public static async Task StartAsync(TestContext _)
    {
        _pki = TestPki.Create();
        _dir = Bin.NewTempDir("nbd-tls");
        // The server certificate expires in 5 days: the engine warns at start.
        _pki.WriteServerDir(ServerDir, days: 5);
        TestPki.WriteClientDir(Hv1, _pki, _pki.Client("hv1"));
        TestPki.WriteClientDir(Path.Combine(_dir, "hv2"), _pki, _pki.Client("hv2"));
        TestPki.WriteClientDir(Path.Combine(_dir, "hv3"), _pki, _pki.Client("hv3"));
        TestPki.WriteClientDir(Path.Combine(_dir, "other-ca"), _pki, TestPki.Create("Another CA").Client("hv1"));
        TestPki.WriteClientDir(Path.Combine(_dir, "expired"), _pki, _pki.Client("hv1", DateTimeOffset.UtcNow.AddDays(-20), DateTimeOffset.UtcNow.AddDays(-1)));
        TestPki.WriteClientDir(Path.Combine(_dir, "no-cert"), _pki, null);
        string data = Path.Combine(_dir, "data");
        _port = NbdDaemon.FreePort();
        string cfg = Path.Combine(_dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            targets:
              - file:{data}/t0.img?create=1&size=1G
              - file:{data}/t1.img?create=1&size=1G
            nbd:
              - unix:run/nbd.sock
              - listen: tcp:0.0.0.0:{_port}
                tls: require
                tls_certificates: {ServerDir}
                tls_allow:
                  - identity: hv1
                    exports: [p]
                  - identity: hv2
                    exports: [p/c/only2]
            """);
        _engine = await EngineProcess.StartAsync(data, "--config", cfg);
        _cli = new StrataCli(_engine.Socket);
        await _cli.OkAsync("pool", "create", "p", "--size", "512M");
        await _cli.OkAsync("cont", "create", "p", "c");
        await _cli.OkAsync("image", "create", "p", "c", "a", "--size", "16M");
        await _cli.OkAsync("image", "create", "p", "c", "only2", "--size", "2M");
    }

    [ClassCleanup]
    public static async Task StopAsync()
    {
        await _engine.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    private static string Uri(string image, string certs, string host = "127.0.0.1") => $"nbds://{host}:{_port}/p/c/{image}?tls-certificates={Path.Combine(_dir, certs)}";

    /// <summary>qemu's form: a tls-creds-x509 object (the directory's ca-cert.pem, client-cert.pem, client-key.pem) and image options.</summary>
    private static string[] Qemu(string image, string certs = "hv1") =>
        ["--object", $"tls-creds-x509,id=tls0,dir={Path.Combine(_dir, certs)},endpoint=client",
         "--image-opts", $"driver=nbd,host=127.0.0.1,port={_port},export=p/c/{image},tls-creds=tls0"];

    /// <summary>Waits (bounded) for a RAS event with <paramref name="id"/> whose message contains every text given.</summary>
    private static async Task<string> WaitRasAsync(string id, params string[] texts)
    {
        string? found = null;
        for (int i = 0; i < 300 && found == null; i++)
        {
            found = File.Exists(RasFile)
                ? File.ReadAllLines(RasFile).FirstOrDefault(l => l.Contains($"\"{id}\"", StringComparison.Ordinal) && texts.All(t => l.Contains(t, StringComparison.Ordinal)))
                : null;
            if (found == null)
                await Task.Delay(100);
        }
        return found ?? throw new AssertFailedException($"no RAS event {id} with [{string.Join(", ", texts)}] in:\n{(File.Exists(RasFile) ? File.ReadAllText(RasFile) : "(no file)")}\nengine log:\n{_engine.Log}");
    }

    [TestMethod]
    public async Task QemuImgAndQemuIo_OverTls_ConvertCompareAndPatterns()
    {
        string src = Path.Combine(_dir, "convert.raw");
        var bytes = Tools.RandomFile(src, 6 << 20, 601);
        await Tools.OkAsync("qemu-img", ["convert", "-n", .. Qemu("a")[..2], "-f", "raw", src, "--target-image-opts", Qemu("a")[3]]);
        string cmp = await Tools.OkAsync("qemu-img", ["compare", .. Qemu("a")[..2], "--image-opts", $"driver=file,filename={src}", Qemu("a")[3]]);
        StringAssert.Contains(cmp, "Images are identical");
        string io = await Tools.OkAsync("qemu-io", [.. Qemu("a"), "-c", "write -P 0x5a 12345 6789", "-c", "read -P 0x5a 12345 6789", "-c", "write -z 8388607 3", "-c", "read -P 0 8388607 3"]);
        Assert.DoesNotContain("verification failed", io);
        StringAssert.Contains(io, "read 6789/6789 bytes at offset 12345");
        // The same bytes through the control API (not NBD).
        string file = Path.Combine(_dir, "a.cli");
        await _cli.OkAsync("image", "read", "p", "c", "a", "--offset", "0", "--length", "12345", "--out", file);
        CollectionAssert.AreEqual(bytes[..12345], File.ReadAllBytes(file));
        var diff = await Tools.RunAsync("qemu-img", ["compare", .. Qemu("a")[..2], "--image-opts", $"driver=file,filename={src}", Qemu("a")[3]]);
        Assert.AreEqual(1, diff.ExitCode, diff.ToString());
        StringAssert.Contains(diff.Stdout, "Content mismatch at offset 12288");
    }

    [TestMethod]
    public async Task NbdInfoAndFio_OverNbds_SizeListAndVerifiedWrites()
    {
        Assert.AreEqual((16L << 20).ToString(), (await Tools.OkAsync("nbdinfo", "--size", Uri("a", "hv1"))).Trim());
        using (var json = JsonDocument.Parse(await Tools.OkAsync("nbdinfo", "--json", Uri("a", "hv1"))))
            Assert.IsTrue(json.RootElement.GetProperty("TLS").GetBoolean());
        // Each certificate lists only what it may open.
        string list1 = await Tools.OkAsync("nbdinfo", "--list", $"nbds://127.0.0.1:{_port}?tls-certificates={Hv1}");
        StringAssert.Contains(list1, "export=\"p/c/a\"");
        string list2 = await Tools.OkAsync("nbdinfo", "--list", $"nbds://127.0.0.1:{_port}?tls-certificates={Path.Combine(_dir, "hv2")}");
        StringAssert.Contains(list2, "export=\"p/c/only2\"");
        Assert.DoesNotContain("p/c/a\"", list2);

        // fio's nbd engine may not name certificate files in its URI (libnbd refuses local files there):
        // libnbd reads $HOME/.pki/libnbd, so fio runs as an unprivileged user with HOME set (root reads /etc/pki/libnbd).
        string home = Path.Combine(_dir, "fio-home");
        TestPki.WriteClientDir(Path.Combine(home, ".pki", "libnbd"), _pki, (File.ReadAllText(Path.Combine(Hv1, "client-cert.pem")), File.ReadAllText(Path.Combine(Hv1, "client-key.pem"))));
        string[] fio = ["fio", "--name=tls-verify", "--ioengine=nbd", $"--uri=nbds://127.0.0.1:{_port}/p/c/a",
            "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=16", "--randseed=602", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output-format=json"];
        CliResult r;
        if (geteuid() == 0)
        {
            await Tools.OkAsync("chown", "-R", "65534:65534", home);
            r = await Tools.RunAsync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "env", $"HOME={home}", .. fio]);
        }
        else
        {
            r = await Tools.RunAsync("env", [$"HOME={home}", .. fio]);
        }
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout[r.Stdout.IndexOf('{')..]);
        var job = doc.RootElement.GetProperty("jobs")[0];
        Assert.AreEqual(0, job.GetProperty("error").GetInt32());
        Assert.AreEqual(4L << 20, job.GetProperty("read").GetProperty("io_bytes").GetInt64(), "every block was read back and verified");
    }

    public static IEnumerable<object[]> Refusals =>
    [
        ["expired", "client certificate 'CN=hv1' expired on", "nbd_connect_uri"],
        ["no-cert", "the client sent no certificate", "nbd_connect_uri"],
        ["plain", "did not start TLS on a listener that requires it", "server requires TLS encryption first"],
        ["hv3", "client certificate 'CN=hv3' is not on this listener's tls_allow list", "nbd_connect_uri"],
        ["hv2", "client certificate 'CN=hv2' may not open export 'p/c/a'", "server policy prevents NBD_OPT_GO"],
    ];

    [TestMethod]
    [DynamicData(nameof(Refusals))]
    public async Task Refused_AtHandshake_RasEventNamesPeer_OthersUnaffected(string certs, string reason, string clientSays)
    {
        // A connection from hv1 stays open and working throughout.
        using var held = await TlsNbdClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, _port));
        await held.HandshakeAsync();
        Assert.AreEqual(RepAck, (await held.StartTlsAsync(X509Certificate2.CreateFromPemFile(Path.Combine(Hv1, "client-cert.pem"), Path.Combine(Hv1, "client-key.pem")),
            [X509Certificate2.CreateFromPem(_pki.CaPem)], "127.0.0.1")).Type);
        Assert.AreEqual(RepAck, (await held.GoAsync("p/c/a")).Type);

        string uri = certs == "plain" ? $"nbd://127.0.0.1:{_port}/p/c/a" : Uri("a", certs);
        var r = await Tools.RunAsync("nbdinfo", "--size", uri);
        Assert.AreNotEqual(0, r.ExitCode, r.ToString());
        Assert.AreEqual("", r.Stdout.Trim(), "no size was served");
        StringAssert.Contains(r.Stderr, clientSays);
        await WaitRasAsync("nbd_tls_client_refused", "NBD client 127.0.0.1:", reason);

        Assert.AreEqual(SimpleMagic, await held.ReadCommandMagicAsync(0, 512), "the open connection is unaffected");
        Assert.AreEqual((16L << 20).ToString(), (await Tools.OkAsync("nbdinfo", "--size", Uri("a", "hv1"))).Trim(), "a good client still connects");
        Assert.IsFalse(_engine.HasExited);
    }

    [TestMethod]
    public async Task ClientOfAnotherCa_RefusedAtTlsHandshake_RasEvent()
    {
        // GnuTLS clients send no certificate the server's CA list does not name; this client presents it anyway.
        var (cert, key) = TestPki.Create("Another CA").Client("hv1");
        using var c = await TlsNbdClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, _port));
        await c.HandshakeAsync();
        try
        {
            await c.StartTlsAsync(X509Certificate2.CreateFromPem(cert, key), [X509Certificate2.CreateFromPem(_pki.CaPem)], "127.0.0.1");
            // TLS 1.3: the client may finish its side before the server's verdict reaches it.
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
        {
        }
        await WaitRasAsync("nbd_tls_client_refused", "NBD client 127.0.0.1:", "client certificate 'CN=hv1' (issuer 'CN=Another CA') is not signed by this listener's CA");
    }

    [TestMethod]
    public async Task ServerCertificateNearExpiry_RasWarningAtStart()
    {
        string ras = await WaitRasAsync("nbd_tls_cert_expiring", $"tcp:0.0.0.0:{_port}", "CN=localhost");
        StringAssert.Contains(ras, "days)");
    }

    [TestMethod]
    public async Task ImageInfo_TlsListener_PrintsNbdsUri()
    {
        string info = await _cli.OkAsync("image", "info", "p", "c", "a");
        StringAssert.Contains(info, $"nbds://{Dns.GetHostName()}:{_port}/p/c/a");
        StringAssert.Contains(info, "nbd+unix:///p/c/a?socket=");
    }

    [TestMethod]
    public async Task ReloadTls_CliAndSighup_NewCertificateServed_OpenConnectionKept_BadFilesKeepOld()
    {
        using var held = await TlsNbdClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, _port));
        var hv1 = X509Certificate2.CreateFromPemFile(Path.Combine(Hv1, "client-cert.pem"), Path.Combine(Hv1, "client-key.pem"));
        X509Certificate2Collection trust = [X509Certificate2.CreateFromPem(_pki.CaPem)];
        await held.HandshakeAsync();
        await held.StartTlsAsync(hv1, trust, "127.0.0.1");
        Assert.AreEqual(RepAck, (await held.GoAsync("p/c/a")).Type);

        async Task<string> ServedSubjectAsync()
        {
            using var c = await TlsNbdClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, _port));
            await c.HandshakeAsync();
            await c.StartTlsAsync(hv1, trust, "127.0.0.1");
            return c.Tls!.RemoteCertificate!.Subject;
        }
        void Renew(string cn)
        {
            var (cert, key) = _pki.Server(days: 365, cn: cn);
            File.WriteAllText(Path.Combine(ServerDir, "server-cert.pem"), cert);
            File.WriteAllText(Path.Combine(ServerDir, "server-key.pem"), key);
        }

        Renew("renewed-by-cli");
        string reloaded = await _cli.OkAsync("system", "reload-tls");
        StringAssert.Contains(reloaded, $"reloaded tcp:0.0.0.0:{_port}: 'CN=renewed-by-cli' valid until");
        Assert.AreEqual("CN=renewed-by-cli", await ServedSubjectAsync());
        Assert.AreEqual(SimpleMagic, await held.ReadCommandMagicAsync(0, 512), "the open connection is unaffected");
        await WaitRasAsync("nbd_tls_reloaded", "CN=renewed-by-cli");

        // A key that does not match: refused in one line, the previous certificate stays in use.
        File.WriteAllText(Path.Combine(ServerDir, "server-key.pem"), _pki.Server().Key);
        string err = await _cli.FailsAsync(2, "system", "reload-tls");
        StringAssert.Contains(err, "certificates not reloaded, the previous ones stay in use");
        StringAssert.Contains(err, "does not match the certificate");
        Assert.DoesNotContain("\n", err.Trim());
        Assert.AreEqual("CN=renewed-by-cli", await ServedSubjectAsync());

        Renew("renewed-by-sighup");
        Bin.Signal(_engine.Pid, 1);
        await WaitRasAsync("nbd_tls_reloaded", "CN=renewed-by-sighup");
        Assert.AreEqual("CN=renewed-by-sighup", await ServedSubjectAsync());
        Assert.AreEqual(SimpleMagic, await held.ReadCommandMagicAsync(0, 512));
        Assert.AreEqual((16L << 20).ToString(), (await Tools.OkAsync("nbdinfo", "--size", Uri("a", "hv1"))).Trim());
    }
}
