using System.CommandLine;
using Strata.Cli.Commands.Pool;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Cont;

/// <summary>`strata cont create | list | get-prop | set-prop | destroy`.</summary>
public static class ContCommands
{
    private static Argument<string> PoolArg() => new("pool") { Description = "Pool label" };

    public static Command Create()
    {
        var create = new Command("create", "Create a container in a pool");
        var ca = SpecArgs.Add(create, 2);
        create.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = ca.Get(parse);
            var c = await client.PostAsync<ContainerDto>($"pools/{Cli.Esc(spec[0])}/containers", new ContainerCreateRequest(spec[1]));
            if (json)
                Cli.PrintJson(c);
            else
                Console.Out.WriteLine($"Container created: {c.Label} (id {c.Id}) in pool {spec[0]}");
            return 0;
        }));

        var lp = PoolArg();
        var list = new Command("list", "List the containers of a pool");
        list.Arguments.Add(lp);
        list.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var cs = await client.GetAsync<List<ContainerDto>>($"pools/{Cli.Esc(parse.GetValue(lp)!)}/containers");
            if (json)
            {
                Cli.PrintJson(cs);
                return 0;
            }
            if (cs.Count == 0)
            {
                Console.Out.WriteLine($"No containers in pool {parse.GetValue(lp)}");
                return 0;
            }
            var t = new Table("Container", "Id", "Images", "Properties");
            foreach (var c in cs)
                t.Add(c.Label, c.Id, c.Images, string.Join(", ", c.Properties.Select(kv => $"{kv.Key}={kv.Value}")));
            t.Write(Console.Out);
            return 0;
        }));

        var getProp = new Command("get-prop", "Show container properties");
        var ga = SpecArgs.Add(getProp, 2, ("name", "Property name (all when omitted)", false));
        getProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, extras) = ga.Get(parse);
            string? name = extras[0];
            var props = await client.GetAsync<List<PropertyDto>>(
                $"pools/{Cli.Esc(spec[0])}/containers/{Cli.Esc(spec[1])}/props" + (name != null ? $"?name={Cli.Esc(name)}" : ""));
            return PoolCommands.PrintProps(props, json);
        }));

        var setProp = new Command("set-prop", "Set a container property");
        var sa = SpecArgs.Add(setProp, 2, ("name", "Property name", true), ("value", "New value", true));
        setProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, extras) = sa.Get(parse);
            var props = await client.PutAsync<List<PropertyDto>>(
                $"pools/{Cli.Esc(spec[0])}/containers/{Cli.Esc(spec[1])}/props/{Cli.Esc(extras[0]!)}",
                new SetPropertyRequest(extras[1]!));
            return PoolCommands.PrintProps(props, json);
        }));

        var destroy = new Command("destroy", "Destroy a container");
        var da = SpecArgs.Add(destroy, 2);
        destroy.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var (spec, _) = da.Get(parse);
            await client.DeleteAsync($"pools/{Cli.Esc(spec[0])}/containers/{Cli.Esc(spec[1])}");
            if (json)
                Cli.PrintJson(new { pool = spec[0], container = spec[1], destroyed = true });
            else
                Console.Out.WriteLine($"Container destroyed: {spec[1]}");
            return 0;
        }));

        return Cli.Group("cont", "Containers: groups of images inside a pool", create, list, getProp, setProp, destroy);
    }
}
