using System.CommandLine;
using System.Globalization;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Pool;

/// <summary>
/// `strata pool extend POOL [--dry-run] [--wait]` (DAOS `dmg pool extend`): grows the pool onto the
/// targets added with `storage add-target`; the chunks placement now puts there move as a job.
/// </summary>
public static class PoolExtendCommand
{
    public static Command Create()
    {
        var label = new Argument<string>("pool") { Description = "Pool label" };
        var dryRun = new Option<bool>("--dry-run") { Description = "Say how much data will move, change nothing" };
        var wait = new Option<bool>("--wait") { Description = "Show progress until the job ends" };
        var cmd = new Command("extend", "Grow a pool onto the engine's targets it is not on yet; the data placement moves there runs as a job (throttled by migrate_rate)");
        cmd.Arguments.Add(label);
        cmd.Options.Add(dryRun);
        cmd.Options.Add(wait);
        cmd.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string pool = parse.GetValue(label)!;
            if (parse.GetValue(dryRun) && parse.GetValue(wait))
                throw new CliException(ExitCodes.Usage, "--dry-run and --wait cannot be combined");
            var plan = await client.PostAsync<ExtendPlanDto>($"pools/{Cli.Esc(pool)}/extend", new ExtendRequest(parse.GetValue(dryRun)));
            if (json && !parse.GetValue(wait))
            {
                Cli.PrintJson(plan);
                return 0;
            }
            if (!json)
                Console.Out.WriteLine($"{(plan.DryRun ? "Dry run: " : "")}pool {plan.Pool} {(plan.DryRun ? "would grow" : "grows")} from {plan.FromTargets} to {plan.ToTargets} targets; " +
                    $"{plan.MovingReplicas} of {plan.Replicas} chunk replicas ({plan.MovingFraction.ToString("P1", CultureInfo.InvariantCulture)}, {Sizes.Format(plan.MovingBytes)}) move with placement v{plan.Placement}" +
                    (plan.DryRun ? "; nothing was changed" : "; see 'strata pool query " + pool + "'"));
            if (!parse.GetValue(wait))
                return 0;
            var job = (await Cli.WaitWithProgressAsync(
                () => client.GetAsync<PoolQueryDto>($"pools/{Cli.Esc(pool)}"),
                q => q.Job == null || q.Job.State != "running",
                q => q.Job != null ? DescribeJob(q.Job) : "no job", json, ct)).Job;
            if (json)
                Cli.PrintJson(job);
            return job?.State == "completed" ? 0 : ExitCodes.Failed;
        }));
        return cmd;
    }

    /// <summary>One line for `pool query`: "extend running: 120/600 chunks, 1.2 MiB/3.0 MiB, 2.0 MiB/s".</summary>
    public static string DescribeJob(PoolJobDto j) =>
        $"{j.Kind} {j.State}{(j.Reason != null ? $" ({j.Reason})" : "")}: {j.ItemsDone}/{j.ItemsTotal} chunks, {Sizes.Format(j.BytesDone)}/{Sizes.Format(j.BytesTotal)} moved" +
        (j.State == "running" && j.BytesPerSecond is > 0 ? $", {Sizes.Format((long)j.BytesPerSecond.Value)}/s" : "") +
        (j.State == "running" && j.Current != null ? $" ({j.Current})" : "");
}
