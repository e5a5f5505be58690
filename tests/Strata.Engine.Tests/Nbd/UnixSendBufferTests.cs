using System.Net;
using System.Net.Sockets;
using Strata.Engine.Nbd;

namespace Strata.Engine.Tests.Nbd;

/// <summary>
/// A connection on a Unix socket asks for a send buffer that holds a whole 1 MiB read reply (the
/// kernel caps it at net.core.wmem_max and reports twice what it granted); TCP keeps its autotuning.
/// </summary>
[TestClass]
public sealed class UnixSendBufferTests
{
    [TestMethod]
    public void UnixSocket_SendBufferWidened_UpToTheKernelsCap_TcpLeftAlone()
    {
        string dir = Directory.CreateTempSubdirectory("strata-sndbuf-").FullName;
        try
        {
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(Path.Combine(dir, "s.sock")));
            listener.Listen();
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            client.Connect(listener.LocalEndPoint!);
            using var server = listener.Accept();
            int before = server.SendBufferSize;
            long cap = long.Parse(File.ReadAllText("/proc/sys/net/core/wmem_max").Trim());
            NbdConnection.WidenUnixSendBuffer(server);
            long expected = Math.Min(4L << 20, cap) * 2;
            Assert.AreEqual(Math.Max(before, expected), server.SendBufferSize, $"before {before}, wmem_max {cap}");

            using var tcpListener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            tcpListener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            tcpListener.Listen();
            using var tcpClient = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            tcpClient.Connect(tcpListener.LocalEndPoint!);
            using var tcpServer = tcpListener.Accept();
            int tcpBefore = tcpServer.SendBufferSize;
            NbdConnection.WidenUnixSendBuffer(tcpServer);
            Assert.AreEqual(tcpBefore, tcpServer.SendBufferSize);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
