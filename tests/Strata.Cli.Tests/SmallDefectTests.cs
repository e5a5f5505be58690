using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.RegularExpressions;
using Strata.Engine.Control;

namespace Strata.Cli.Tests;

/// <summary>
/// Operator-visible rough edges of issue 18 (defect 7): errors of the control API for query strings
/// that do not bind and for huge labels, NBD listeners refused before any target is formatted, and
/// unique log event ids.
/// </summary>
[TestClass]
public sealed class SmallDefectTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Bin.NewTempDir("small");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    private static async Task<ErrorBody> ErrorAsync(HttpResponseMessage r, HttpStatusCode status)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.AreEqual(status, r.StatusCode, body);
        Assert.IsGreaterThan(0, body.Length, "an error answers with a body");
        Assert.DoesNotContain("\n", body.TrimEnd(), "one line");
        return JsonSerializer.Deserialize<ErrorBody>(body, Api.Json)!;
    }

    [TestMethod]
    public async Task ControlApi_QueryStringThatDoesNotBind_AnswersTheOneLineJsonError()
    {
        await using var engine = await EngineProcess.StartAsync(Path.Combine(_dir, "data"));
        using var http = engine.Http();
        var bad = await ErrorAsync(await http.GetAsync("v1/pools/p/containers/c/images/i/data?offset=abc&length=10"), HttpStatusCode.BadRequest);
        Assert.AreEqual(ErrorCodes.Invalid, bad.Code);
        Assert.AreEqual("query parameter 'offset' is 'abc'; expected a whole number", bad.Error);

        var missing = await ErrorAsync(await http.GetAsync("v1/pools/p/containers/c/images/i/data?offset=0"), HttpStatusCode.BadRequest);
        Assert.AreEqual(ErrorCodes.Invalid, missing.Code);
        Assert.AreEqual("query parameter 'length' is required (a whole number)", missing.Error);

        var notBool = await ErrorAsync(await http.DeleteAsync("v1/pools/p?force=maybe"), HttpStatusCode.BadRequest);
        Assert.AreEqual("query parameter 'force' is 'maybe'; expected true or false", notBool.Error);
    }

    [TestMethod]
    public async Task Errors_HugeLabel_QuotedCutToItsFirst64CharactersAndItsLength()
    {
        await using var engine = await EngineProcess.StartAsync(Path.Combine(_dir, "data"));
        using var http = engine.Http();
        string huge = new('a', 900 * 1024);
        var create = await ErrorAsync(await http.PostAsync("v1/pools", JsonContent.Create(new PoolCreateRequest(huge, 64 << 20), options: Api.Json)), HttpStatusCode.BadRequest);
        Assert.AreEqual($"pool label '{new string('a', 64)}...' (921600 characters) is longer than 63 characters", create.Error);

        // Through the CLI (an argument holds at most 128 KiB on Linux): the same one short line.
        var cli = new StrataCli(engine.Socket);
        string big = new('b', 100_000);
        string err = await cli.FailsAsync(2, "pool", "create", big, "--size", "64M");
        Assert.IsLessThan(300, err.Length, err);
        StringAssert.Contains(err, "(100000 characters)");
        string err2 = await cli.FailsAsync(5, "cont", "create", "p" + big[..5000], "c");
        Assert.IsLessThan(300, err2.Length, err2);
        StringAssert.Contains(err2, "(5001 characters)");
    }

    public static IEnumerable<object[]> RefusedListeners =>
    [
        ["tcp:10.1.2.3:10809", "10.1.2.3 is not a loopback address"],
        ["tcp:127.0.0.1:{busy}", "cannot listen for NBD on tcp:127.0.0.1:"],
        ["unix:{file}", "is a regular file, not a socket"],
    ];

    [TestMethod]
    [DynamicData(nameof(RefusedListeners))]
    public async Task EngineStart_FreshDataDirAndARefusedNbdListener_OneLineErrorAndNoTargetCreated(string listener, string expected)
    {
        using var busy = new TcpListener(IPAddress.Loopback, 0);
        busy.Start();
        string file = Path.Combine(_dir, "not-a-socket");
        File.WriteAllText(file, "x");
        listener = listener.Replace("{busy}", ((IPEndPoint)busy.LocalEndpoint).Port.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
            .Replace("{file}", file, StringComparison.Ordinal);
        string data = Path.Combine(_dir, "data");
        string cfg = Path.Combine(_dir, "strata.yaml");
        File.WriteAllText(cfg, $"targets:\n  - file:{data}/t0.img?create=1&size=128M\n  - file:{data}/t1.img?create=1&size=128M\nnbd:\n  - {listener}\n");

        await using var engine = EngineProcess.Launch(data, "--config", cfg);
        Assert.AreEqual(1, await engine.WaitForExitAsync(TimeSpan.FromSeconds(60)), engine.Log);
        var errors = engine.Log.Split('\n').Where(l => l.StartsWith("strata-engine: ", StringComparison.Ordinal)).ToList();
        Assert.HasCount(1, errors, engine.Log);
        StringAssert.Contains(errors[0], expected);
        Assert.DoesNotContain("   at ", engine.Log, "no stack trace");
        Assert.IsFalse(File.Exists(Path.Combine(data, "t0.img")) || File.Exists(Path.Combine(data, "t1.img")), "no target file was created: " + string.Join(", ", Directory.GetFiles(_dir, "*", SearchOption.AllDirectories)));
        Assert.IsFalse(Directory.Exists(Path.Combine(data, "ras")) && Directory.GetFiles(Path.Combine(data, "ras")).Any(f => new FileInfo(f).Length > 0), "no RAS event was raised");
    }

    [TestMethod]
    public void LoggerMessageIds_InEngineSources_AreUniqueAndDocumented()
    {
        var ids = new List<(int Id, string Where)>();
        foreach (var f in Directory.GetFiles(Path.Combine(Bin.RepoRoot, "engine"), "*.cs", SearchOption.AllDirectories))
        {
            string text = File.ReadAllText(f);
            foreach (Match m in Regex.Matches(text, @"\[LoggerMessage\((?:EventId\s*=\s*)?(\d+)"))
                ids.Add((int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), $"{Path.GetFileName(f)}:{text[..m.Index].Count(c => c == '\n') + 1}"));
        }
        Assert.IsGreaterThan(20, ids.Count, "the scan found the engine's log messages");
        var dups = ids.GroupBy(i => i.Id).Where(g => g.Count() > 1).Select(g => $"{g.Key} at {string.Join(" and ", g.Select(x => x.Where))}").ToList();
        Assert.IsEmpty(dups, "log event ids are stable and unique: " + string.Join("; ", dups));
        string ops = File.ReadAllText(Path.Combine(Bin.RepoRoot, "docs", "operations.md"));
        var undocumented = ids.Where(i => !ops.Contains($"| {i.Id} |", StringComparison.Ordinal)).Select(i => $"{i.Id} ({i.Where})").ToList();
        Assert.IsEmpty(undocumented, "docs/operations.md lists every log event id: " + string.Join(", ", undocumented));
    }
}
