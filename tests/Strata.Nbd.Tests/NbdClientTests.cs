using System.Security.Cryptography;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// The clients operators already run, against the real daemon's NBD listeners (Unix socket and
/// loopback TCP): qemu-img, qemu-io, nbdinfo, nbdcopy and fio's nbd engine. Data written through
/// NBD is checked through NBD and through the control API (`strata image read`).
/// </summary>
[TestClass]
public sealed class NbdClientTests
{
    private static NbdDaemon _d = null!;

    [ClassInitialize]
    public static async Task StartAsync(TestContext _) => _d = await NbdDaemon.StartAsync("nbd-clients");

    [ClassCleanup]
    public static async Task StopAsync() => await _d.DisposeAsync();

    private static string TempFile(string name) => Path.Combine(_d.Dir, name);

    /// <summary>Bytes of an image through the control API, not NBD.</summary>
    private static async Task<byte[]> ReadThroughCliAsync(string image, long offset, long length)
    {
        string file = TempFile($"{image}-{offset}-{length}.cli");
        await _d.Cli.OkAsync("image", "read", "p", "c", image, "--offset", offset.ToString(), "--length", length.ToString(), "--out", file);
        return File.ReadAllBytes(file);
    }

    [TestMethod]
    public async Task QemuImg_ConvertIntoAndOutOfExport_CompareIdentical()
    {
        await _d.CreateImageAsync("convert", "32M");
        var src = Tools.RandomFile(TempFile("convert.raw"), 12 << 20, 501);
        // In over the Unix socket, out over TCP.
        await Tools.OkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", TempFile("convert.raw"), _d.UnixUri("convert"));
        await Tools.OkAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", _d.TcpUri("convert"), TempFile("convert.out"));
        var back = File.ReadAllBytes(TempFile("convert.out"));
        Assert.AreEqual(32L << 20, back.LongLength, "qemu-img sees the export's size");
        CollectionAssert.AreEqual(src, back[..src.Length]);
        Assert.IsTrue(back.AsSpan(src.Length).IndexOfAnyExcept((byte)0) < 0, "past the written part the image reads as zeroes");
        // qemu-img compare reads both; sizes differ, so the tail must be zeroes for "identical".
        string cmp = await Tools.OkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", TempFile("convert.raw"), _d.UnixUri("convert"));
        StringAssert.Contains(cmp, "Images are identical");
        CollectionAssert.AreEqual(SHA256.HashData(src.AsSpan(0, 1 << 20)), SHA256.HashData(await ReadThroughCliAsync("convert", 0, 1 << 20)));
        // A changed byte is noticed.
        await Tools.OkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 1", _d.UnixUri("convert"));
        var diff = await Tools.RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", TempFile("convert.raw"), _d.TcpUri("convert"));
        Assert.AreEqual(1, diff.ExitCode, diff.ToString());
        StringAssert.Contains(diff.Stdout, "Content mismatch at offset 4096");
    }

    [TestMethod]
    public async Task QemuIo_PatternsAtOddOffsets_ReadBackOverBothListeners()
    {
        await _d.CreateImageAsync("qemuio", "8M");
        string w = await Tools.OkAsync("qemu-io", "-f", "raw",
            "-c", "write -P 0xab 12345 6789",
            "-c", "write -P 0xcd 1048575 3",
            "-c", "flush",
            _d.UnixUri("qemuio"));
        StringAssert.Contains(w, "wrote 6789/6789 bytes at offset 12345");
        string r = await Tools.OkAsync("qemu-io", "-f", "raw",
            "-c", "read -P 0xab 12345 6789",
            "-c", "read -P 0 12344 1",
            "-c", "read -P 0 19134 1",
            "-c", "read -P 0xcd 1048575 3",
            // Write zeroes (NBD_CMD_WRITE_ZEROES) and discard (NBD_CMD_TRIM) at odd offsets read back as zeroes.
            "-c", "write -z 13001 999",
            "-c", "read -P 0 13001 999",
            "-c", "read -P 0xab 14000 5134",
            "-c", "discard 12345 656",
            "-c", "read -P 0 12345 656",
            "-c", "read -P 0xab 14000 10",
            _d.TcpUri("qemuio"));
        Assert.DoesNotContain("verification failed", r);
        Assert.DoesNotContain("error", r.ToLowerInvariant());
        StringAssert.Contains(r, "read 6789/6789 bytes at offset 12345");
        StringAssert.Contains(r, "wrote 999/999 bytes at offset 13001");
        StringAssert.Contains(r, "discard 656/656 bytes at offset 12345");
        // The same bytes through the control API.
        var cli = await ReadThroughCliAsync("qemuio", 12340, 6800);
        var expected = new byte[6800];
        expected.AsSpan(5 + 656, 6789 - 656).Fill(0xab);
        expected.AsSpan(13001 - 12340, 999).Clear();
        CollectionAssert.AreEqual(expected, cli);
    }

