using System.Diagnostics;

namespace Strata.Cli.Tests;

/// <summary>
/// The completion scripts in the shells they are for: an interactive zsh driven through zpty
/// (TAB pressed, the completed line executed), and bash calling the completion function as
/// readline would. zsh is in build.sh's package list; without it the zsh tests are inconclusive.
/// </summary>
[TestClass]
public sealed class CompletionTests
{
    private static string _dir = "";

    [ClassInitialize]
    public static void Init(TestContext _) => _dir = Bin.NewTempDir("completion");

    [ClassCleanup]
    public static void Cleanup() => Directory.Delete(_dir, recursive: true);

    // Types each line and a TAB into an interactive zsh with compinit, then Enter: `strata` is a
    // function there that prints its arguments, so the output shows what the TAB completed.
    // MODE "source" loads the script with `source`, "fpath" installs it as _strata in $fpath.
    private const string ZptyDriver = """
        zmodload zsh/zpty
        mode=$1 script=$2; shift 2
        if [[ $mode == fpath ]]; then
            mkdir -p $script:h/fp && cp $script $script:h/fp/_strata
            load="fpath=($script:h/fp \$fpath); autoload -U compinit && compinit -u -D"
        else
            load="autoload -U compinit && compinit -u -D; source $script"
        fi
        zpty z zsh -f -i
        zpty -w z "PS1='%% '; $load; strata() { print -r -- \"ARGS:[\$*]\" }; print READY"
        zpty -r z out '*READY*'
        for line in "$@"; do
            zpty -w -n z "$line"$'\t'$'\n'
            zpty -r z out '*ARGS:*'$'\n'
            print -r -- "${${out##*ARGS:}%%$'\r'*}"
        done
        zpty -d z
        """;

    [TestMethod]
    [DataRow("source")]
    [DataRow("fpath")]
    public async Task Completion_ZshTab_CompletesCommandsOptionsAndPaths(string mode)
    {
        string zsh = Which("zsh") ?? throw new AssertInconclusiveException("zsh is not installed (build.sh installs it)");
        string script = await ScriptAsync("zsh");
        var syntax = await Proc.RunAsync(Psi(zsh, "-n", script));
        Assert.AreEqual(0, syntax.ExitCode, syntax.ToString());

        string driver = Path.Combine(_dir, "drive.zsh");
        File.WriteAllText(driver, ZptyDriver);
        Directory.CreateDirectory(Path.Combine(_dir, "images"));
        File.WriteAllText(Path.Combine(_dir, "images", "disk.raw"), "");
        var r = await Proc.RunAsync(Psi(zsh, "-f", driver, mode, script,
            "strata pool cr", "strata image unm", "strata pool create p --si", "strata --socket /x pool li",
            "strata completion z", $"strata image read p/c/i --out {_dir}/images/di"), TimeSpan.FromSeconds(60));
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        CollectionAssert.AreEqual(new[]
        {
            "[pool create]", "[image unmap]", "[pool create p --size]", "[--socket /x pool list]",
            "[completion zsh]", $"[image read p/c/i --out {_dir}/images/disk.raw]",
        }, r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries), r.ToString());
    }

    [TestMethod]
    public async Task Completion_BashFunction_CompletesAfterOptionValues()
    {
        string bash = Which("bash") ?? throw new AssertInconclusiveException("bash is not installed");
        string script = await ScriptAsync("bash");
        string probe = $$"""
            source {{script}}
            complete -p strata
            for line in "strata pool cr" "strata --socket /x image unm" "strata pool create p --r"; do
                read -ra COMP_WORDS <<< "$line"
                COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
                _strata
                echo "${COMPREPLY[*]}"
            done
            """;
        var r = await Proc.RunAsync(Psi(bash, "-c", probe));
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        CollectionAssert.AreEqual(new[] { "complete -o default -F _strata strata", "create", "unmap", "--rf" },
            r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries), r.ToString());
    }

    private static async Task<string> ScriptAsync(string shell)
    {
        var r = await Proc.RunAsync(Proc.Dotnet(Bin.Cli, ["completion", shell]));
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        string path = Path.Combine(_dir, "strata." + shell);
        File.WriteAllText(path, r.Stdout);
        return path;
    }

    private static ProcessStartInfo Psi(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        return psi;
    }

    private static string? Which(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
}
