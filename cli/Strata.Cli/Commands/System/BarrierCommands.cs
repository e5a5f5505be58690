using System.CommandLine;
using System.Globalization;
using Strata.Cli.Output;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Cli.Commands.SystemGroup;

/// <summary>`strata system barrier freeze | thaw | stat` (Lustre's lctl barrier_freeze / barrier_thaw / barrier_stat).</summary>
public static class BarrierCommands
{
    private static readonly Option<string> Timeout = new("--timeout")
    {
        Description = "Thaw by itself after this long if nobody thaws it: seconds, or 30s, 5m, 1h (at most 1h)",
        DefaultValueFactory = _ => "30s",
    };

    private static readonly Option<string?> OnePool = new("--pool") { Description = "Freeze only this pool (default: every pool)" };

    public static Command Create()
    {
        var freeze = new Command("freeze", "Hold new NBD requests (not failed), let those in flight finish, make everything acknowledged durable, refuse metadata changes");
        freeze.Options.Add(Timeout);
        freeze.Options.Add(OnePool);
        freeze.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            double seconds = ParseTimeout(parse.GetValue(Timeout)!);
            var s = await client.PostAsync<BarrierStatusDto>("system/barrier/freeze", new BarrierFreezeRequest(seconds, parse.GetValue(OnePool)));
            if (json)
            {
                Cli.PrintJson(s);
                return 0;
            }
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Barrier frozen: {Scope(s)}; NBD requests are held and metadata changes refused until 'strata system barrier thaw' or {s.Expires:HH:mm:ss}Z ({Math.Round(s.SecondsLeft ?? 0)} s)"));
            return 0;
        }));

        var thaw = new Command("thaw", "Thaw the barrier: held NBD requests are answered, metadata changes accepted");
        thaw.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var s = await client.PostAsync<BarrierStatusDto>("system/barrier/thaw", null);
            if (json)
                Cli.PrintJson(s);
            else
                Console.Out.WriteLine("Barrier thawed");
            return 0;
        }));

        var stat = new Command("stat", "Show the barrier: state (thawed, freezing, frozen, thawing, expired, failed), pools, time left, clients and requests held");
        stat.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var s = await client.GetAsync<BarrierStatusDto>("system/barrier");
            if (json)
            {
                Cli.PrintJson(s);
                return 0;
            }
            new Table("State", "Pools", "Since", "Expires", "Left", "Clients", "Held", "Reason")
                .Add(s.State, s.Pools.Count == 0 ? null : string.Join(',', s.Pools), s.Since?.ToString("HH:mm:ss'Z'", CultureInfo.InvariantCulture),
                    s.Expires?.ToString("HH:mm:ss'Z'", CultureInfo.InvariantCulture),
                    s.SecondsLeft is { } left ? string.Create(CultureInfo.InvariantCulture, $"{Math.Round(left)} s") : null,
                    s.Clients, s.HeldRequests, s.Reason)
                .Write(Console.Out);
            return 0;
        }));

        return Cli.Group("barrier", "Freeze the data path of every pool (or one) for a software change, and thaw it", freeze, thaw, stat);
    }

    private static string Scope(BarrierStatusDto s) => s.Pool == null ? $"every pool ({s.Pools.Count})" : $"pool '{s.Pool}'";

    /// <summary>30 (seconds), 30s, 5m, 1h.</summary>
    internal static double ParseTimeout(string s)
    {
        string digits = s.Length > 1 && "smh".Contains(s[^1]) ? s[..^1] : s;
        double unit = s.Length == 0 ? 1 : s[^1] switch { 'm' => 60, 'h' => 3600, _ => 1 };
        if (!double.TryParse(digits, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double n) || n <= 0)
            throw new CliException(ExitCodes.Usage, $"--timeout {UserText.Quote(s)} is not a positive duration (30, 30s, 5m, 1h)");
        return n * unit;
    }
}
