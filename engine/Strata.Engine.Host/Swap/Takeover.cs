using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using Strata.Engine.Nbd;
using Strata.Interop;

namespace Strata.Engine.Host.Swap;

/// <summary>
/// The new process's side of the hot swap (`strata-engine run --takeover`): says hello on the
/// running engine's swap socket, receives the control socket, the NBD listeners and connections,
/// and, once it has opened the storage and adopted them, reports ready and waits for the go.
/// </summary>
internal sealed class Takeover : IDisposable
{
    /// <summary>Test-only faults (tests/Strata.Nbd.Tests/SwapTests.cs): exit-at-start, crash-after-half, refuse-pool:NAME, hold-until:FILE (stay before ready until FILE exists).</summary>
    public const string FaultVariable = "STRATA_SWAP_FAULT";

    private readonly Socket _socket;
    private readonly Stopwatch _clock = new();

    private Takeover(Socket socket) => _socket = socket;

    public int ControlFd { get; private set; } = -1;

    public Dictionary<string, Socket> Listeners { get; } = new();

    public List<(NbdConnectionState State, Socket Socket)> Connections { get; } = [];

    /// <summary>The pools open in the old engine: each must open here, else the swap is refused.</summary>
    public IReadOnlyList<string> Pools { get; private set; } = [];

    public int OldPid { get; private set; }

    public static string? Fault => Environment.GetEnvironmentVariable(FaultVariable);

    /// <summary>Connects, says hello, and receives everything the old engine hands over. Throws ConfigException when refused.</summary>
    public static Takeover Connect(ResolvedConfig cfg)
    {
        if (Fault == "exit-at-start")
            Environment.Exit(3);
        string path = Path.Combine(cfg.SocketDir, "swap.sock");
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e)
        {
            s.Dispose();
            throw new ConfigException($"--takeover: no running engine takes a swap at {path} ({e.Message})");
        }
        var t = new Takeover(s);
        try
        {
            // The old engine pauses, freezes and checkpoints before it sends: allow it time.
            s.ReceiveTimeout = 600_000;
            HandoffWire.Send(s, new HandoffMessage("hello")
            {
                Pid = Environment.ProcessId, Version = EngineService.Version, MaxLayout = EngineRelease.Catalog.MaxSupported, DataDir = cfg.DataDir,
            });
            while (true)
            {
                var (m, fds) = HandoffWire.Receive(s);
                switch (m.Type)
                {
                    case "refuse":
                        throw new ConfigException($"--takeover refused by the running engine: {m.Why}");
                    case "control":
                        t.ControlFd = fds.Single();
                        t.OldPid = m.Pid;
                        break;
                    case "listener":
                        t.Listeners[m.Spec!] = new Socket(new SafeSocketHandle(fds.Single(), ownsHandle: true));
                        break;
                    case "connection":
                        t.Connections.Add((m.Connection!, new Socket(new SafeSocketHandle(fds.Single(), ownsHandle: true))));
                        break;
                    case "end":
                        t.Pools = m.Pools ?? [];
                        t._clock.Start();
                        return t;
                    default:
                        throw new ConfigException($"--takeover: unexpected hand-off message '{m.Type}'");
                }
            }
        }
        catch (Exception e) when (e is IOException or JsonException or InvalidOperationException)
        {
            t.Dispose();
            throw new ConfigException($"--takeover: the hand-off from the running engine broke: {e.Message}");
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>Milliseconds since everything was received (the "open" part of the pause).</summary>
    public double OpenMs => _clock.Elapsed.TotalMilliseconds;

    /// <summary>Tells the old engine this process cannot take over (it takes everything back).</summary>
    public void Fail(string why)
    {
        try
        {
            HandoffWire.Send(_socket, new HandoffMessage("fail") { Pid = Environment.ProcessId, Why = why });
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Reports ready and waits for the go. An old engine gone meanwhile (killed) counts as a go: nobody else serves.</summary>
    public void ReadyAndWaitGo()
    {
        try
        {
            HandoffWire.Send(_socket, new HandoffMessage("ready") { Pid = Environment.ProcessId, OpenMs = OpenMs });
            HandoffWire.Receive(_socket);
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
        }
    }

    public void Dispose() => _socket.Dispose();
}
