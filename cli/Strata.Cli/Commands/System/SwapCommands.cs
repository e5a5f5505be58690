using System.CommandLine;
using System.Globalization;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.SystemGroup;

/// <summary>`strata system swap --binary PATH`: replace the engine's process while NBD clients stay connected.</summary>
public static class SwapCommands
{
    private static readonly Option<string> Binary = new("--binary") { Description = "The strata-engine to run instead (an executable, or a .dll run with dotnet)", Required = true };

    private static readonly Option<string> Timeout = new("--timeout")
    {
        Description = "How long the new engine may take to start and take over before the swap is rolled back: seconds, or 30s, 5m (at most 1h)",
        DefaultValueFactory = _ => "60s",
    };

    // Hidden: run the new engine as an older release (tests, rollback drills), and make it fail on purpose (tests).
    private static readonly Option<uint?> MaxLayout = new("--max-layout") { Hidden = true };
    private static readonly Option<string?> Fault = new("--fault") { Hidden = true };

    public static Command Create()
    {
        var swap = new Command("swap", "Replace the engine's process by another strata-engine binary: NBD clients stay connected and see a pause, never an error; a failure rolls back");
        swap.Options.Add(Binary);
        swap.Options.Add(Timeout);
        swap.Options.Add(MaxLayout);
        swap.Options.Add(Fault);
        swap.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            double seconds = BarrierCommands.ParseTimeout(parse.GetValue(Timeout)!);
            var r = await client.PostAsync<SwapResultDto>("system/swap",
                new SystemSwapRequest(parse.GetValue(Binary)!, seconds, parse.GetValue(MaxLayout), parse.GetValue(Fault)));
            if (json)
            {
                Cli.PrintJson(r);
                return 0;
            }
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Swapped: engine {r.NewVersion} (pid {r.NewPid}) took over from pid {r.OldPid}: {r.Listeners} NBD listener(s), {r.Connections} connection(s); "
                + $"paused {r.TotalMs:F0} ms (freeze {r.FreezeMs:F0}, checkpoint {r.CheckpointMs:F0}, hand-off {r.HandoffMs:F0}, open {r.OpenMs:F0})"));
            return 0;
        }));
        return swap;
    }
}