    [TestMethod]
    public async Task NbdInfo_ListAndSize_ShowEveryExportAndHonestFlags()
    {
        await _d.CreateImageAsync("info-a", "3M");
        await _d.CreateImageAsync("info-b", "5M");
        string list = await Tools.OkAsync("nbdinfo", "--list", $"nbd+unix:///?socket={_d.NbdSocket}");
        StringAssert.Contains(list, "export=\"p/c/info-a\"");
        StringAssert.Contains(list, "export=\"p/c/info-b\"");
        string tcpList = await Tools.OkAsync("nbdinfo", "--list", $"nbd://127.0.0.1:{_d.Port}");
        StringAssert.Contains(tcpList, "export=\"p/c/info-b\"");
        Assert.AreEqual((5L << 20).ToString(), (await Tools.OkAsync("nbdinfo", "--size", _d.TcpUri("info-b"))).Trim());
        Assert.AreEqual((3L << 20).ToString(), (await Tools.OkAsync("nbdinfo", "--size", _d.UnixUri("info-a"))).Trim());
        using var json = JsonDocument.Parse(await Tools.OkAsync("nbdinfo", "--json", _d.UnixUri("info-a")));
        var e = json.RootElement.GetProperty("exports")[0];
        Assert.IsTrue(e.GetProperty("can_multi_conn").GetBoolean());
        Assert.IsTrue(e.GetProperty("can_fua").GetBoolean());
        Assert.IsTrue(e.GetProperty("can_flush").GetBoolean());
        Assert.IsTrue(e.GetProperty("can_trim").GetBoolean());
        Assert.IsTrue(e.GetProperty("can_zero").GetBoolean());
        Assert.IsFalse(e.GetProperty("is_read_only").GetBoolean());
        Assert.AreEqual(1, e.GetProperty("block_size_minimum").GetInt32());
        Assert.AreEqual(32 << 20, e.GetProperty("block_size_maximum").GetInt32());
        var missing = await Tools.RunAsync("nbdinfo", "--size", _d.UnixUri("no-such-image"));
        Assert.AreNotEqual(0, missing.ExitCode);
        StringAssert.Contains(missing.Stderr, "no export named 'p/c/no-such-image'");
    }

    [TestMethod]
    public async Task NbdCopy_InAndOut_SameBytes()
    {
        await _d.CreateImageAsync("copy", "16M");
        var src = Tools.RandomFile(TempFile("copy.raw"), 16 << 20, 502);
        await Tools.OkAsync("nbdcopy", TempFile("copy.raw"), _d.UnixUri("copy"));
        await Tools.OkAsync("nbdcopy", _d.TcpUri("copy"), TempFile("copy.out"));
        CollectionAssert.AreEqual(SHA256.HashData(src), SHA256.HashData(File.ReadAllBytes(TempFile("copy.out"))));
        CollectionAssert.AreEqual(src.AsSpan(5 << 20, 1 << 20).ToArray(), await ReadThroughCliAsync("copy", 5 << 20, 1 << 20));
    }

