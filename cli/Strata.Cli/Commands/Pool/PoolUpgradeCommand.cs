using System.CommandLine;
using System.Globalization;
using Strata.Cli.Output;
using Strata.Engine.Control;
using Strata.Cli.Api;

namespace Strata.Cli.Commands.Pool;

/// <summary>
/// `strata pool upgrade POOL [--to N] [--dry-run] [--wait]`, `strata pool upgrade POOL --status` and
/// `strata pool upgrade --list` (zpool upgrade -v). The engine records the job and returns; status is
/// asynchronous (`--status`, `pool get-prop POOL upgrade_status`, `pool query`), or `--wait` follows it
/// with a progress bar, attaching to a job that is running or has just brought the pool where asked.
/// </summary>
public static class PoolUpgradeCommand
{
    public static Command Create()
    {
        var pool = new Argument<string?>("pool") { Description = "Pool label (omit with --list)", Arity = ArgumentArity.ZeroOrOne };
        var to = new Option<uint?>("--to") { Description = "Target layout version (default: the newest the engine supports); versions in between are chained in order" };
        var dryRun = new Option<bool>("--dry-run") { Description = "List the actions, their kinds, the data each would scan or move, and each precondition's result; change nothing" };
        var wait = new Option<bool>("--wait") { Description = "Show progress until the upgrade ends; attaches to a job already running (or just finished) instead of starting one" };
        var status = new Option<bool>("--status") { Description = "Show the pool's upgrade job (running, completed, failed or not started) and return" };
        var list = new Option<bool>("--list", "-v") { Description = "List the layout versions and features, marking those this engine supports" };
        var cmd = new Command("upgrade", "Upgrade a pool's on-disk layout as an asynchronous, resumable job");
        cmd.Arguments.Add(pool);
        cmd.Options.Add(to);
        cmd.Options.Add(dryRun);
        cmd.Options.Add(wait);
        cmd.Options.Add(list);
        cmd.Options.Add(status);
        cmd.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string? label = parse.GetValue(pool);
            if (parse.GetValue(list))
            {
                if (label != null || parse.GetValue(dryRun) || parse.GetValue(wait) || parse.GetValue(to) != null)
                    throw new CliException(ExitCodes.Usage, "--list takes no pool and no other option");
                var cat = await client.GetAsync<LayoutCatalogDto>("layout");
                return PrintCatalog(cat, json);
            }
            if (label == null)
                throw new CliException(ExitCodes.Usage, "pool upgrade needs a pool label (or --list)");
            if (parse.GetValue(dryRun) && parse.GetValue(wait))
                throw new CliException(ExitCodes.Usage, "--dry-run and --wait cannot be combined");
            if (parse.GetValue(status))
            {
                if (parse.GetValue(dryRun) || parse.GetValue(wait) || parse.GetValue(to) != null)
                    throw new CliException(ExitCodes.Usage, "--status takes only the pool");
                var st = await client.GetAsync<UpgradeStatus>($"pools/{Cli.Esc(label)}/upgrade");
                if (json)
                    Cli.PrintJson(st);
                else
                    Console.Out.WriteLine($"Pool {st.Pool} is at layout version {st.LayoutVersion}; " + (st.JobId == null ? "no upgrade has run" : $"upgrade {Describe(st)}"));
                return 0;
            }
            if (parse.GetValue(wait))
            {
                // Attach to the pool's job when one is running, or has just taken the pool where it was asked to go.
                var q = await client.GetAsync<PoolQueryDto>($"pools/{Cli.Esc(label)}");
                var current = q.Upgrade ?? await client.GetAsync<UpgradeStatus>($"pools/{Cli.Esc(label)}/upgrade");
                bool running = current.JobId != null && (current.Running || current.Status == "in progress");
                bool arrived = current.JobId != null && current.Status == "completed" && q.LayoutVersion == (parse.GetValue(to) ?? q.SupportedLayoutVersion);
                if (running || arrived)
                {
                    if (!json)
                        Console.Out.WriteLine($"Attached to upgrade job {current.JobId} of {current.Pool} (to layout version {current.Target})");
                    return Finish(await WaitAsync(client, label, current.JobId!.Value, json, ct), json);
                }
            }
            var plan = await client.PostAsync<UpgradePlan>($"pools/{Cli.Esc(label)}/upgrade", new UpgradeRequest(parse.GetValue(to), parse.GetValue(dryRun)));
            if (plan.DryRun && plan.JobId == null)
                return PrintPlan(plan, json);
            if (!parse.GetValue(wait))
            {
                if (json)
                    Cli.PrintJson(plan);
                else
                    Console.Out.WriteLine($"Upgrading {plan.Pool} from layout version {plan.From} to {plan.To} (job {plan.JobId}, {plan.Actions.Count} action(s)); " +
                                          $"see 'strata pool get-prop {plan.Pool} upgrade_status'");
                return 0;
            }
            if (!json)
                Console.Out.WriteLine($"Upgrading {plan.Pool} from layout version {plan.From} to {plan.To} (job {plan.JobId})");
            return Finish(await WaitAsync(client, label, plan.JobId!.Value, json, ct), json);
        }));
        return cmd;
    }

    private static int Finish(UpgradeStatus final, bool json)
    {
        if (json)
            Cli.PrintJson(final);
        else
            Console.Out.WriteLine($"Upgrade {final.Status}{(final.Reason != null ? $": {final.Reason}" : "")}; pool {final.Pool} is at layout version {final.LayoutVersion}" +
                                  (final.LongestPauseMs is { } ms ? $" (longest pause {ms.ToString("0.##", CultureInfo.InvariantCulture)} ms)" : ""));
        return final.Status == "completed" ? 0 : ExitCodes.Failed;
    }

    private static Task<UpgradeStatus> WaitAsync(EngineClient client, string label, ulong job, bool json, CancellationToken ct) =>
        Cli.WaitWithProgressAsync(
            () => client.GetAsync<UpgradeStatus>($"pools/{Cli.Esc(label)}/upgrade"),
            s => s.JobId != job || s.Status != "in progress" || !s.Running,
            Bar, json, ct);

    /// <summary>"[#########-----------] 2/4 actions, 1200/5000 items, 3.1 MiB/s, ETA 12 s".</summary>
    private static string Bar(UpgradeStatus s)
    {
        double frac = s.BytesTotal > 0 ? (double)s.BytesDone / s.BytesTotal
            : s.ItemsTotal > 0 ? (double)s.ItemsDone / s.ItemsTotal
            : s.ActionsTotal > 0 ? (double)s.ActionsDone / s.ActionsTotal : 1;
        if (s.Status == "completed")
            frac = 1;
        int filled = (int)Math.Round(Math.Clamp(frac, 0, 1) * 30);
        string rate = s.BytesPerSecond is > 0 ? $", {Sizes.Format((long)s.BytesPerSecond.Value)}/s"
            : s.ItemsPerSecond is > 0 ? $", {s.ItemsPerSecond.Value.ToString("0", CultureInfo.InvariantCulture)} items/s" : "";
        string eta = s.EtaSeconds is { } e && s.Status == "in progress" ? $", ETA {TimeSpan.FromSeconds(Math.Ceiling(e))}" : "";
        return $"[{new string('#', filled)}{new string('-', 30 - filled)}] {s.Status}: {s.ActionsDone}/{s.ActionsTotal} actions" +
               (s.ItemsTotal > 0 ? $", {s.ItemsDone}/{s.ItemsTotal} items" : "") +
               (s.BytesTotal > 0 ? $", {Sizes.Format(s.BytesDone)}/{Sizes.Format(s.BytesTotal)}" : "") + rate + eta +
               (s.CurrentAction != null && s.Status == "in progress" ? $" ({s.CurrentAction})" : "");
    }

    /// <summary>One line for `pool query`: while the job runs, also its rate, ETA and current action.</summary>
    public static string Describe(UpgradeStatus s)
    {
        bool running = s.Status == "in progress";
        return $"job {s.JobId} to layout {s.Target}: {s.Status}{(s.Reason != null ? $" ({s.Reason})" : "")}, {s.ActionsDone}/{s.ActionsTotal} actions" +
            (s.ItemsTotal > 0 ? $", {s.ItemsDone}/{s.ItemsTotal} items" : "") + (s.BytesTotal > 0 ? $", {Sizes.Format(s.BytesDone)}/{Sizes.Format(s.BytesTotal)}" : "") +
            (running && s.BytesPerSecond is > 0 ? $", {Sizes.Format((long)s.BytesPerSecond.Value)}/s" : "") +
            (running && s.EtaSeconds is { } e ? $", ETA {TimeSpan.FromSeconds(Math.Ceiling(e))}" : "") +
            (running && s.CurrentAction != null ? $" ({s.CurrentAction})" : "");
    }

    private static int PrintPlan(UpgradePlan plan, bool json)
    {
        if (json)
        {
            Cli.PrintJson(plan);
            return plan.Preconditions.All(p => p.Ok) ? 0 : ExitCodes.Conflict;
        }
        var o = Console.Out;
        o.WriteLine($"Dry run: pool {plan.Pool}, layout version {plan.From} -> {plan.To}; nothing was changed");
        var t = new Table("#", "Version", "Feature", "Class", "Kind", "Access", "Items", "Scan", "Move");
        foreach (var a in plan.Actions)
            t.Add(a.Index + 1, a.Version, a.Feature, a.Class, a.Kind, a.Access, a.Items,
                Sizes.Format(a.BytesToScan), Sizes.Format(a.BytesToMove));
        t.Write(o);
        o.WriteLine("Preconditions:");
        foreach (var p in plan.Preconditions)
            o.WriteLine($"  [{(p.Ok ? "ok" : "FAIL")}] {p.Name}: {p.Detail}");
        return plan.Preconditions.All(p => p.Ok) ? 0 : ExitCodes.Conflict;
    }

    private static int PrintCatalog(LayoutCatalogDto cat, bool json)
    {
        if (json)
        {
            Cli.PrintJson(cat);
            return 0;
        }
        var o = Console.Out;
        o.WriteLine($"This engine supports layout versions {cat.MinSupported}..{cat.MaxSupported}. The catalog:");
        o.WriteLine();
        var t = new Table("Version", "Supported", "Feature", "Class", "Kind", "Description");
        foreach (var v in cat.Versions)
            foreach (var f in v.Features)
                t.Add(v.Version, v.Supported ? "yes" : "no", f.Name, f.Class, f.Kind, f.Description);
        t.Write(o);
        o.WriteLine();
        o.WriteLine("Releases (values of the pool property 'compatibility', besides 'off'): " +
                    string.Join(", ", cat.Releases.Select(r => $"{r.Key} (layouts 1..{r.Value})")));
        return 0;
    }
}
