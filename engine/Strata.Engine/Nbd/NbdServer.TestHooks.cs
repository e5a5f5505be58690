namespace Strata.Engine.Nbd;

public sealed partial class NbdServer
{
    /// <summary>
    /// Awaited by every connection's send loop once it holds the send lock, before it takes what the
    /// reply channel holds (white-box tests: pieces queued meanwhile find the socket taken).
    /// </summary>
    internal Func<ValueTask>? SendLoopHolding { get; set; }
}
