using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text.Json;
using Strata.Engine.Control;
using Strata.Engine.Nbd;
using Strata.Interop;

namespace Strata.Engine.Host.Swap;

/// <summary>
/// One message of the hot swap's hand-off, old engine and new process talking over the swap socket
/// (SOCKET_DIR/swap.sock). Types, in order: new → old <c>hello</c>; old → new <c>refuse</c> or
/// <c>control</c>, <c>listener</c> (one each), <c>connection</c> (one each) and <c>end</c>; new → old
/// <c>ready</c> or <c>fail</c>; old → new <c>go</c> once it has let go (docs/operations.md, "Hot swap").
/// </summary>
internal sealed record HandoffMessage(string Type)
{
    public int Pid { get; init; }
    public string? Version { get; init; }
    public uint MaxLayout { get; init; }
    public string? DataDir { get; init; }
    public string? Why { get; init; }
    public string? Spec { get; init; }
    public NbdConnectionState? Connection { get; init; }
    public IReadOnlyList<string>? Pools { get; init; }
    public double OpenMs { get; init; }
}

/// <summary>Frames: a 4-byte little-endian length, then the message as JSON; descriptors ride on the length's first byte.</summary>
internal static class HandoffWire
{
    /// <summary>A frame larger than this is a broken peer (a connection's carried bytes are at most its 128 KiB receive buffer).</summary>
    private const int MaxFrame = 4 << 20;

    public static void Send(Socket socket, HandoffMessage message, params int[] fds)
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(message, Api.Json);
        var frame = new byte[4 + json.Length];
        BinaryPrimitives.WriteInt32LittleEndian(frame, json.Length);
        json.CopyTo(frame, 4);
        FdPassing.Send(socket, frame, fds);
    }

    /// <summary>Blocks for the next message (the socket's ReceiveTimeout bounds the wait); returns it with the descriptors it carried.</summary>
    public static (HandoffMessage Message, int[] Fds) Receive(Socket socket)
    {
        var head = new byte[4];
        var fds = FdPassing.Receive(socket, head, 4);
        int length = BinaryPrimitives.ReadInt32LittleEndian(head);
        if (length <= 0 || length > MaxFrame)
            throw new IOException($"hot swap: a hand-off frame of {length} bytes (at most {MaxFrame})");
        var body = new byte[length];
        FdPassing.Receive(socket, body, 1);
        var m = JsonSerializer.Deserialize<HandoffMessage>(body, Api.Json) ?? throw new IOException("hot swap: an empty hand-off message");
        return (m, fds);
    }
}
