using System.CommandLine;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Pool;

/// <summary>`strata pool create | list | query | clients | get-prop | set-prop | destroy` (dmg's words).</summary>
public static class PoolCommands
{
    private static readonly Option<string> Size = new("--size", "-s") { Description = "Pool size (spread over every target), e.g. 1G", Required = true };
    private static readonly Option<int> Rf = new("--rf") { Description = "Replicas of each chunk: 1 or 2", DefaultValueFactory = _ => 1 };
    private static readonly Option<bool> Force = new("--force") { Description = "Destroy even while NBD clients hold images of the pool open (they are disconnected first)" };
    private static readonly Option<uint?> Layout = new("--layout") { Description = "Layout version of the new pool, 1 or more (default: the newest the engine supports; an older one stays openable by older releases)" };

    private static Argument<string> Label() => new("pool") { Description = "Pool label" };

    public static Command Create()
    {
        var createLabel = Label();
        var create = new Command("create", "Create a pool spanning every target");
        create.Arguments.Add(createLabel);
        create.Options.Add(Size);
        create.Options.Add(Rf);
        create.Options.Add(Layout);
        create.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var req = new PoolCreateRequest(parse.GetValue(createLabel)!, Sizes.Parse(parse.GetValue(Size)!, "--size"), parse.GetValue(Rf), parse.GetValue(Layout));
            var q = await client.PostAsync<PoolQueryDto>("pools", req);
            if (json)
                Cli.PrintJson(q);
            else
                Console.Out.WriteLine($"Pool created: {q.Label} ({q.Id}), {Sizes.Format(q.TotalBytes)} on {q.Targets.Count} target(s), rf {q.Rf}, layout version {q.LayoutVersion}");
            return 0;
        }));

        var list = new Command("list", "List pools: size, used, free, capacity used, rf, state, layout version and the upgrade available");
        list.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var pools = await client.GetAsync<List<PoolListEntry>>("pools");
            if (json)
            {
                Cli.PrintJson(pools);
                return 0;
            }
            if (pools.Count == 0)
            {
                Console.Out.WriteLine("No pools in system");
                return 0;
            }
            // zpool list's columns; CAP is the share of the pool's space in use.
            var t = new Table("NAME", "SIZE", "USED", "FREE", "CAP", "RF", "STATE", "LAYOUT", "UPGRADE");
            foreach (var p in pools)
            {
                long total = p.TotalBytes ?? p.SizeBytes;
                t.Add(p.Label, Sizes.Format(total), p.UsedBytes is { } u ? Sizes.Format(u) : null, p.FreeBytes is { } f ? Sizes.Format(f) : null,
                    p.UsedBytes is { } used && total > 0 ? $"{used * 100 / total}%" : null, p.Rf, p.State, p.LayoutVersion, p.UpgradeNeeded ?? "None");
            }
            t.Write(Console.Out);
            return 0;
        }));

        var queryLabel = Label();
        var query = new Command("query", "Show a pool: state, layout, containers, images and space per target");
        query.Arguments.Add(queryLabel);
        query.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var q = await client.GetAsync<PoolQueryDto>($"pools/{Cli.Esc(parse.GetValue(queryLabel)!)}");
            if (json)
            {
                Cli.PrintJson(q);
                return 0;
            }
            var o = Console.Out;
            o.WriteLine($"Pool {q.Id}, label {q.Label}, rf {q.Rf}");
            o.WriteLine($"Pool state: {q.Status}{(q.ReadOnlyReason != null ? $" ({q.ReadOnlyReason})" : "")}");
            o.WriteLine($"Layout version: {q.LayoutVersion} (engine supports up to {q.SupportedLayoutVersion})");
            if (q.Warning != null)
                o.WriteLine(q.Warning);
            if (q.Upgrade is { JobId: not null } u)
                o.WriteLine($"Upgrade: {PoolUpgradeCommand.Describe(u)}");
            if (q.Running is { Count: > 0 } running)
                o.WriteLine($"Running: {string.Join(", ", running)}");
            if (q.Job is { } j)
                o.WriteLine($"Job: {PoolExtendCommand.DescribeJob(j)}");
            if (q.Redundancy is { } r && (r.ExcludedTargets.Count > 0 || r.Health != "ok"))
                o.WriteLine($"Redundancy: {DescribeRedundancy(r)}");
            if (q.Reintegration is { } i)
                o.WriteLine($"Reintegration: {DescribeReintegration(i)}");
            o.WriteLine($"Containers: {q.Containers}, images: {q.Images}");
            o.WriteLine($"Space: total {Sizes.Format(q.TotalBytes)}, used {Sizes.Format(q.UsedBytes)}, free {Sizes.Format(q.FreeBytes)}");
            var t = new Table("Target", "Device", "Total", "Used", "Free");
            foreach (var x in q.Targets)
                t.Add(x.Target, x.Device, Sizes.Format(x.TotalBytes), Sizes.Format(x.UsedBytes), Sizes.Format(x.FreeBytes));
            t.Write(o);
            return 0;
        }));

        var clientsLabel = Label();
        var clients = new Command("clients", "List the pool's data-path clients (NBD connections) and the images they hold open");
        clients.Arguments.Add(clientsLabel);
        clients.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string label = parse.GetValue(clientsLabel)!;
            var list = await client.GetAsync<List<PoolClientDto>>($"pools/{Cli.Esc(label)}/clients");
            if (json)
            {
                Cli.PrintJson(list);
                return 0;
            }
            if (list.Count == 0)
            {
                Console.Out.WriteLine($"No clients in pool {label}");
                return 0;
            }
            var t = new Table("Id", "Kind", "Image", "Peer", "Since");
            foreach (var c in list)
                t.Add(c.Id, c.Kind, c.Image, c.Peer, c.Since.ToString("yyyy-MM-ddTHH:mm:ss"));
            t.Write(Console.Out);
            return 0;
        }));

        var getLabel = Label();
        var getName = new Argument<string?>("name") { Description = "Property name (all properties when omitted)", Arity = ArgumentArity.ZeroOrOne };
        var getProp = new Command("get-prop", "Show pool properties with their source (default, set, or - for computed ones)");
        getProp.Arguments.Add(getLabel);
        getProp.Arguments.Add(getName);
        getProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string? name = parse.GetValue(getName);
            var props = await client.GetAsync<List<PropertyDto>>($"pools/{Cli.Esc(parse.GetValue(getLabel)!)}/props" + (name != null ? $"?name={Cli.Esc(name)}" : ""));
            return PrintProps(props, json);
        }));

        var setLabel = Label();
        var setName = new Argument<string>("name") { Description = "Property name" };
        var setValue = new Argument<string>("value") { Description = "New value" };
        var setProp = new Command("set-prop", "Set a pool property");
        setProp.Arguments.Add(setLabel);
        setProp.Arguments.Add(setName);
        setProp.Arguments.Add(setValue);
        setProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var props = await client.PutAsync<List<PropertyDto>>($"pools/{Cli.Esc(parse.GetValue(setLabel)!)}/props/{Cli.Esc(parse.GetValue(setName)!)}",
                new SetPropertyRequest(parse.GetValue(setValue)!));
            return PrintProps(props, json);
        }));

        var destroyLabel = Label();
        var destroy = new Command("destroy", "Destroy a pool and everything in it; refused while NBD clients are attached, which it names, unless --force");
        destroy.Arguments.Add(destroyLabel);
        destroy.Options.Add(Force);
        destroy.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string label = parse.GetValue(destroyLabel)!;
            await client.DeleteAsync($"pools/{Cli.Esc(label)}?force={(parse.GetValue(Force) ? "true" : "false")}");
            if (json)
                Cli.PrintJson(new { pool = label, destroyed = true });
            else
                Console.Out.WriteLine($"Pool destroyed: {label}");
            return 0;
        }));

        return Cli.Group("pool", "Pools: storage carved from every target", create, list, query, clients, getProp, setProp, PoolUpgradeCommand.Create(), PoolExtendCommand.Create(), destroy);
    }

    /// <summary>"degraded, excluded target(s) 2: 120 chunk(s) (480 KiB) at one copy; lost 3 chunk(s) (12 KiB) in image(s) a".</summary>
    public static string DescribeRedundancy(PoolRedundancyDto r) =>
        $"{r.Health}, {(r.ExcludedTargets.Count > 0 ? $"excluded target(s) {string.Join(", ", r.ExcludedTargets)}" : "no target excluded")}: {r.ChunksAtOneCopy} chunk(s) ({Sizes.Format(r.BytesAtOneCopy)}) at one copy" +
        (r.LostChunks > 0 ? $"; lost {r.LostChunks} chunk(s) ({Sizes.Format(r.LostBytes)}) in image(s) {string.Join(", ", r.LostImages)}" : "");

    /// <summary>"target 1 checking: 1200 of 5000 replica(s) (4.7 MiB of 19.5 MiB) verified" or "target 1 failed: ...".</summary>
    public static string DescribeReintegration(PoolReintegrationStatusDto i) =>
        $"{(i.Target is int t ? $"target {t}" : "resumed job")} {i.State}" + (i.State == "checking" || i.ReplicasTotal > 0
            ? $": {i.ReplicasChecked} of {i.ReplicasTotal} replica(s) ({Sizes.Format(i.BytesChecked)} of {Sizes.Format(i.BytesTotal)}) checked" : "") +
        (i.Reason != null ? $" ({i.Reason})" : "");

    public static int PrintProps(List<PropertyDto> props, bool json)
    {
        if (json)
        {
            Cli.PrintJson(props);
            return 0;
        }
        if (props.All(p => p.Source == null))
        {
            var nv = new Table("NAME", "VALUE");
            foreach (var p in props)
                nv.Add(p.Name, p.Value);
            nv.Write(Console.Out);
            return 0;
        }
        var t = new Table("NAME", "VALUE", "SOURCE");
        foreach (var p in props)
            t.Add(p.Name, p.Value, p.Source);
        t.Write(Console.Out);
        return 0;
    }
}
