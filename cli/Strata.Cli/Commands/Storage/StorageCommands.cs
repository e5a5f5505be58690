using System.CommandLine;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Storage;

/// <summary>`strata storage query`: the engine's targets, their sizes and health.</summary>
public static class StorageCommands
{
    public static Command Create()
    {
        var query = new Command("query", "Show the targets: device, capacity, block size, space allocated to pools and free, health (ok, degraded or failed, with the reason)");
        query.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var s = await client.GetAsync<StorageInfo>("storage");
            if (json)
            {
                Cli.PrintJson(s);
                return 0;
            }
            var t = new Table("Target", "Device", "Kind", "Capacity", "Block", "Allocated", "Free", "Health");
            foreach (var x in s.Targets)
                t.Add(x.Index, x.Device, x.Kind, Sizes.Format(x.CapacityBytes), x.BlockSize, Sizes.Format(x.AllocatedBytes), Sizes.Format(x.FreeBytes),
                    x.HealthReason == null ? x.Health : $"{x.Health} ({x.HealthReason})");
            t.Write(Console.Out);
            Console.Out.WriteLine($"Total: {Sizes.Format(s.TotalBytes)}, allocated to pools: {Sizes.Format(s.AllocatedBytes)}");
            return 0;
        }));
        var uri = new Argument<string>("uri") { Description = "Device URI, as in the engine's configuration: file:PATH?create=1&size=4G, nvme-pcie:..., nvme-tcp:..." };
        var add = new Command("add-target", "Format a device and add it to the running engine as its next target (kept across restarts); 'pool extend' grows a pool onto it");
        add.Arguments.Add(uri);
        add.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var t = await client.PostAsync<TargetInfoDto>("storage/targets", new AddTargetRequest(parse.GetValue(uri)!));
            if (json)
                Cli.PrintJson(t);
            else
                Console.Out.WriteLine($"Target {t.Index} added: {t.Device}, {Sizes.Format(t.CapacityBytes)}; grow a pool onto it with 'strata pool extend POOL'");
            return 0;
        }));
        var index = new Argument<int>("target") { Description = "Target index (as 'storage query' shows it)" };
        var force = new Option<bool>("--force") { Description = "Exclude even when chunks would be left without a copy (a target that failed: its copies are gone either way)" };
        var exclude = new Command("exclude-target", "Stop using a target: pools serve every chunk from the other replica and rebuild the missing replicas onto the remaining targets as a job");
        exclude.Arguments.Add(index);
        exclude.Options.Add(force);
        exclude.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            int n = parse.GetValue(index);
            var list = await client.PostAsync<List<PoolExclusionDto>>($"storage/targets/{n}/exclude", new ExcludeTargetRequest(parse.GetValue(force)));
            if (json)
            {
                Cli.PrintJson(list);
                return 0;
            }
            if (list.Count == 0)
                Console.Out.WriteLine($"Target {n} excluded; no open pool had a shard on it");
            foreach (var e in list)
                Console.Out.WriteLine($"Pool {e.Pool}: target {e.Target} excluded; {Commands.Pool.PoolCommands.DescribeRedundancy(e.Redundancy)}; " +
                    (e.RebuildStarted ? "rebuild started" : $"rebuild not started: {e.RebuildRefused}"));
            return 0;
        }));
        var reintegrate = new Command("reintegrate-target", "Bring an excluded target back: keep the replicas on it that still verify, then move chunks back onto it as a job");
        reintegrate.Arguments.Add(index);
        reintegrate.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            int n = parse.GetValue(index);
            var list = await client.PostAsync<List<PoolReintegrationDto>>($"storage/targets/{n}/reintegrate", null);
            if (json)
            {
                Cli.PrintJson(list);
                return 0;
            }
            foreach (var e in list)
                Console.Out.WriteLine($"Pool {e.Pool}: target {e.Target} reintegrated; {e.Valid} of {e.Replicas} replica(s) on it verified and are served again, " +
                    $"{e.Invalid} ({Sizes.Format(e.InvalidBytes)}) did not and are copied anew" + (e.Recovered > 0 ? $", {e.Recovered} lost chunk(s) readable again" : "") +
                    "; reintegration job started ('strata pool query " + e.Pool + "' shows it)");
            return 0;
        }));
        return Cli.Group("storage", "The engine's targets", query, add, exclude, reintegrate);
    }
}
