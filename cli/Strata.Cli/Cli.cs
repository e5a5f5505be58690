using System.CommandLine;
using System.Text.Json;
using Strata.Cli.Api;

namespace Strata.Cli;

/// <summary>Global options, finding the engine's socket, and the one place errors become exit codes.</summary>
public static class Cli
{
    public static readonly Option<string?> Socket = new("--socket")
    {
        Description = "Path of the engine's control socket (else $STRATA_SOCKET, else --data-dir, else $STRATA_DATA_DIR, else ./strata-data or /run/strata)",
        Recursive = true,
    };

    public static readonly Option<string?> DataDir = new("--data-dir")
    {
        Description = "Data directory of an engine started on the embedded default (else $STRATA_DATA_DIR); its socket is DATA_DIR/run/strata.sock",
        Recursive = true,
    };

    public static readonly Option<bool> Json = new("--json", "-j")
    {
        Description = "Print JSON for scripts instead of tables",
        Recursive = true,
    };

    public const string SystemSocket = "/run/strata/strata.sock";

    /// <summary>
    /// The engine's control socket, first found of: --socket PATH; $STRATA_SOCKET; --data-dir DIR
    /// (DIR/run/strata.sock); $STRATA_DATA_DIR (likewise, the embedded default's data directory);
    /// ./strata-data/run/strata.sock if it exists; /run/strata/strata.sock (the packaged default).
    /// An explicit option beats the environment, and a socket path beats a data directory. For
    /// $STRATA_DATA_DIR and ./strata-data, DIR/engine/run/strata.sock (where `./build.sh run` starts
    /// its engine) is taken when DIR/run/strata.sock does not exist and it does.
    /// </summary>
    public static string ResolveSocket(ParseResult parse)
    {
        if (parse.GetValue(Socket) is { Length: > 0 } s)
            return Path.GetFullPath(s);
        if (Environment.GetEnvironmentVariable("STRATA_SOCKET") is { Length: > 0 } env)
            return Path.GetFullPath(env);
        if (parse.GetValue(DataDir) is { Length: > 0 } d)
            return Path.Combine(Path.GetFullPath(d), "run", "strata.sock");
        if (Environment.GetEnvironmentVariable("STRATA_DATA_DIR") is { Length: > 0 } envDir)
            return InDataDir(Path.GetFullPath(envDir)) ?? Path.Combine(Path.GetFullPath(envDir), "run", "strata.sock");
        return InDataDir(Path.Combine(Environment.CurrentDirectory, "strata-data")) ?? SystemSocket;
    }

    private static string? InDataDir(string dir) =>
        new[] { Path.Combine(dir, "run", "strata.sock"), Path.Combine(dir, "engine", "run", "strata.sock") }.FirstOrDefault(File.Exists);

    /// <summary>Runs a command's body with a client; expected failures print one line and map to their exit code.</summary>
    public static async Task<int> RunAsync(ParseResult parse, Func<EngineClient, bool, Task<int>> body)
    {
        try
        {
            using var client = new EngineClient(ResolveSocket(parse));
            return await body(client, parse.GetValue(Json));
        }
        catch (CliException e)
        {
            await Console.Error.WriteLineAsync($"strata: {e.Message}");
            return e.ExitCode;
        }
        catch (IOException e) when (e is FileNotFoundException or DirectoryNotFoundException || e.GetType() == typeof(IOException))
        {
            await Console.Error.WriteLineAsync($"strata: {e.Message}");
            return ExitCodes.Failed;
        }
        catch (UnauthorizedAccessException e)
        {
            await Console.Error.WriteLineAsync($"strata: {e.Message}");
            return ExitCodes.PermissionDenied;
        }
    }

    public static void PrintJson<T>(T value) => Console.Out.WriteLine(JsonSerializer.Serialize(value, Strata.Engine.Control.Api.Json));

    public static string Esc(string segment) => Uri.EscapeDataString(segment);

    /// <summary>
    /// Polls a running job every 200 ms until <paramref name="ended"/> says so, showing
    /// <paramref name="line"/> as one line rewritten in place on a terminal, or each changed line
    /// on redirected output (nothing with --json); returns the last status.
    /// </summary>
    public static async Task<T> WaitWithProgressAsync<T>(Func<Task<T>> poll, Func<T, bool> ended, Func<T, string> line, bool json, CancellationToken ct)
    {
        bool tty = !json && !Console.IsOutputRedirected;
        string last = "";
        while (true)
        {
            var s = await poll();
            bool done = ended(s);
            if (!json)
            {
                string text = line(s);
                if (tty)
                    Console.Out.Write($"\r{text}   ");
                else if (text != last)
                    Console.Out.WriteLine(text);
                last = text;
            }
            if (done)
            {
                if (tty)
                    Console.Out.WriteLine();
                return s;
            }
            await Task.Delay(200, ct);
        }
    }

    public static Command Group(string name, string description, params Command[] children)
    {
        var g = new Command(name, description);
        foreach (var c in children)
            g.Subcommands.Add(c);
        return g;
    }
}
