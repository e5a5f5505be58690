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
        return Cli.Group("storage", "The engine's targets", query);
    }
}
