using System.Net.Sockets;

namespace Strata.Interop.Tests;

/// <summary>The managed side of descriptor passing (the C cases are in native/tests/test_fdpass.c).</summary>
[TestClass]
public sealed class FdPassingTests
{
    private static (Socket A, Socket B, string Dir) Pair()
    {
        string dir = Directory.CreateTempSubdirectory("fdpass").FullName;
        var ep = new UnixDomainSocketEndPoint(Path.Combine(dir, "s"));
        using var l = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        l.Bind(ep);
        l.Listen(1);
        var a = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        a.Connect(ep);
        return (a, l.Accept(), dir);
    }

    [TestMethod]
    public void FdPassing_ConnectedSocket_ReceiverTalksThroughItsCopy()
    {
        var (ctlA, ctlB, d1) = Pair();
        var (clientEnd, serverEnd, d2) = Pair();
        FdPassing.MarkShared(serverEnd);
        FdPassing.Send(ctlA, "conn"u8, [(int)serverEnd.SafeHandle.DangerousGetHandle()]);
        // The sender's copy goes away: with the descriptor marked shared, its close does not cut the connection.
        serverEnd.Dispose();
        var buf = new byte[4];
        var fds = FdPassing.Receive(ctlB, buf, 4);
        Assert.AreEqual("conn", System.Text.Encoding.ASCII.GetString(buf));
        Assert.HasCount(1, fds);
        using var adopted = new Socket(new SafeSocketHandle(fds[0], ownsHandle: true));
        clientEnd.Send("ping"u8);
        var got = new byte[4];
        Assert.AreEqual(4, adopted.Receive(got));
        Assert.AreEqual("ping", System.Text.Encoding.ASCII.GetString(got));
        adopted.Send("pong"u8);
        Assert.AreEqual(4, clientEnd.Receive(got));
        Assert.AreEqual("pong", System.Text.Encoding.ASCII.GetString(got));
        foreach (var s in new[] { ctlA, ctlB, clientEnd })
            s.Dispose();
        Directory.Delete(d1, true);
        Directory.Delete(d2, true);
    }

    [TestMethod]
    public void FdPassing_PeerGoneMidFrame_ThrowsEpipeNamingIt()
    {
        var (a, b, dir) = Pair();
        FdPassing.Send(a, "ab"u8, []);
        a.Dispose();
        var e = Assert.ThrowsExactly<FdPassingException>(() => FdPassing.Receive(b, new byte[4], 1));
        Assert.AreEqual(Errno.EPIPE, e.Errno);
        StringAssert.Contains(e.Message, "closed after 2 of 4 bytes");
        b.Dispose();
        Directory.Delete(dir, true);
    }
}
