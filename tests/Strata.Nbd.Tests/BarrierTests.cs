using System.Text.Json;
using Strata.Cli.Tests;
using Strata.Engine.Control;
using static Strata.Nbd.Tests.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// `strata system barrier freeze | thaw | stat` through the real daemon with a raw NBD client:
/// requests are held (not failed) and answered after the thaw or the expiry, metadata changes are
/// refused naming the barrier, and the bad cases (double freeze, thaw without freeze, a client
/// that leaves while its requests are held, a stop while frozen) end cleanly.
/// </summary>
[TestClass]
public sealed class BarrierTests
{
    private static byte[] Pattern(byte b, int n) => Enumerable.Repeat(b, n).ToArray();

    private static async Task<BarrierStatusDto> StatAsync(NbdDaemon d) =>
        await d.Cli.JsonAsync<BarrierStatusDto>("system", "barrier", "stat");

    /// <summary>Waits (bounded; no timing is asserted) until the barrier holds <paramref name="held"/> requests.</summary>
    private static async Task<BarrierStatusDto> WaitHeldAsync(NbdDaemon d, int held)
    {
        var s = await StatAsync(d);
        for (int i = 0; i < 300 && s.HeldRequests != held; i++)
        {
            await Task.Delay(100);
            s = await StatAsync(d);
        }
        Assert.AreEqual(held, s.HeldRequests, JsonSerializer.Serialize(s));
        return s;
    }

