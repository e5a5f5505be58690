using System.Diagnostics;
using Strata.Cli.Tests;
using Strata.Engine.Control;

namespace Strata.Nbd.Tests;

/// <summary>
/// The CLI's guards with a real NBD client attached: `pool destroy` without --force names the
/// client it would revoke, `system stop` names the clients it disconnects, and a followed
/// `system events` ends with a message and exit 3 when the engine stops. Clients are named by one
/// id everywhere: `pool clients`, the refusals and the engine's log.
/// </summary>
[TestClass]
public sealed class NbdCliGuardTests
{
    [TestMethod]
    public async Task DestroyAndStop_WithClientAttached_NameTheClient_FollowedEventsEndWithExit3()
    {
        await using var d = await NbdDaemon.StartAsync("nbd-guard");
        await d.CreateImageAsync("img", "4M");
        // A first connection comes and goes, so the attached one is not the server's first either.
        using (await d.OpenUnixAsync("img"))
            await d.WaitClientsAsync(1);
        await d.WaitClientsAsync(0);
        using var nbd = await d.OpenUnixAsync("img");
        await d.WaitClientsAsync(1);
        var c = (await d.Cli.JsonAsync<List<PoolClientDto>>("pool", "clients", "p")).Single();
        string who = $"client {c.Id} ({c.Kind}, {c.Peer}) on p/c/img";

        Assert.AreEqual($"strata: pool 'p' has 1 NBD client(s) attached: {who}; 'strata pool destroy p --force' disconnects them and destroys the pool",
            await d.Cli.FailsAsync(6, "pool", "destroy", "p"));
        Assert.AreEqual("img", (await d.Cli.JsonAsync<List<ImageDto>>("image", "list", "p/c")).Single().Label, "a refused destroy loses nothing");
        await d.WaitClientsAsync(1);

        // A follower that has printed the log so far is attached to the stream.
        var psi = Proc.Dotnet(Bin.Cli, ["--socket", d.Engine.Socket, "system", "events", "--follow"]);
        using var follow = Process.Start(psi)!;
        follow.StandardInput.Close();
        var stderr = follow.StandardError.ReadToEndAsync();
        Assert.IsNotNull(await follow.StandardOutput.ReadLineAsync(), "the follower printed nothing");
        var rest = follow.StandardOutput.ReadToEndAsync();

        StringAssert.Contains(await d.Cli.OkAsync("system", "stop"), $"stopping; 1 NBD client(s) will be disconnected: {who}");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await follow.WaitForExitAsync(cts.Token);
        await rest;
        Assert.AreEqual(3, follow.ExitCode, await stderr);
        Assert.AreEqual($"strata: the engine at {d.Engine.Socket} stopped; no more events", (await stderr).Trim());

        await d.Engine.WaitForExitAsync(TimeSpan.FromSeconds(30));
        var opened = System.Text.RegularExpressions.Regex.Matches(d.Engine.Log, @"\[1400\] NBD connection (\d+) from .* opened export p/c/img");
        Assert.HasCount(2, opened, d.Engine.Log);
        Assert.AreEqual(c.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), opened[1].Groups[1].Value, "the log names the client by the id `pool clients` shows");
    }
}
