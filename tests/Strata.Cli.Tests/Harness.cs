using System.Diagnostics;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace Strata.Cli.Tests;

/// <summary>Where the built binaries are: the test assembly lives in build/bin/Strata.Cli.Tests/CONFIG/net10.0/.</summary>
internal static class Bin
{
    public static readonly string RepoRoot = FindRoot();
    public static readonly string Configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;
    public static string Engine => Path.Combine(RepoRoot, "build", "bin", "Strata.Engine.Host", Configuration, "net10.0", "strata-engine.dll");
    public static string Cli => Path.Combine(RepoRoot, "build", "bin", "Strata.Cli", Configuration, "net10.0", "strata.dll");

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln")))
                return d.FullName;
        throw new InvalidOperationException("Engine.sln not found above " + AppContext.BaseDirectory);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    public static void Signal(int pid, int sig) => kill(pid, sig);

    public static string NewTempDir(string tag)
    {
        var d = Directory.CreateTempSubdirectory($"strata-{tag}-");
        File.SetUnixFileMode(d.FullName, (UnixFileMode)0b111_101_101); // 0755: a test user must reach the socket dir's parent
        return d.FullName;
    }
}

internal sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\nstdout: {Stdout}\nstderr: {Stderr}";
}

/// <summary>Runs a process to completion with a timeout (killed on timeout), capturing its output.</summary>
internal static class Proc
{
    public static ProcessStartInfo Dotnet(string dll, IEnumerable<string> args, string? asUser = null)
    {
        var psi = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        if (asUser != null)
        {
            psi.FileName = "runuser";
            foreach (var a in new[] { "-u", asUser, "--", "dotnet" })
                psi.ArgumentList.Add(a);
        }
        else
        {
            psi.FileName = "dotnet";
        }
        psi.ArgumentList.Add(dll);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove("STRATA_SOCKET");
        psi.Environment.Remove("STRATA_DATA_DIR");
        return psi;
    }

    public static async Task<CliResult> RunAsync(ProcessStartInfo psi, TimeSpan? timeout = null)
    {
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
            return new CliResult(-1, await so, await se + "\n(killed: timeout)");
        }
        return new CliResult(p.ExitCode, await so, await se);
    }
}

/// <summary>A real strata-engine process on a temporary data dir; stopped with SIGTERM (then killed) on dispose.</summary>
internal sealed class EngineProcess : IAsyncDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _log = new();

    private EngineProcess(Process p, string dataDir)
    {
        _p = p;
        DataDir = dataDir;
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_log) _log.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
    }

    public string DataDir { get; }

    public string Socket => Path.Combine(DataDir, "run", "strata.sock");

    public int Pid => _p.Id;

    public bool HasExited => _p.HasExited;

    public string Log
    {
        get
        {
            lock (_log)
                return _log.ToString();
        }
    }

    /// <summary>Starts the engine and waits until its socket answers (or it exits).</summary>
    public static async Task<EngineProcess> StartAsync(string dataDir, params string[] extra)
    {
        var e = Launch(dataDir, extra);
        await e.WaitReadyAsync();
        return e;
    }

    public static EngineProcess Launch(string dataDir, params string[] extra)
    {
        var psi = Proc.Dotnet(Bin.Engine, new[] { "run", "--data-dir", dataDir }.Concat(extra));
        var p = Process.Start(psi)!;
        p.StandardInput.Close();
        return new EngineProcess(p, dataDir);
    }

    public async Task WaitReadyAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            if (_p.HasExited)
                throw new AssertFailedException($"strata-engine exited with {_p.ExitCode} before it was ready:\n{Log}");
            if (File.Exists(Socket) && Log.Contains("[1003]", StringComparison.Ordinal))
                return;
            await Task.Delay(100);
        }
        throw new AssertFailedException($"strata-engine not ready after 60 s:\n{Log}");
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            _p.Kill(entireProcessTree: true);
            await _p.WaitForExitAsync();
            throw new AssertFailedException($"strata-engine did not exit within {timeout.TotalSeconds} s:\n{Log}");
        }
        _p.WaitForExit(); // drain the output readers
        return _p.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_p.HasExited)
        {
            Bin.Signal(_p.Id, 15);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            try
            {
                await _p.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                _p.Kill(entireProcessTree: true);
                await _p.WaitForExitAsync();
            }
        }
        _p.Dispose();
    }

    /// <summary>A raw HTTP client on the engine's socket (for cases the CLI never produces).</summary>
    public HttpClient Http()
    {
        string socket = Socket;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct);
                return new NetworkStream(s, ownsSocket: true);
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri("http://strata/"), Timeout = TimeSpan.FromSeconds(30) };
    }
}