    [TestMethod]
    public async Task Fio_NbdEngineRandomWritesWithCrc32cVerify_Pass()
    {
        await _d.CreateImageAsync("fio", "8M");
        string output = await Tools.OkAsync("fio", "--name=nbd-verify", "--ioengine=nbd", "--uri=" + _d.UnixUri("fio"),
            "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=16", "--randseed=503",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output-format=json");
        using var json = JsonDocument.Parse(output[output.IndexOf('{')..]);
        var job = json.RootElement.GetProperty("jobs")[0];
        Assert.AreEqual(0, job.GetProperty("error").GetInt32());
        Assert.AreEqual(4L << 20, job.GetProperty("write").GetProperty("io_bytes").GetInt64(), "every block was written");
        Assert.AreEqual(4L << 20, job.GetProperty("read").GetProperty("io_bytes").GetInt64(), "every block was read back and verified");
        // And over TCP, a second pass verifying with a different block size.
        await Tools.OkAsync("fio", "--name=nbd-verify-tcp", "--ioengine=nbd", "--uri=" + _d.TcpUri("fio"),
            "--rw=randwrite", "--bs=12k", "--size=3M", "--iodepth=8", "--randseed=504",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1");
    }

    [TestMethod]
    public async Task SeveralClients_AtOnce_DisjointRanges_AllLand()
    {
        await _d.CreateImageAsync("multi", "24M");
        // Four writers at once, two per listener, each on its own unaligned range.
        var writers = Enumerable.Range(0, 4).Select(i => Tools.OkAsync("qemu-io", "-f", "raw",
            "-c", $"write -P 0x{0x11 * (i + 1):x2} {i * (5 << 20) + 4097} {(1 << 20) + 3}",
            "-c", $"read -P 0x{0x11 * (i + 1):x2} {i * (5 << 20) + 4097} {(1 << 20) + 3}",
            i % 2 == 0 ? _d.UnixUri("multi") : _d.TcpUri("multi"))).ToList();
        // And a fifth, with one large request, beside them.
        writers.Add(Tools.OkAsync("qemu-io", "-f", "raw", "-c", $"write -P 0x99 {20 << 20} {4 << 20}", _d.UnixUri("multi")));
        foreach (var o in await Task.WhenAll(writers))
            Assert.DoesNotContain("verification failed", o);
        string check = await Tools.OkAsync("qemu-io", "-f", "raw",
            "-c", $"read -P 0x11 4097 {(1 << 20) + 3}",
            "-c", $"read -P 0x22 {(5 << 20) + 4097} {(1 << 20) + 3}",
            "-c", $"read -P 0x33 {(10 << 20) + 4097} {(1 << 20) + 3}",
            "-c", $"read -P 0x44 {(15 << 20) + 4097} {(1 << 20) + 3}",
            "-c", $"read -P 0 {(1 << 20) + 4100} {(4 << 20) - 3}",
            _d.TcpUri("multi"));
        Assert.DoesNotContain("verification failed", check);
        var tail = await ReadThroughCliAsync("multi", 20 << 20, 4 << 20);
        Assert.IsTrue(tail.All(b => b == 0x99));
    }

    [TestMethod]
    public async Task ImageInfo_ShowsUris_PoolClientsShowsHolder_RemoveRefusedUntilItGoes()
    {
        await _d.CreateImageAsync("held", "1M");
        var info = await _d.Cli.JsonAsync<ImageDto>("image", "info", "p", "c", "held");
        CollectionAssert.AreEqual(new[] { _d.UnixUri("held"), _d.TcpUri("held") }, info.Nbd!.ToList());
        Assert.IsEmpty(info.Clients!);

        using (var c = await _d.OpenTcpAsync("held"))
        {
            await _d.WaitClientsAsync(1);
            var clients = await _d.Cli.JsonAsync<List<PoolClientDto>>("pool", "clients", "p");
            Assert.AreEqual("nbd", clients[0].Kind);
            Assert.AreEqual("c/held", clients[0].Image);
            StringAssert.Contains(clients[0].Peer, "127.0.0.1:");
            string table = await _d.Cli.OkAsync("image", "info", "p", "c", "held");
            StringAssert.Contains(table, _d.UnixUri("held"));
            StringAssert.Contains(table, _d.TcpUri("held"));
            StringAssert.Contains(table, "open by 1 client(s)");
            string err = await _d.Cli.FailsAsync(6, "image", "rm", "p", "c", "held");
            StringAssert.Contains(err, "image 'held' in pool 'p' container 'c' is open by 1 client(s)");
            await c.WriteAsync(0, [1, 2, 3]);
            await c.DisconnectAsync();
            Assert.IsTrue(await c.IsClosedByServerAsync());
        }
        await _d.WaitClientsAsync(0);
        await _d.Cli.OkAsync("image", "rm", "p", "c", "held");
    }
}
