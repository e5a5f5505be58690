namespace Strata.Engine.Nbd;

/// <summary>
/// Where .NET runs the continuation of a socket operation. By default the socket engine's epoll
/// thread hands every completion to the thread pool: for the NBD server that is one more thread
/// hop per request on top of the device poller's and the send loop's. Inline, the receive loop
/// continues on the epoll thread itself (it only parses a request and starts its image I/O, never
/// blocks), which measured 1.2-1.4x the 4 KiB random read and about 1.1x the write rate through
/// NBD on the 2-vCPU development VM (perf/README.md, "nbd"). Kestrel's transport dispatches its
/// own continuations to its queues either way.
/// </summary>
public static class SocketCompletions
{
    public const string Variable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    /// <summary>
    /// Turns inline socket completions on for this process unless the environment already says
    /// (an operator's <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=0</c> wins). The runtime reads
    /// the variable once, at the first socket operation: call this first thing in Main.
    /// </summary>
    public static void PreferInline()
    {
        if (Environment.GetEnvironmentVariable(Variable) == null)
            Environment.SetEnvironmentVariable(Variable, "1");
    }
}
