using System.Net;
using Strata.Engine.Nbd;

namespace Strata.Nbd.Tests;

/// <summary>The codec's exact bytes (against the spec's layouts, written out by hand here) and the parsers of names and listeners.</summary>
[TestClass]
public sealed class NbdWireTests
{
    [TestMethod]
    public void RequestHeader_ReadsTheSpecsLayout()
    {
        byte[] wire = [0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x30, 0x39, 0, 0, 0x1a, 0x85];
        var h = NbdRequestHeader.Read(wire);
        Assert.AreEqual(new NbdRequestHeader(NbdProtocol.RequestMagic, NbdProtocol.CmdFlagFua, NbdProtocol.CmdWrite, 0x0102030405060708, 12345, 6789), h);
        var back = new byte[28];
        h.Write(back);
        CollectionAssert.AreEqual(wire, back);
    }

    [TestMethod]
    public void Replies_HaveTheSpecsBytes()
    {
        var b = new byte[64];
        Assert.AreEqual(16, NbdWire.WriteSimpleReply(b, 22, 0xAABB));
        CollectionAssert.AreEqual(new byte[] { 0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0xAA, 0xBB }, b[..16]);

        Assert.AreEqual(28, NbdWire.WriteOffsetDataHeader(b, 7, 4096, 512));
        CollectionAssert.AreEqual(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0x02, 0x08, // magic, DONE, OFFSET_DATA, cookie, length 8+512
            0, 0, 0, 0, 0, 0, 0x10, 0x00,                                                 // offset 4096
        }, b[..28]);

        int n = NbdWire.WriteErrorChunk(b, 9, NbdProtocol.EInval, "bad");
        Assert.AreEqual(20 + 6 + 3, n);
        CollectionAssert.AreEqual(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 9, // magic, DONE, ERROR, cookie, length 6+3
            0, 0, 0, 22, 0, 3, (byte)'b', (byte)'a', (byte)'d',
        }, b[..n]);
        Assert.AreEqual(20 + 6 + NbdProtocol.MaxStringLength, NbdWire.ErrorChunkSize(new string('x', 10_000)), "messages are cut to the spec's 4096 bytes");
    }

    [TestMethod]
    public void HandshakeMessages_HaveTheSpecsBytes()
    {
        var b = new byte[200];
        Assert.AreEqual(18, NbdWire.WriteGreeting(b, 3));
        CollectionAssert.AreEqual("NBDMAGICIHAVEOPT"u8.ToArray(), b[..16]);
        CollectionAssert.AreEqual(new byte[] { 0, 3 }, b[16..18]);
        Assert.AreEqual(20, NbdWire.WriteOptionReplyHeader(b, 7, NbdProtocol.RepErrUnknown, 5));
        CollectionAssert.AreEqual(new byte[] { 0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0x80, 0, 0, 6, 0, 0, 0, 5 }, b[..20]);
        Assert.AreEqual(134, NbdWire.WriteExportNameReply(b, 1 << 20, 0x0161, noZeroes: false));
        Assert.AreEqual(10, NbdWire.WriteExportNameReply(b, 1 << 20, 0x0161, noZeroes: true));
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x61 }, b[..10]);
    }

    [TestMethod]
    [DataRow("pool/cont/image", true)]
    [DataRow("p.1/c_2/disk-3", true)]
    [DataRow("", false)]
    [DataRow("pool/cont", false)]
    [DataRow("pool//image", false)]
    [DataRow("/pool/cont/image", false)]
    [DataRow("pool/cont/image/", false)]
    public void ExportName_PoolContainerImage(string name, bool valid)
    {
        Assert.AreEqual(valid, NbdExportCatalog.TryParseName(name, out var p, out var c, out var i));
        if (valid)
            Assert.AreEqual(name, $"{p}/{c}/{i}");
    }

    [TestMethod]
    public void ListenerAddress_UnixResolvesAgainstTheDataDir_TcpLoopbackOnly()
    {
        var u = NbdListenerAddress.Parse("unix:run/nbd.sock", "/var/lib/strata");
        Assert.AreEqual("/var/lib/strata/run/nbd.sock", u.UnixPath);
        Assert.IsNull(u.Tcp);
        Assert.AreEqual("/run/strata/nbd.sock", NbdListenerAddress.Parse("unix:/run/strata/nbd.sock", "/var/lib/strata").UnixPath);
        Assert.AreEqual(new IPEndPoint(IPAddress.Loopback, 10809), NbdListenerAddress.Parse("tcp:127.0.0.1:10809", "/x").Tcp);
        Assert.AreEqual(new IPEndPoint(IPAddress.IPv6Loopback, 0), NbdListenerAddress.Parse("tcp:[::1]:0", "/x").Tcp);
        Assert.AreEqual(new IPEndPoint(IPAddress.Loopback, 1), NbdListenerAddress.Parse("tcp:localhost:1", "/x").Tcp);
        StringAssert.Contains(Assert.ThrowsExactly<FormatException>(() => NbdListenerAddress.Parse("tcp:10.0.0.1:10809", "/x")).Message, "not a loopback address");
        StringAssert.Contains(Assert.ThrowsExactly<FormatException>(() => NbdListenerAddress.Parse("tcp:127.0.0.1", "/x")).Message, "is not tcp:HOST:PORT");
        StringAssert.Contains(Assert.ThrowsExactly<FormatException>(() => NbdListenerAddress.Parse("unix:/" + new string('a', 120), "/x")).Message, "107 bytes");
    }
}
