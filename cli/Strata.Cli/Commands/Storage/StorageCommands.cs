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
        return Cli.Group("storage", "The engine's targets", query, add);
    }
}
