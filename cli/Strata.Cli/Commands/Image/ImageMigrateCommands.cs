using System.CommandLine;
using Strata.Cli.Api;
using Strata.Cli.Output;
using Strata.Engine.Control;

namespace Strata.Cli.Commands.Image;

/// <summary>
/// `strata image migrate prepare | execute | commit | abort | status | remove-alias` (Ceph's
/// `rbd migration`; docs/migration.md, "Image migration"): images named pool/container/image,
/// clients of the source stay connected throughout.
/// </summary>
public static class ImageMigrateCommands
{
    private static readonly Option<string?> ChunkSize = new("--chunk-size") { Description = "The destination's chunk size, a power of two (default: the source's)" };
    private static readonly Option<int?> Rf = new("--rf") { Description = "The destination's replica count: the rf its pool must have (rf is a pool property; default: the pool's)" };
    private static readonly Option<bool> ImportOnly = new("--import-only") { Description = "Import from outside the engine: the destination alone, and --source-spec" };
    private static readonly Option<string?> SourceSpec = new("--source-spec") { Description = "The outside source as JSON: {\"type\":\"raw\",\"path\":\"/x.img\"} or {\"type\":\"nbd\",\"uri\":\"nbd://host:port/export\"}" };
    private static readonly Option<bool> Wait = new("--wait") { Description = "Show a progress bar until the copy ends (execute, status)" };

    private static Argument<string> ImageArg(string name, string description) => new(name) { Description = description };