    [TestMethod]
    public async Task Barrier_Freeze_HoldsNbdRequestsAndRefusesMetadata_ThawAnswersThem()
    {
        await using var d = await NbdDaemon.StartAsync("barrier-hold");
        await d.CreateImageAsync("img", "4M");
        using var nbd = await d.OpenUnixAsync("img");
        var first = Pattern(0x11, 65536);
        Assert.AreEqual(0u, (await nbd.RoundTripAsync(CmdWrite, 0, 65536, first)).Error);

        StringAssert.StartsWith(await d.Cli.OkAsync("system", "barrier", "freeze", "--timeout", "5m"), "Barrier frozen: every pool (1); NBD requests are held");
        var second = Pattern(0x22, 65536);
        ulong write = await nbd.SendRequestAsync(CmdWrite, 65536, 65536, second);
        ulong read = await nbd.SendRequestAsync(CmdRead, 0, 65536);
        var frozen = await WaitHeldAsync(d, 2);
        Assert.AreEqual(("frozen", (string?)null, 1), (frozen.State, frozen.Pool, frozen.Clients));
        CollectionAssert.AreEqual(new[] { "p" }, frozen.Pools.ToArray());
        Assert.IsTrue(frozen.SecondsLeft is > 200 and <= 300, $"{frozen.SecondsLeft} s left of 5m");
        var replies = Task.Run(async () => new[] { await nbd.ReadReplyAsync(), await nbd.ReadReplyAsync() });

        string refused = await d.Cli.FailsAsync(6, "cont", "create", "p", "c2");
        StringAssert.StartsWith(refused, "strata: pool 'p' is frozen by a barrier (since ");
        StringAssert.Contains(refused, "Z, expires at ");
        StringAssert.Contains(await d.Cli.FailsAsync(6, "image", "resize", "p/c/img", "--size", "8M"), "frozen by a barrier");
        StringAssert.Contains(await d.Cli.FailsAsync(6, "pool", "create", "p2", "--size", "64M"), "a new pool cannot be created: a barrier is frozen (every pool");
        StringAssert.Contains(await d.Cli.FailsAsync(6, "system", "barrier", "freeze"), "a barrier is already frozen (every pool, frozen since ");
        Assert.AreEqual("frozen", (await d.Cli.JsonAsync<SystemInfo>("system", "query")).State);
        Assert.IsFalse(replies.IsCompleted, "a held request is not answered while frozen");
        Assert.AreEqual(2, (await StatAsync(d)).HeldRequests, "nothing was answered or failed meanwhile");

        Assert.AreEqual("Barrier thawed", (await d.Cli.OkAsync("system", "barrier", "thaw")).Trim());
        var answered = await replies.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.IsTrue(answered.All(r => r.Error == 0), "held requests succeed after the thaw");
        CollectionAssert.AreEquivalent(new[] { write, read }, answered.Select(r => r.Cookie).ToArray());
        CollectionAssert.AreEqual(first, answered.Single(r => r.Cookie == read).Data);
        var back = await nbd.RoundTripAsync(CmdRead, 65536, 65536);
        CollectionAssert.AreEqual(second, back.Data, "the held write was applied after the thaw");
        var thawed = await StatAsync(d);
        Assert.AreEqual(("thawed", 0), (thawed.State, thawed.HeldRequests));
        await d.Cli.OkAsync("cont", "create", "p", "c2");
        Assert.AreEqual("running", (await d.Cli.JsonAsync<SystemInfo>("system", "query")).State);

        var events = (await d.Cli.OkAsync("system", "events", "--json")).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).Select(e => e.Id).ToList();
        Assert.IsLessThan(events.IndexOf("barrier_thawed"), events.IndexOf("barrier_frozen"));
    }

    [TestMethod]
    public async Task Barrier_NotThawed_ExpiresWithRasEvent_HeldRequestAnswered()
    {
        await using var d = await NbdDaemon.StartAsync("barrier-expire");
        await d.CreateImageAsync("img", "4M");
        using var nbd = await d.OpenUnixAsync("img");
        await d.Cli.OkAsync("system", "barrier", "freeze", "--timeout", "2s", "--pool", "p");
        Assert.AreEqual("p", (await StatAsync(d)).Pool);
        // Held until the barrier expires by itself: the reply is the proof it expired and thawed.
        var reply = await nbd.RoundTripAsync(CmdRead, 0, 4096);
        Assert.AreEqual(0u, reply.Error);
        var s = await StatAsync(d);
        Assert.AreEqual(("expired", "its timeout passed without a thaw", 0), (s.State, s.Reason, s.HeldRequests));
        var expired = (await d.Cli.OkAsync("system", "events", "--json")).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).Single(e => e.Id == "barrier_expired");
        Assert.AreEqual("WARNING", expired.Severity);
        StringAssert.Contains(expired.Msg, "barrier expired (pool 'p', frozen since ");
        Assert.AreEqual("strata: no barrier is frozen (state expired); nothing to thaw", (await d.Cli.FailsAsync(2, "system", "barrier", "thaw")).Trim());
        await d.Cli.OkAsync("cont", "create", "p", "c2");
    }

    [TestMethod]
    public async Task Barrier_BadInput_RefusedWithOneLine()
    {
        await using var d = await NbdDaemon.StartAsync("barrier-bad");
        Assert.AreEqual("strata: no barrier is frozen (state thawed); nothing to thaw", (await d.Cli.FailsAsync(2, "system", "barrier", "thaw")).Trim());
        StringAssert.StartsWith(await d.Cli.FailsAsync(2, "system", "barrier", "freeze", "--timeout", "0"), "strata: --timeout '0' is not a positive duration");
        StringAssert.StartsWith(await d.Cli.FailsAsync(2, "system", "barrier", "freeze", "--timeout", "soon"), "strata: --timeout 'soon' is not a positive duration");
        Assert.AreEqual("strata: barrier timeout 7200 s is out of range: more than 0 and at most 3600 s",
            (await d.Cli.FailsAsync(2, "system", "barrier", "freeze", "--timeout", "2h")).Trim());
        StringAssert.Contains(await d.Cli.FailsAsync(5, "system", "barrier", "freeze", "--pool", "nosuch"), "nosuch");
        Assert.AreEqual("thawed", (await StatAsync(d)).State, "a refused freeze changes nothing");
        await d.Cli.OkAsync("cont", "create", "p", "c2");
    }

    [TestMethod]
    public async Task Barrier_ClientLeavesWhileHeld_ThenStopWhileFrozen_EndsCleanly()
    {
        await using var d = await NbdDaemon.StartAsync("barrier-leave");
        await d.CreateImageAsync("img", "4M");
        await d.Cli.OkAsync("system", "barrier", "freeze", "--timeout", "5m");
        using (var leaving = await d.OpenUnixAsync("img"))
        {
            await leaving.SendRequestAsync(CmdWrite, 0, 4096, Pattern(0x33, 4096));
            await WaitHeldAsync(d, 1);
        }
        await d.Cli.OkAsync("system", "barrier", "thaw");
        await d.WaitClientsAsync(0);
        using var staying = await d.OpenUnixAsync("img");
        Assert.AreEqual(0u, (await staying.RoundTripAsync(CmdWrite, 8192, 4096, Pattern(0x44, 4096))).Error, "the engine serves on");

        // A stop while frozen thaws first: the held request is answered and the engine exits cleanly.
        await d.Cli.OkAsync("system", "barrier", "freeze", "--timeout", "5m");
        ulong held = await staying.SendRequestAsync(CmdRead, 8192, 4096);
        await WaitHeldAsync(d, 1);
        StringAssert.Contains(await d.Cli.OkAsync("system", "stop"), "stopped");
        var r = await staying.ReadReplyAsync();
        Assert.AreEqual((held, 0u), (r.Cookie, r.Error));
        CollectionAssert.AreEqual(Pattern(0x44, 4096), r.Data);
        Assert.AreEqual(0, await d.Engine.WaitForExitAsync(TimeSpan.FromSeconds(30)));
    }
}
