using Strata.Engine.Device;
using Strata.Engine.Layout;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// The wal_v2 layout feature: pools that have it write WAL v2 (checksummed batches), the exclusive
/// action switches a pool's log to it, replay reads both formats (docs/format.md, "WAL v2").
/// The tests run this build's catalog: layout-4 pools upgraded to 5.
/// </summary>
[TestClass]
public sealed class WalV2UpgradeTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>This build's catalog, its wal_v2 action (layout 5) run several times per job.</summary>
    private static LayoutCatalog Repeating(Func<int> times)
    {
        var d = LayoutCatalog.Default;
        var f = d.Find(LayoutCatalog.WalV2Feature)!;
        var v5 = d[5] with { Features = [f with { Action = new RepeatedAction(WalV2Action.Instance, times) }] };
        return new LayoutCatalog([.. d.Versions.Take(4), v5, .. d.Versions.Skip(5)], d.Releases);
    }

    private sealed class RepeatedAction(IUpgradeAction inner, Func<int> times) : IUpgradeAction
    {
        public ActionAccess Access => inner.Access;

        public ActionEstimate Estimate(IUpgradePool pool) => inner.Estimate(pool);

        public async Task RunAsync(UpgradeContext ctx, ulong cursor, CancellationToken ct)
        {
            int n = times();
            for (int i = 0; i < n; i++)
                await inner.RunAsync(ctx, cursor, ct);
        }
    }

    private const ulong WalV2Bit = 1UL << 4;

    /// <summary>The newest shard header of every target.</summary>
    internal static async Task<ShardHeader[]> HeadersAsync(IEnumerable<MemoryBlockDevice> devs)
    {
        var list = new List<ShardHeader>();
        foreach (var d in devs)
        {
            long at = await TestHelpers.ShardOffsetAsync(d);
            list.Add((await HeaderCopies.ReadAsync<ShardHeader>(d, at, ShardHeader.Decode, h => h.Generation)).Best!);
        }
        return list.ToArray();
    }

    [TestMethod]
    public async Task Upgrade_PoolWithData_LogRestartedInV2ClientsKeptDataIntact()
    {
        var cat = LayoutCatalog.Default;
        var devs = TestDevices.Memory(2);
        var (engine, pool, ras) = await UpgradeTests.V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = cat }, layout: 4);
        var hashes = await UpgradeTests.ImageHashesAsync(pool);
        Assert.AreEqual(1u, pool.Log.Format);
        string? revoked = null;
        using var client = pool.RegisterClient(1, "nbd", "old/a", "test", reason =>
        {
            revoked = reason;
            return ValueTask.CompletedTask;
        });
        var handle = pool.OpenImage("old", "a");

        await pool.UpgradeAsync(5, false);
        await pool.WaitForUpgradeAsync();

        Assert.AreEqual("completed", pool.GetProperty("upgrade_status"));
        Assert.IsNull(revoked, "the switch holds I/O at the gate; it revokes no client");
        Assert.HasCount(1, pool.ListClients(), "the client is still registered");
        Assert.AreEqual(WalFormatV2.Format, pool.Log.Format);
        Assert.IsNotNull(pool.LastExclusivePauseMs);
        TestContext.WriteLine($"wal_v2 switch: I/O held for {pool.LastExclusivePauseMs:0.###} ms (2 memory targets, {pool.Meta.Images.Values.Sum(i => i.Chunks.Count)} chunk maps)");
        CollectionAssert.AreEquivalent(hashes.ToList(), (await UpgradeTests.ImageHashesAsync(pool)).ToList());
        foreach (var h in await HeadersAsync(devs))
            Assert.AreEqual((WalFormatV2.Format, WalV2Bit, 0UL), (h.WalFormat, h.Incompat & WalV2Bit, h.Incompat & LayoutCatalog.IncompatUpgradeInProgress));

        // Writes after the switch (on the handle opened before it) are logged as v2 batches: an unclean stop replays them.
        await handle.WriteAsync(8192, TestDevices.Pattern(50_000, 9));
        await pool.CreateContainerAsync("after");
        await pool.CloseAsync(checkpoint: false);
        var (again, _) = await OpenAsync(devs, cat);
        var p2 = await again.OpenPoolAsync("tank");
        Assert.IsGreaterThan(0, p2.ReplayedRecords);
        var back = new byte[50_000];
        await p2.OpenImage("old", "a").ReadAsync(8192, back);
        CollectionAssert.AreEqual(TestDevices.Pattern(50_000, 9), back);
        Assert.IsTrue(p2.ListContainers().Any(c => c.Label == "after"));
        Assert.IsTrue(ras.WithId(RasIds.PoolUpgradeCompleted).Any());
        await again.DisposeAsync();

        // A release without wal_v2 refuses the pool before writing anything.
        string sha = TestHelpers.Sha256(devs);
        var oldRas = new InMemoryRasSink();
        var old = await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = oldRas, Catalog = cat.Truncate(4) });
        var e = await Assert.ThrowsExactlyAsync<IncompatibleLayoutException>(() => old.OpenPoolAsync("tank"));
        StringAssert.Contains(e.Message, "unknown incompat features 0x10 (wal_v2 (layout 5))");
        Assert.AreEqual(RasIds.PoolLayoutIncompatible, oldRas.Events.Single().Id);
        Assert.AreEqual(sha, TestHelpers.Sha256(devs));
    }

    private static async Task<(StorageEngine, InMemoryRasSink)> OpenAsync(IBlockDevice[] devs, LayoutCatalog cat)
    {
        var ras = new InMemoryRasSink();
        return (await StorageEngine.OpenAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = cat }), ras);
    }

    [TestMethod]
    [DataRow(4u, 1u, DisplayName = "layout 4 pool: WAL v1")]
    [DataRow(5u, 2u, DisplayName = "pool created with wal_v2: WAL v2")]
    public async Task Replay_UncleanStopAfterWrapsAndCheckpoints_EveryAcknowledgedWriteBack(uint layout, uint format)
    {
        var cat = LayoutCatalog.Default;
        var devs = TestDevices.Memory(2);
        var (engine, _) = await OpenFormattedAsync(devs, cat);
        var pool = await engine.CreatePoolAsync("tank", 6L << 20, 2, TestDevices.SmallPool with { LayoutVersion = layout });
        Assert.AreEqual(format, pool.Log.Format);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 1 << 20, 4096);
        var expect = new byte[1 << 20];
        var rng = new Random(7);
        // Far more log than the 128 KiB WAL holds: it wraps and checkpoints many times; the last
        // writes stay in the log (some of them writeback, flushed at the end).
        for (int i = 0; i < 3000; i++)
        {
            int chunk = rng.Next(256);
            var data = TestDevices.Pattern(rng.Next(1, 4097), i);
            int off = chunk * 4096 + rng.Next(0, 4097 - data.Length);
            data.CopyTo(expect, off);
            await img.WriteAsync(off, data, durable: i % 3 != 0);
        }
        await img.FlushAsync();
        // Then a few writes after a checkpoint, fewer than would fill half the log: they are in it.
        await pool.Log.CheckpointAsync();
        for (int i = 0; i < 5; i++)
        {
            var data = TestDevices.Pattern(4096, 10_000 + i);
            data.CopyTo(expect, i * 8192);
            await img.WriteAsync(i * 8192, data);
        }
        await pool.CloseAsync(checkpoint: false);

        var (again, ras) = await OpenAsync(devs, cat);
        Assert.AreEqual(format, (await HeadersAsync(devs))[0].WalFormat, "the header names the log's format");
        var p2 = await again.OpenPoolAsync("tank");
        Assert.IsGreaterThanOrEqualTo(5, p2.ReplayedRecords);
        Assert.AreEqual(0, p2.DroppedTailRecords);
        Assert.AreEqual(format, p2.Log.Format);
        var back = new byte[1 << 20];
        await p2.OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(expect, back);
        Assert.IsFalse(ras.Events.Any(e => e.Severity == RasSeverity.Error), string.Join("; ", ras.Events.Select(e => e.Message)));
    }

    private static async Task<(StorageEngine, InMemoryRasSink)> OpenFormattedAsync(IBlockDevice[] devs, LayoutCatalog cat)
    {
        var ras = new InMemoryRasSink();
        return (await StorageEngine.FormatAsync(devs, new StorageEngineOptions { Ras = ras, Catalog = cat }), ras);
    }

    [TestMethod]
    public async Task WalV2Action_RunManyTimesFromRandomCursorsAndThroughJobs_SameResult()
    {
        string? reference = null;
        for (int seed = 1; seed <= 8; seed++)
        {
            var rng = new Random(seed);
            TestContext.WriteLine($"seed {seed}");
            var cat = Repeating(() => seed == 1 ? 1 : rng.Next(1, 5));
            var devs = TestDevices.Memory(2);
            var (engine, pool, _) = await UpgradeTests.V1PoolWithDataAsync(devs, new StorageEngineOptions { Catalog = cat }, layout: 4);
            var img = pool.OpenImage("old", "b");
            // The action directly, from random cursors, with writes in between (outside a job: the
            // committer switches between rounds, so a batch is never half one format).
            var feature = cat[5].Features.Single();
            for (int i = rng.Next(0, 4); i > 0; i--)
            {
                var ctx = new UpgradeContext(pool, feature, _ => Task.CompletedTask, (_, _) => { });
                await WalV2Action.Instance.RunAsync(ctx, (ulong)rng.Next(0, 100), CancellationToken.None);
                Assert.AreEqual(WalFormatV2.Format, pool.Log.Format, $"seed {seed}");
                await img.WriteAsync(4096 * i, TestDevices.Pattern(100, i), durable: rng.Next(2) == 0);
            }
            for (int i = 3; i > 0; i--)
                await img.WriteAsync(4096 * i, TestDevices.Pattern(100, i));
            await pool.UpgradeAsync(5, false);
            await pool.WaitForUpgradeAsync();
            await pool.CloseAsync(checkpoint: false);
            var (again, _) = await OpenAsync(devs, cat);
            var p = await again.OpenPoolAsync("tank");
            Assert.AreEqual("completed", p.GetProperty("upgrade_status"), $"seed {seed}");
            string result = string.Join(";", p.GetProperties().Where(kv => kv.Key != "upgrade_progress").OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"))
                            + "|" + string.Join(";", (await UpgradeTests.ImageHashesAsync(p)).OrderBy(kv => kv.Key).Select(kv => kv.Value))
                            + "|" + p.Query().Incompat + "," + p.Log.Format + "," + string.Join(",", (await HeadersAsync(devs)).Select(h => $"{h.WalFormat}/{h.Incompat}"));
            reference ??= result;
            Assert.AreEqual(reference, result, $"seed {seed}");
            await again.DisposeAsync();
        }
    }
}
