using System.CommandLine;
using Strata.Cli.Commands.Pool;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Cont;

/// <summary>`strata cont create | list | get-prop | set-prop | destroy`.</summary>
public static class ContCommands
{
    private static Argument<string> PoolArg() => new("pool") { Description = "Pool label" };

    private static Argument<string> ContArg() => new("cont") { Description = "Container label" };

    public static Command Create()
    {
        var (cp, cc) = (PoolArg(), ContArg());
        var create = new Command("create", "Create a container in a pool");
        create.Arguments.Add(cp);
        create.Arguments.Add(cc);
        create.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var c = await client.PostAsync<ContainerDto>($"pools/{Cli.Esc(parse.GetValue(cp)!)}/containers", new ContainerCreateRequest(parse.GetValue(cc)!));
            if (json)
                Cli.PrintJson(c);
            else
                Console.Out.WriteLine($"Container created: {c.Label} (id {c.Id}) in pool {parse.GetValue(cp)}");
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

        var (gp, gc) = (PoolArg(), ContArg());
        var gn = new Argument<string?>("name") { Description = "Property name (all when omitted)", Arity = ArgumentArity.ZeroOrOne };
        var getProp = new Command("get-prop", "Show container properties");
        getProp.Arguments.Add(gp);
        getProp.Arguments.Add(gc);
        getProp.Arguments.Add(gn);
        getProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string? name = parse.GetValue(gn);
            var props = await client.GetAsync<List<PropertyDto>>(
                $"pools/{Cli.Esc(parse.GetValue(gp)!)}/containers/{Cli.Esc(parse.GetValue(gc)!)}/props" + (name != null ? $"?name={Cli.Esc(name)}" : ""));
            return PoolCommands.PrintProps(props, json);
        }));

        var (sp, sc) = (PoolArg(), ContArg());
        var sn = new Argument<string>("name") { Description = "Property name" };
        var sv = new Argument<string>("value") { Description = "New value" };
        var setProp = new Command("set-prop", "Set a container property");
        setProp.Arguments.Add(sp);
        setProp.Arguments.Add(sc);
        setProp.Arguments.Add(sn);
        setProp.Arguments.Add(sv);
        setProp.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            var props = await client.PutAsync<List<PropertyDto>>(
                $"pools/{Cli.Esc(parse.GetValue(sp)!)}/containers/{Cli.Esc(parse.GetValue(sc)!)}/props/{Cli.Esc(parse.GetValue(sn)!)}",
                new SetPropertyRequest(parse.GetValue(sv)!));
            return PoolCommands.PrintProps(props, json);
        }));

        var (dp, dc) = (PoolArg(), ContArg());
        var destroy = new Command("destroy", "Destroy a container");
        destroy.Arguments.Add(dp);
        destroy.Arguments.Add(dc);
        destroy.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            await client.DeleteAsync($"pools/{Cli.Esc(parse.GetValue(dp)!)}/containers/{Cli.Esc(parse.GetValue(dc)!)}");
            if (json)
                Cli.PrintJson(new { pool = parse.GetValue(dp), container = parse.GetValue(dc), destroyed = true });
            else
                Console.Out.WriteLine($"Container destroyed: {parse.GetValue(dc)}");
            return 0;
        }));

        return Cli.Group("cont", "Containers: groups of images inside a pool", create, list, getProp, setProp, destroy);
    }
}