    public static Command Create()
    {
        var prepare = new Command("prepare", "Create the destination and redirect the source's I/O to it (clients stay connected); with --import-only, import from outside");
        var images = new Argument<string[]>("images") { Description = "SOURCE DESTINATION (pool/container/image each), or DESTINATION alone with --import-only", Arity = new ArgumentArity(1, 2) };
        prepare.Arguments.Add(images);
        prepare.Options.Add(ChunkSize);
        prepare.Options.Add(Rf);
        prepare.Options.Add(ImportOnly);
        prepare.Options.Add(SourceSpec);
        prepare.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            int chunk = 0;
            if (parse.GetValue(ChunkSize) is { } cs)
            {
                long v = Sizes.Parse(cs, "--chunk-size");
                chunk = v <= int.MaxValue ? (int)v : throw new CliException(ExitCodes.Usage, $"--chunk-size {cs} is too large (chunks are at most 1M)");
            }
            int rf = parse.GetValue(Rf) ?? 0;
            if (parse.GetValue(Rf) is < 1)
                throw new CliException(ExitCodes.Usage, $"--rf {parse.GetValue(Rf)} is not a replica count; give 1 or more");
            var names = parse.GetValue(images)!;
            bool import = parse.GetValue(ImportOnly);
            string? spec = parse.GetValue(SourceSpec);
            MigrationPrepareRequest req;
            if (import)
            {
                if (names.Length != 1 || spec == null)
                    throw new CliException(ExitCodes.Usage, "--import-only takes the destination alone and --source-spec JSON, e.g. --source-spec '{\"type\":\"nbd\",\"uri\":\"nbd://host/disk\"}' tank/vols/disk0");
                req = new MigrationPrepareRequest(null, names[0], chunk, ImportOnly: true, SourceSpec: spec, Rf: rf);
            }
            else
            {
                if (names.Length != 2 || spec != null)
                    throw new CliException(ExitCodes.Usage, "prepare takes SOURCE and DESTINATION (pool/container/image each); --source-spec only with --import-only");
                req = new MigrationPrepareRequest(names[0], names[1], chunk, Rf: rf);
            }
            var s = await client.PostAsync<MigrationStatusDto>("migrations", req);
            return Print(s, json, import
                ? $"Import prepared: {s.Source} -> {s.Destination} (served now); run 'strata image migrate execute {s.Destination}'"
                : $"Migration prepared: {s.Source} -> {s.Destination}; run 'strata image migrate execute {s.Source}'");
        }));

        var status = new Command("status", "Show a migration's state, progress, rate and ETA");
        var sa = ImageArg("image", "Either end of the migration, pool/container/image");
        status.Arguments.Add(sa);
        status.Options.Add(Wait);
        status.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string image = parse.GetValue(sa)!;
            var s = await client.GetAsync<MigrationStatusDto>($"migrations/status?image={Uri.EscapeDataString(image)}");
            if (parse.GetValue(Wait))
                s = await WaitAsync(client, image, json, ct);
            return Print(s, json, Describe(s));
        }));

        return Cli.Group("migrate", "Live image migration: prepare, execute, commit or abort, with clients connected",
            prepare, Verb("execute", "Start the background copy (resumes at its cursor after a crash or stop)", wait: true),
            Verb("commit", "Remove the source once executed; its name stays an alias of the destination"),
            Verb("abort", "Remove the destination; the source keeps every write"),
            status,
            Verb("remove-alias", "Stop a migrated source's old name resolving to the destination (give the destination)"));
    }

    private static Command Verb(string verb, string description, bool wait = false)
    {
        var cmd = new Command(verb, description);
        var a = ImageArg("image", "Either end of the migration, pool/container/image");
        cmd.Arguments.Add(a);
        if (wait)
            cmd.Options.Add(Wait);
        cmd.SetAction((parse, ct) => Cli.RunAsync(parse, async (client, json) =>
        {
            string image = parse.GetValue(a)!;
            if (verb == "remove-alias")
            {
                var r = await client.PostAsync<MigrationAliasDto>("migrations/remove-alias", new MigrationRequest(image));
                if (json)
                    Cli.PrintJson(r);
                else
                    Console.Out.WriteLine($"Alias removed from {image}");
                return 0;
            }
            var s = await client.PostAsync<MigrationStatusDto>($"migrations/{verb}", new MigrationRequest(image));
            if (wait && parse.GetValue(Wait))
                s = await WaitAsync(client, image, json, ct);
            return Print(s, json, verb switch
            {
                "commit" => $"Migration committed: {s.Source} removed; its name resolves to {s.Destination} until 'strata image migrate remove-alias {s.Destination}'",
                "abort" => $"Migration aborted: {s.Destination} removed; {s.Source} has every write",
                _ => Describe(s),
            });
        }));
        return cmd;
    }

    private static int Print(MigrationStatusDto s, bool json, string line)
    {
        if (json)
            Cli.PrintJson(s);
        else
            Console.Out.WriteLine(line);
        return s.State == "error" ? ExitCodes.Failed : 0;
    }

    /// <summary>"a/c/v -> b/d/v: executing (32% complete), 16/49 chunks, 256 KiB copied, 1.2 MiB/s, ETA 0:00:03".</summary>
    public static string Describe(MigrationStatusDto s) =>
        $"{s.Source} -> {s.Destination}: {s.Summary}, {s.ChunksDone}/{s.Chunks} chunks, {Sizes.Format(s.BytesCopied)} copied" +
        (s.RateBytesPerSecond > 0 ? $", {Sizes.Format((long)s.RateBytesPerSecond)}/s" : "") +
        (s.EtaSeconds is { } e ? $", ETA {TimeSpan.FromSeconds(Math.Ceiling(e))}" : "") +
        (s.Error != null ? $" ({s.Error})" : "");

    private static Task<MigrationStatusDto> WaitAsync(EngineClient client, string image, bool json, CancellationToken ct) =>
        Cli.WaitWithProgressAsync(
            () => client.GetAsync<MigrationStatusDto>($"migrations/status?image={Uri.EscapeDataString(image)}"),
            s => s.State != "executing",
            s =>
            {
                int filled = (int)Math.Round(Math.Clamp(s.PercentComplete / 100.0, 0, 1) * 30);
                return $"[{new string('#', filled)}{new string('-', 30 - filled)}] {Describe(s)}";
            },
            json, ct);
}