/// <summary>The strata CLI against one engine.</summary>
internal sealed class StrataCli(string socket)
{
    public Task<CliResult> RunAsync(params string[] args) => RunAsync(args, env: null);

    public Task<CliResult> RunAsync(string[] args, Dictionary<string, string>? env, string? asUser = null, TimeSpan? timeout = null)
    {
        var psi = Proc.Dotnet(Bin.Cli, new[] { "--socket", socket }.Concat(args), asUser);
        if (env != null)
            foreach (var (k, v) in env)
                psi.Environment[k] = v;
        return Proc.RunAsync(psi, timeout);
    }

    /// <summary>Runs and asserts exit 0.</summary>
    public async Task<string> OkAsync(params string[] args)
    {
        var r = await RunAsync(args);
        Assert.AreEqual(0, r.ExitCode, $"strata {string.Join(' ', args)}: {r}");
        return r.Stdout;
    }

    public async Task<T> JsonAsync<T>(params string[] args)
    {
        string o = await OkAsync([.. args, "--json"]);
        return System.Text.Json.JsonSerializer.Deserialize<T>(o, Strata.Engine.Control.Api.Json)
            ?? throw new AssertFailedException($"strata {string.Join(' ', args)} --json printed null");
    }

    /// <summary>
    /// Follows the engine's RAS log (`system events --follow --json --since 1d`: its history, then what
    /// comes) until an event <paramref name="match"/> accepts; returns every event read, that one last.
    /// Nothing is missed and nothing is polled; fails after <paramref name="timeout"/>.
    /// </summary>
    public async Task<List<Strata.Engine.Control.RasRecord>> EventsUntilAsync(Func<Strata.Engine.Control.RasRecord, bool> match, TimeSpan timeout)
    {
        var psi = Proc.Dotnet(Bin.Cli, ["--socket", socket, "system", "events", "--follow", "--json", "--since", "1d"]);
        using var follower = Process.Start(psi)!;
        follower.StandardInput.Close();
        var events = new List<Strata.Engine.Control.RasRecord>();
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            while (await follower.StandardOutput.ReadLineAsync(cts.Token) is { } line)
            {
                var e = System.Text.Json.JsonSerializer.Deserialize<Strata.Engine.Control.RasRecord>(line, Strata.Engine.Control.Api.Json)!;
                events.Add(e);
                if (match(e))
                    return events;
            }
            throw new AssertFailedException("the follower ended before the event: " + string.Join("\n", events.Select(x => $"{x.Id} {x.Msg}")));
        }
        catch (OperationCanceledException)
        {
            throw new AssertFailedException($"no such event within {timeout}: " + string.Join("\n", events.Select(x => $"{x.Id} {x.Msg}")));
        }
        finally
        {
            follower.Kill(entireProcessTree: true);
            await follower.WaitForExitAsync();
        }
    }

    /// <summary>Runs and asserts a one-line error with the given exit code (no stack trace).</summary>
    public async Task<string> FailsAsync(int exitCode, params string[] args)
    {
        var r = await RunAsync(args);
        Assert.AreEqual(exitCode, r.ExitCode, $"strata {string.Join(' ', args)}: {r}");
        Assert.DoesNotContain("   at ", r.Stderr, "an expected error must not print a stack trace");
        Assert.StartsWith("strata: ", r.Stderr);
        return r.Stderr.Trim();
    }
}
