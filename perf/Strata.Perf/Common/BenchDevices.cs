using Strata.Engine.Device;

namespace Strata.Perf.Common;

/// <summary>
/// A benchmark's target devices, polled as the engine polls its file targets: every queue pair on a
/// shared <see cref="PollerGroup"/> of <c>pollerThreads</c> threads (0: a thread of its own per queue pair).
/// </summary>
internal sealed class BenchDevices : IDisposable
{
    public PollerGroup? Group { get; }
    public NativeBlockDevice[] Devices { get; }

    /// <param name="uris">One device URI per target.</param>
    /// <param name="pollers">Queue pairs per device.</param>
    /// <param name="busyPollMicros">The polling threads' busy-poll window, or null for DeviceOptions' default.</param>
    /// <param name="completionBatch">Completions reaped per poll, or null for DeviceOptions' default.</param>
    /// <param name="placement">Where the polling threads run relative to the disk's interrupt CPUs (--irq-cpus).</param>
    public BenchDevices(IEnumerable<string> uris, int pollers, int pollerThreads, int? busyPollMicros, int? completionBatch = null,
        InterruptPlacement? placement = null)
    {
        var thread = busyPollMicros is int us ? new DeviceOptions { BusyPollMicros = us } : new DeviceOptions();
        if (placement is { } p)
            thread = thread with { InterruptPlacement = p };
        if (completionBatch is int batch)
            thread = thread with { CompletionBatch = batch };
        Group = pollerThreads > 0 ? new PollerGroup(pollerThreads, thread, "bench-poll") : null;
        var opened = new List<NativeBlockDevice>();
        try
        {
            foreach (var uri in uris)
                opened.Add(NativeBlockDevice.Open(uri, thread with { Pollers = pollers, Group = Group }));
        }
        catch
        {
            foreach (var d in opened)
                d.Dispose();
            Group?.Dispose();
            throw;
        }
        Devices = [.. opened];
    }

    public void Dispose()
    {
        foreach (var d in Devices)
            d.Dispose();
        Group?.Dispose();
    }
}
