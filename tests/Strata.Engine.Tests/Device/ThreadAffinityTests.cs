using Strata.Engine.Device;

namespace Strata.Engine.Tests.Device;

/// <summary>
/// The process's CPUs as seen from a placed polling thread: code continued inline on a poller kept off
/// CPU 1 read CPU 0 as all the process had and refused PollerCpus = [1] (CI of 460cb21).
/// </summary>
[TestClass]
public sealed class ThreadAffinityTests
{
    private static int[] ProcessCpus()
    {
        var cpus = ThreadAffinity.Allowed();
        if (cpus.Length < 2)
            Assert.Inconclusive($"the process may run on one CPU only ({string.Join(",", cpus)})");
        return cpus;
    }

    /// <summary>Runs <paramref name="body"/> on a new thread restricted to one CPU, as a placed poller is.</summary>
    private static void OnRestrictedThread(int cpu, Action body)
    {
        Exception? failure = null;
        var t = new Thread(() =>
        {
            try
            {
                Assert.AreEqual(0, ThreadAffinity.SetCurrentThread([cpu]));
                body();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        t.Start();
        t.Join();
        if (failure != null)
            throw new AssertFailedException($"on the restricted thread: {failure.Message}", failure);
    }

    [TestMethod]
    public void Allowed_OnARestrictedThread_IsTheProcesssCpus()
    {
        var process = ProcessCpus();
        OnRestrictedThread(process[^1], () =>
        {
            CollectionAssert.AreEqual(new[] { process[^1] }, ThreadAffinity.CurrentThread());
            CollectionAssert.AreEqual(process, ThreadAffinity.Allowed());
            Assert.IsNull(ThreadAffinity.Unavailable([process[0]]), "a CPU of the process is available to pollers whichever thread asks");
        });
    }

    /// <summary>
    /// The runtime starts a managed thread with the process's mask, not its creator's (pthreads
    /// inherit it): a thread started from a placed poller is not confined to the poller's CPU.
    /// </summary>
    [TestMethod]
    public void ThreadStartedFromARestrictedThread_RunsOnTheProcesssCpus()
    {
        var process = ProcessCpus();
        int[]? child = null;
        OnRestrictedThread(process[^1], () =>
        {
            var t = new Thread(() => child = ThreadAffinity.CurrentThread());
            t.Start();
            t.Join();
        });
        CollectionAssert.AreEqual(process, child);
    }
}
