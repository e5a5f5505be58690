using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Store.Tests;

/// <summary>
/// Device errors injected by libstrata_io (file backend, buffered): EIO on a data
/// write, on a log write, on a flush. Inconclusive when the shim cannot be loaded.
/// </summary>
[TestClass]
public sealed class FaultTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Directory.CreateTempSubdirectory("strata-fault-").FullName;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    private NativeBlockDevice Open(string name)
    {
        try
        {
            return NativeBlockDevice.Open($"file:{Path.Combine(_dir, name)}?create=1&size=16M&direct=0", new DeviceOptions { ArenaBytes = 0 });
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException or BadImageFormatException)
        {
            Assert.Inconclusive($"libstrata_io is not loadable: {e.Message}");
            throw;
        }
    }

    /// <summary>A one-target pool with acknowledged data; returns the pool, the image and the acked bytes.</summary>
    private async Task<(StorageEngine Engine, Pool Pool, Image Image, byte[] Acked, NativeBlockDevice Dev, InMemoryRasSink Ras)> SetupAsync(Engine.Layout.LayoutCatalog? catalog = null, uint layout = 0)
    {
        var dev = Open("t0");
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync([dev], new StorageEngineOptions { Ras = ras, Catalog = catalog ?? Engine.Layout.LayoutCatalog.Default });
        var pool = await engine.CreatePoolAsync("tank", 4L * 1024 * 1024, 1, TestDevices.SmallPool with { LayoutVersion = layout });
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", 256 * 1024, 16384);
        var acked = TestDevices.Pattern(256 * 1024, 11);
        await img.WriteAsync(0, acked);
        return (engine, pool, img, acked, dev, ras);
    }

    private async Task VerifyAfterReopenAsync(byte[] acked, int uncertainOffset, byte[] uncertain)
    {
        using var dev = Open("t0");
        var engine = await StorageEngine.OpenAsync([dev]);
        var pool = await engine.OpenPoolAsync("tank");
        Assert.AreEqual(PoolStatus.Ready, pool.State);
        var back = new byte[acked.Length];
        await pool.OpenImage("c", "v").ReadAsync(0, back);
        var region = back.AsSpan(uncertainOffset, uncertain.Length);
        Assert.IsTrue(region.SequenceEqual(acked.AsSpan(uncertainOffset, uncertain.Length)) || region.SequenceEqual(uncertain),
            "the failed write's range holds neither the old nor the new bytes");
        CollectionAssert.AreEqual(acked[..uncertainOffset], back[..uncertainOffset], "acknowledged data lost");
        int after = uncertainOffset + uncertain.Length;
        CollectionAssert.AreEqual(acked[after..], back[after..], "acknowledged data lost");
        await engine.DisposeAsync();
    }

    /// <summary>The next write into the pool's data area on target 0 fails with EIO (log and headers are outside it).</summary>
    private static void FailNextDataWrite(Pool pool, NativeBlockDevice dev)
    {
        var shard = pool.Shards[0];
        long start = shard.Base + shard.Header.DataOffset, end = start + shard.Header.DataLength;
        dev.SetFaults($"fail_io=1&fail_ops=write&fail_range={start}-{end}");
    }

    [TestMethod]
    public async Task DataWrite_Eio_OperationFailsWithRasAndAcknowledgedDataKept()
    {
        var (engine, pool, img, acked, dev, ras) = await SetupAsync();
        FailNextDataWrite(pool, dev);
        var e = await Assert.ThrowsExactlyAsync<StoreException>(() => img.WriteAsync(200_000, new byte[5000]).AsTask());
        Assert.AreEqual(Errno.EIO, e.Errno);
        StringAssert.Contains(e.Message, "pool 'tank' image 'v' at offset 200000");
        Assert.IsTrue(ras.WithId(RasIds.DataWriteFailed).Any());
        Assert.AreEqual(1L, dev.GetFaultStats().IosFailed);
        // The failure was reported, nothing was claimed durable: the pool keeps working.
        Assert.AreEqual(PoolStatus.Ready, pool.State);
        var next = TestDevices.Pattern(4096, 99);
        await img.WriteAsync(0, next);
        next.CopyTo(acked, 0);
        await img.FlushAsync();
        await engine.DisposeAsync();
        dev.Dispose();
        await VerifyAfterReopenAsync(acked, 200_000, acked[200_000..205_000]);
    }

    /// <summary>
    /// The chunk-map record is logged while its data write runs; when the write fails the record
    /// is voided in the log before the round's flush. Later rounds put a durable mark past it, so
    /// replay after a crash (no clean close, no checkpoint) would apply it if it were still there.
    /// </summary>
    [TestMethod]
    [DataRow(false, DisplayName = "WAL v1: a pad record in its place")]
    [DataRow(true, DisplayName = "WAL v2: a pad in its batch, the batch CRC made again")]
    public async Task DataWrite_Eio_RecordVoidedInLog_ReplayAfterCrashKeepsOldData(bool walV2)
    {
        var catalog = Engine.Layout.LayoutCatalog.Default;
        // A layout-4 pool logs in v1; wal_v2 arrives at layout 5.
        var (_, pool, img, acked, dev, ras) = await SetupAsync(catalog, walV2 ? 5u : 4u);
        Assert.AreEqual(walV2 ? WalFormatV2.Format : 1u, pool.Log.Format);
        FailNextDataWrite(pool, dev);
        var e = await Assert.ThrowsExactlyAsync<StoreException>(() => img.WriteAsync(100_000, TestDevices.Pattern(3000, 5)).AsTask());
        Assert.AreEqual(Errno.EIO, e.Errno);
        Assert.IsTrue(ras.WithId(RasIds.DataWriteFailed).Any());
        // Two more rounds: the second one's mark covers the round that held the voided record.
        var next = TestDevices.Pattern(16384, 21);
        await img.WriteAsync(0, next);
        next.CopyTo(acked, 0);
        var more = TestDevices.Pattern(16384, 22);
        await img.WriteAsync(16384, more);
        more.CopyTo(acked, 16384);
        var back = new byte[3000];
        await img.ReadAsync(100_000, back);
        CollectionAssert.AreEqual(acked[100_000..103_000], back, "the failed write changed the chunk in memory");
        // Crash: the device goes away under the engine (no checkpoint, no clean stop); reopen replays the log.
        dev.Dispose();
        using var again = Open("t0");
        var ras2 = new InMemoryRasSink();
        var engine2 = await StorageEngine.OpenAsync([again], new StorageEngineOptions { Ras = ras2, Catalog = catalog });
        var pool2 = await engine2.OpenPoolAsync("tank");
        var all = new byte[acked.Length];
        await pool2.OpenImage("c", "v").ReadAsync(0, all);
        CollectionAssert.AreEqual(acked, all, "replay applied the voided record or lost acknowledged data");
        Assert.IsFalse(ras2.WithId(RasIds.DataUnrecoverable).Any());
        await engine2.DisposeAsync();
    }

    /// <summary>
    /// A writeback write whose data write fails is not logged at all (its record is queued only
    /// after the data is written): EIO, its extents are free at once, nothing waits for a flush,
    /// and the chunk keeps its old contents, before and after a reopen.
    /// </summary>
    [TestMethod]
    public async Task WritebackDataWrite_Eio_NothingLogged_ExtentsFreedAtOnce()
    {
        var (engine, pool, img, acked, dev, ras) = await SetupAsync();
        await img.FlushAsync();
        long used = pool.Shards[0].Allocator.UsedBytes;
        ulong next = pool.Log.NextSeq;
        FailNextDataWrite(pool, dev);
        var e = await Assert.ThrowsExactlyAsync<StoreException>(() => img.WriteAsync(100_000, TestDevices.Pattern(3000, 5), durable: false).AsTask());
        Assert.AreEqual(Errno.EIO, e.Errno);
        Assert.IsTrue(ras.WithId(RasIds.DataWriteFailed).Any());
        Assert.IsFalse(pool.Log.HasDeferredFrees);
        Assert.AreEqual(used, pool.Shards[0].Allocator.UsedBytes);
        await img.FlushAsync();
        Assert.AreEqual(next, pool.Log.NextSeq, "a failed writeback write logged something");
        var back = new byte[3000];
        await img.ReadAsync(100_000, back);
        CollectionAssert.AreEqual(acked[100_000..103_000], back);
        await engine.DisposeAsync();
        dev.Dispose();
        await VerifyAfterReopenAsync(acked, 0, []);
    }

    [TestMethod]
    public async Task LogWrite_Eio_PoolReadOnlyWithRasAndAcknowledgedDataKept()
    {
        var (engine, pool, img, acked, dev, ras) = await SetupAsync();
        var shard = pool.Shards[0];
        dev.SetFaults($"fail_io=1&fail_ops=write&fail_range={shard.WalStart}-{shard.WalStart + shard.Header.WalLength}");
        var data = TestDevices.Pattern(5000, 5);
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => img.WriteAsync(100_000, data).AsTask());
        Assert.AreEqual(PoolStatus.ReadOnly, pool.State);
        StringAssert.Contains(ras.WithId(RasIds.PoolReadOnly).Single().Message, "the metadata log failed");
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => img.WriteAsync(0, new byte[1]).AsTask());
        Assert.ThrowsExactly<PoolReadOnlyException>(() => img.FlushAsync());
        // Reads of acknowledged data still work while read-only.
        var back = new byte[4096];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(acked[..4096], back);
        await engine.DisposeAsync();
        dev.Dispose();
        await VerifyAfterReopenAsync(acked, 100_000, data);
    }

    /// <summary>One flush per commit round covers the chunk data and the log record; it fails for the first write, or for a second one after an acknowledged first.</summary>
    [TestMethod]
    [DataRow(1, DisplayName = "commit flush of the write")]
    [DataRow(2, DisplayName = "commit flush of the next write")]
    public async Task Flush_Eio_NeverReportedAsSuccessLater(int whichFlush)
    {
        var (engine, pool, img, acked, dev, ras) = await SetupAsync();
        dev.SetFaults($"fail_flush={whichFlush}");
        if (whichFlush == 2)
        {
            var first = TestDevices.Pattern(3000, 7);
            await img.WriteAsync(10_000, first);
            first.CopyTo(acked, 10_000);
        }
        var data = TestDevices.Pattern(5000, 6);
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => img.WriteAsync(50_000, data).AsTask());
        Assert.AreEqual(1L, dev.GetFaultStats().FlushesFailed);
        Assert.AreEqual(PoolStatus.ReadOnly, pool.State);
        Assert.IsTrue(ras.WithId(RasIds.PoolReadOnly).Any());
        // The device would now flush fine; the pool must still refuse to claim durability.
        Assert.ThrowsExactly<PoolReadOnlyException>(() => img.FlushAsync());
        await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => img.WriteAsync(50_000, data).AsTask());
        Assert.ThrowsExactly<PoolReadOnlyException>(() => img.FlushAsync());
        await engine.DisposeAsync();
        dev.Dispose();
        await VerifyAfterReopenAsync(acked, 50_000, data);
    }
}
