using System.Globalization;
using System.Text.RegularExpressions;
using Strata.Cli.Tests;

namespace Strata.Nbd.Tests;

/// <summary>
/// Deferred writes (layout 6, docs/format.md "Deferred writes") through a real client: qemu-io's FUA writes
/// of 4-32 KiB into the durable 128 KiB chunks of an image are logged and written over the chunks' own
/// extents (the engine's strata_pool_chunk_writes_total{kind="deferred"} counts them), larger ones are not, a
/// small writeback write is on these O_DIRECT targets unless it continues a deferred one, and after the
/// engine is killed the next open replays the deferred records: every acknowledged byte reads back through NBD
/// with no checksum error.
/// </summary>
[TestClass]
public sealed partial class NbdDeferredWriteTests
{
    private const int K = 1024;
    private const long ImageBytes = 4 << 20;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task QemuIoFuaWritesIntoDurableChunks_AreDeferred_AndReadBackAfterAKill()
    {
        Tools.Require("qemu-io");
        string dir = Bin.NewTempDir("nbddefer");
        string data = Path.Combine(dir, "data");
        string cfg = Path.Combine(dir, "strata.yaml");
        File.WriteAllText(cfg, $"""
            targets:
              - file:{data}/t0.img?create=1&size=512M
            nbd:
              - unix:run/nbd.sock
            """);
        string uri = $"nbd+unix:///p/c/v?socket={Path.Combine(data, "run", "nbd.sock")}";
        var engine = await EngineProcess.StartAsync(data, "--config", cfg);
        try
        {
            var cli = new StrataCli(engine.Socket);
            await cli.OkAsync("pool", "create", "p", "--size", "256M");
            var props = (await cli.JsonAsync<List<Strata.Engine.Control.PropertyDto>>("pool", "get-prop", "p")).ToDictionary(p => p.Name, p => p.Value);
            Assert.AreEqual("6", props["layout_version"], "a new pool is at the newest layout, which has deferred writes");
            await cli.OkAsync("cont", "create", "p", "c");
            await cli.OkAsync("image", "create", "p", "c", "v", "--size", "4M", "--chunk-size", "128K");

            // Every chunk written and flushed: their mappings are durable, so small FUA writes into them defer.
            await QemuIoAsync(uri, $"write -P 0x11 0 {ImageBytes}", "flush");
            Assert.AreEqual(0, await DeferredAsync(engine), "nothing deferred yet");

            // FUA writes: inside a chunk, at a chunk's last block, a quarter chunk. One across two chunks is
            // committed as one group of chunks (ChunkRuns), which copies both: not deferred (docs/format.md).
            (long At, int Length, int Pattern, int Deferred)[] writes =
            [
                (4 * K, 4 * K, 0x22, 1),
                (128 * K + 8 * K, 8 * K, 0x33, 1),
                ((1 << 20) - 4 * K, 4 * K, 0x44, 1),
                ((2 << 20) + 16 * K, 32 * K, 0x55, 1),
                ((3 << 20) - 8 * K, 16 * K, 0x66, 0),
            ];
            await QemuIoAsync(uri, [.. writes.Select(w => $"write -f -P 0x{w.Pattern:x2} {w.At} {w.Length}")]);
            int deferred = writes.Sum(w => w.Deferred);
            Assert.AreEqual(deferred, await DeferredAsync(engine), "each small FUA write into a durable chunk was deferred");
            // A half-chunk FUA write copies its chunk.
            await QemuIoAsync(uri, $"write -f -P 0x88 {(3 << 20) + 128 * K} {64 * K}");
            Assert.AreEqual(deferred, await DeferredAsync(engine), "a half-chunk write copies its chunk");

            // Writeback writes on these O_DIRECT targets: deferred into a durable chunk, but the next one, which starts
            // where it ended, copies the chunk (ChunkMap.DeferredEnd: a run of small writes into one chunk goes in
            // place after one copy rather than wait a round each).
            await QemuIoAsync(uri, $"write -P 0xaa {28 * 128 * K + 8 * K} {4 * K}", $"write -P 0xbb {28 * 128 * K + 12 * K} {4 * K}", "flush");
            Assert.AreEqual(deferred + 1, await DeferredAsync(engine), "the first small writeback write into a durable chunk on O_DIRECT targets is deferred, the next copies");

            // Killed with the deferred records in the log's tail: the next open replays and rewrites them.
            Bin.Signal(engine.Pid, 9);
            await engine.WaitForExitAsync(TimeSpan.FromSeconds(30));
            await engine.DisposeAsync();
            engine = await EngineProcess.StartAsync(data, "--config", cfg);
            cli = new StrataCli(engine.Socket);
            // One extent per FUA deferred write (rf 1); the writeback one's chunk was copied (and flushed) after it,
            // so replay dropped its rewrite (its extent may hold another chunk now).
            StringAssert.Contains(engine.Log, $"records, {deferred} extents of deferred writes rewritten)");

            var expect = new byte[ImageBytes];
            Array.Fill(expect, (byte)0x11);
            foreach (var w in writes)
                expect.AsSpan((int)w.At, w.Length).Fill((byte)w.Pattern);
            // FUA or not, an acknowledged write survives the kill (the writeback one's data and mapping were
            // written before its answer; the kill loses no page the kernel holds).
            expect.AsSpan((3 << 20) + 128 * K, 64 * K).Fill(0x88);
            expect.AsSpan(28 * 128 * K + 8 * K, 4 * K).Fill(0xaa);
            expect.AsSpan(28 * 128 * K + 12 * K, 4 * K).Fill(0xbb);
            string output = await QemuIoAsync(uri, [.. Runs(expect).Select(r => $"read -P 0x{r.Pattern:x2} {r.At} {r.Length}")]);
            Assert.DoesNotContain("verification failed", output);
            StringAssert.Contains(await cli.OkAsync("image", "info", "p", "c", "v"), "v");
            Assert.DoesNotContain("data_checksum_mismatch", await cli.OkAsync("system", "events"));
        }
        finally
        {
            await engine.DisposeAsync();
        }
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>The image as runs of one byte value, for qemu-io's pattern reads.</summary>
    private static IEnumerable<(long At, long Length, byte Pattern)> Runs(byte[] image)
    {
        long start = 0;
        for (long i = 1; i <= image.LongLength; i++)
        {
            if (i == image.LongLength || image[i] != image[start])
            {
                yield return (start, i - start, image[start]);
                start = i;
            }
        }
    }

    private static async Task<string> QemuIoAsync(string uri, params string[] commands)
    {
        // -t writeback: qemu-io's default (writethrough) sends every write with FUA; here only `write -f` does.
        var r = await Tools.RunAsync("qemu-io", ["-f", "raw", "-t", "writeback", .. commands.SelectMany(c => new[] { "-c", c }), uri]);
        Assert.AreEqual(0, r.ExitCode, r.ToString());
        Assert.AreEqual(commands.Count(c => !c.StartsWith("flush", StringComparison.Ordinal)),
            DoneLine().Matches(r.Stdout).Count, $"every command done: {r}");
        return r.Stdout + r.Stderr;
    }

    /// <summary>strata_pool_chunk_writes_total{pool="p",kind="deferred"} from the engine's /metrics.</summary>
    private static async Task<long> DeferredAsync(EngineProcess engine)
    {
        using var http = engine.Http();
        string text = await http.GetStringAsync("metrics");
        const string series = "strata_pool_chunk_writes_total{pool=\"p\",kind=\"deferred\"} ";
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(series, StringComparison.Ordinal))
                return (long)double.Parse(line[series.Length..], CultureInfo.InvariantCulture);
        throw new AssertFailedException($"/metrics has no {series.Trim()}:\n{text}");
    }

    [GeneratedRegex(@"^(read|wrote) \d+/\d+ bytes", RegexOptions.Multiline)]
    private static partial Regex DoneLine();
}
