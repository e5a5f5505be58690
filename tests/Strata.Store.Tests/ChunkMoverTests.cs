using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// The chunk-move API a migration loop uses (docs/format.md, "Moving a chunk"): a hold on one
/// chunk excludes client writes to it and nothing else, a switch is conditional on the chunk
/// still being where the mover read it, and the source is freed only once the switch is durable.
/// </summary>
[TestClass]
public sealed class ChunkMoverTests
{
    private const int ChunkSize = 4096;

    private static async Task<(Pool Pool, Image Image)> CreateAsync(Strata.Engine.Device.IBlockDevice[] disks, int rf = 1)
    {
        var engine = await StorageEngine.FormatAsync(disks);
        var pool = await engine.CreatePoolAsync("tank", disks.Length * 1024L * 1024, rf, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var image = await pool.CreateImageAsync("c", "v", 16 * ChunkSize, ChunkSize);
        return (pool, image);
    }

    /// <summary>A loop's copy step: read the source under a shared hold, then write it to a fresh extent on another target.</summary>
    private static async Task<(ChunkMap Source, Replica[] Destination)> CopyAsync(Pool pool, Image image, long chunk)
    {
        var mover = pool.Mover;
        ChunkMap source;
        var bytes = new byte[ChunkSize];
        using (var hold = await mover.ReadLockAsync(image.Id, chunk))
        {
            source = hold.Location!;
            await mover.ReadAsync(source.Replicas[0], bytes);
        }
        var verdict = ChunkChecksum.Verify(source.Replicas[0], ChunkSize, 0, bytes);
        Assert.IsTrue(verdict.Ok, "the source verifies");
        int target = (source.Replicas[0].Target + 1) % pool.TargetCount;
        var destination = new Replica((ushort)target, await mover.AllocateAsync(target, ChunkSize), verdict.Actual);
        await mover.WriteAsync(destination, bytes);
        return (source, [destination]);
    }

    private static async Task<byte[]> ReadChunkAsync(Image image, long chunk)
    {
        var b = new byte[ChunkSize];
        await image.ReadAsync(chunk * ChunkSize, b);
        return b;
    }

    private static CrashDisk[] CrashDisks(CrashSwitch power) =>
        Enumerable.Range(0, 2).Select(i => new CrashDisk($"crash{i}", 4L * 1024 * 1024, power)).ToArray();

    /// <summary>The disks as a crash left them (which unflushed writes survive: by <paramref name="seed"/>), the pool opened on them.</summary>
    private static async Task<(Pool Pool, Image Image, InMemoryRasSink Ras)> ReopenAfterCrashAsync(CrashDisk[] disks, int seed)
    {
        var rng = new Random(seed);
        var after = disks.Select(d => d.AfterCrash(rng, new CrashSwitch())).ToArray();
        var (engine, ras) = await TestDevices.OpenAsync(after);
        var pool = await engine.OpenPoolAsync("tank");
        return (pool, pool.OpenImage("c", "v"), ras);
    }

    /// <summary>
    /// After a crash around chunk 0's switch: it reads back the pattern of <paramref name="seed"/> with no
    /// checksum event; true when it is at its source <paramref name="src"/>, false at the destination.
    /// </summary>
    private static async Task<bool> ReadsBackAtSourceAsync(CrashDisk[] disks, int seed, Replica src)
    {
        var (pool, image, ras) = await ReopenAfterCrashAsync(disks, seed);
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, seed), await ReadChunkAsync(image, 0), $"seed {seed}");
        Assert.AreEqual(0, ras.Events.Count(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable"), $"seed {seed}");
        return pool.Meta.Images[image.Id].Chunks[0].Replicas[0].Target == src.Target;
    }

    private static long UsedBytes(Pool pool) => pool.Query().Targets.Sum(t => t.UsedBytes);

    [TestMethod]
    public async Task Lock_ClientWritesToHeldAndOtherChunk_OnlyTheHeldChunkWaits()
    {
        var (pool, image) = await CreateAsync(TestDevices.Memory(1));
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 1));
        var hold = await pool.Mover.LockAsync(image.Id, 0);
        var location = hold.Location;

        var held = image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 2));
        await image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 3));
        Assert.IsFalse(held.IsCompleted, "a client write to the held chunk waits for the hold");
        Assert.AreSame(location, hold.Location, "the held chunk's location did not change");

        hold.Dispose();
        await held;
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(image, 0));
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 3), await ReadChunkAsync(image, 1));
    }

    [TestMethod]
    public async Task Switch_AfterClientOverwrite_ReportsChangedThenRetryMovesAndLosesNothing()
    {
        var disks = TestDevices.Memory(2);
        var (pool, image) = await CreateAsync(disks);
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 1));
        long used = UsedBytes(pool);

        var (source, destination) = await CopyAsync(pool, image, 0);
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 2)); // the client wins
        using (var hold = await pool.Mover.LockAsync(image.Id, 0))
            Assert.AreEqual(ChunkSwitch.Changed, await hold.SwitchAsync(source, destination));
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(image, 0));
        Assert.AreEqual(used, UsedBytes(pool), "the destination of the dropped move is free again");

        (source, destination) = await CopyAsync(pool, image, 0);
        using (var hold = await pool.Mover.LockAsync(image.Id, 0))
        {
            Assert.AreEqual(ChunkSwitch.Switched, await hold.SwitchAsync(source, destination));
            CollectionAssert.AreEqual(destination, hold.Location!.Replicas);
        }
        Assert.AreEqual(used, UsedBytes(pool), "the source is free once the switch is durable");
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(image, 0));

        await pool.DisposeAsync();
        var (engine, ras) = await TestDevices.OpenAsync(disks);
        var reopened = await engine.OpenPoolAsync("tank");
        var again = reopened.OpenImage("c", "v");
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(again, 0));
        Assert.AreEqual(destination[0].Target, reopened.Meta.Images[again.Id].Chunks[0].Replicas[0].Target);
        Assert.AreEqual(0, ras.Events.Count(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable"));
    }

    [TestMethod]
    public async Task Switch_CrashAtItsFlush_SourceStaysAllocatedAndChunkReadsBackAfterEveryFate()
    {
        int atSource = 0, atDestination = 0;
        for (int seed = 1; seed <= 40; seed++)
        {
            var power = new CrashSwitch();
            var disks = CrashDisks(power);
            var (pool, image) = await CreateAsync(disks);
            await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, seed));
            var (source, destination) = await CopyAsync(pool, image, 0);

            // The power fails at the switch's flush: its record and the destination's data are both unflushed.
            power.CrashAtFlush = true;
            using (var hold = await pool.Mover.LockAsync(image.Id, 0))
                await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => hold.SwitchAsync(source, destination), $"seed {seed}");
            var src = source.Replicas[0];
            Assert.IsFalse(pool.Shards[src.Target].Allocator.MarkUsed(src.Offset, ChunkSize), $"seed {seed}: the source was freed before the switch was durable");

            if (await ReadsBackAtSourceAsync(disks, seed, src))
                atSource++;
            else
                atDestination++;
        }
        // Across the seeds the crash kept the switch (with its data) and dropped it: both were checked.
        Assert.IsTrue(atSource > 0 && atDestination > 0, $"{atSource} at the source, {atDestination} at the destination");
    }
    [TestMethod]
    public async Task SwitchWriteback_AppliedAtOnce_SourceFreedOnlyWhenAFlushMakesItDurable()
    {
        var disks = TestDevices.Memory(2);
        var (pool, image) = await CreateAsync(disks);
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 1));
        await pool.Log.FlushAsync();
        long used = UsedBytes(pool);

        var (source, destination) = await CopyAsync(pool, image, 0);
        using (var hold = await pool.Mover.LockAsync(image.Id, 0))
        {
            var record = MetaRecords.ChunkMap(image.Id, 0, destination);
            Assert.AreEqual(ChunkSwitch.Switched, hold.SwitchWriteback(source, destination, record, ChunkSize));
            CollectionAssert.AreEqual(destination, hold.Location!.Replicas, "applied when the call returns");
        }
        var src = source.Replicas[0];
        Assert.IsFalse(pool.Shards[src.Target].Allocator.MarkUsed(src.Offset, ChunkSize), "the source stays allocated until the switch is durable");
        Assert.AreEqual(used + ChunkSize, UsedBytes(pool));
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 1), await ReadChunkAsync(image, 0), "reads come from the destination");

        await pool.Log.FlushAsync();
        Assert.AreEqual(used, UsedBytes(pool), "the flush made the switch durable and freed the source");

        // A client write after the switch lands on the chunk as it is now; nothing is lost across a reopen.
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 2));
        await pool.DisposeAsync();
        var (engine, ras) = await TestDevices.OpenAsync(disks);
        var again = (await engine.OpenPoolAsync("tank")).OpenImage("c", "v");
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(again, 0));
        Assert.AreEqual(0, ras.Events.Count(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable"));
    }

    [TestMethod]
    public async Task SwitchWriteback_ClientOverwroteFirst_ReportsChangedAndFreesTheDestination()
    {
        var (pool, image) = await CreateAsync(TestDevices.Memory(2));
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 1));
        var (source, destination) = await CopyAsync(pool, image, 0);
        await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 2));
        await pool.Log.FlushAsync();
        long used = UsedBytes(pool);
        using (var hold = await pool.Mover.LockAsync(image.Id, 0))
            Assert.AreEqual(ChunkSwitch.Changed, hold.SwitchWriteback(source, destination, MetaRecords.ChunkMap(image.Id, 0, destination), ChunkSize));
        Assert.AreEqual(used - ChunkSize, UsedBytes(pool), "the dropped move's destination is free again");
        CollectionAssert.AreEqual(TestDevices.Pattern(ChunkSize, 2), await ReadChunkAsync(image, 0));
    }

    [TestMethod]
    public async Task SwitchWriteback_CrashAtTheNextFlush_SourceStaysAllocatedAndChunkReadsBackAfterEveryFate()
    {
        int atSource = 0, atDestination = 0;
        for (int seed = 1; seed <= 40; seed++)
        {
            var power = new CrashSwitch();
            var disks = CrashDisks(power);
            var (pool, image) = await CreateAsync(disks);
            await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, seed));
            var (source, destination) = await CopyAsync(pool, image, 0);
            using (var hold = await pool.Mover.LockAsync(image.Id, 0))
                Assert.AreEqual(ChunkSwitch.Switched, hold.SwitchWriteback(source, destination, MetaRecords.ChunkMap(image.Id, 0, destination), ChunkSize), $"seed {seed}");
            // Odd seeds: the switch's record is in the log (unflushed) when the power fails; even: it never left memory.
            if (seed % 2 == 1)
                await pool.Log.LoggedAsync();

            // The power fails at the flush that would make the switch durable (a job's cursor, a client's FUA).
            power.CrashAtFlush = true;
            await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => pool.Log.FlushAsync(), $"seed {seed}");
            var src = source.Replicas[0];
            Assert.IsFalse(pool.Shards[src.Target].Allocator.MarkUsed(src.Offset, ChunkSize), $"seed {seed}: the source was freed before the switch was durable");

            if (await ReadsBackAtSourceAsync(disks, seed, src))
                atSource++;
            else
                atDestination++;
        }
        Assert.IsTrue(atSource > 0 && atDestination > 0, $"{atSource} at the source, {atDestination} at the destination");
    }
    [TestMethod]
    public async Task SwitchWriteback_KeptSourceReplica_ClientWritebackWriteNeverOverwritesItInPlace()
    {
        // An rf increase's switch keeps the source replica, which the last durable record names. A
        // writeback write may overwrite a writeback mapping's fresh extents in place, never this one:
        // a crash before the flush would replay the durable map onto torn bytes (TargetsCrashTests seed 21431).
        for (int seed = 1; seed <= 20; seed++)
        {
            var power = new CrashSwitch();
            var disks = CrashDisks(power);
            var (pool, image) = await CreateAsync(disks);
            await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, seed));
            // The control: a writeback write onto a writeback mapping of fresh extents goes in place.
            await image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 100 + seed), durable: false);
            long inPlace = pool.Log.InPlaceWrites;
            await image.WriteAsync(ChunkSize, TestDevices.Pattern(ChunkSize, 200 + seed), durable: false);
            Assert.AreEqual(inPlace + 1, pool.Log.InPlaceWrites, $"seed {seed}: the control write went in place");
            // An rf change from 1 to 2 as the replicate job records it (not started, so nothing races
            // the switch below): new writes get two copies where placement puts them.
            await pool.Log.CommitAsync([MetaRecords.PoolSetProp(Pool.RfNextProp, "2"), MetaRecords.PoolSetProp(Pool.JobProp, Pool.ReplicateJob),
                MetaRecords.PoolSetProp(Pool.JobCursorProp, "0")]);
            Assert.AreEqual(2, pool.WriteRf);

            var (source, copy) = await CopyAsync(pool, image, 0);
            Replica[] destination = [source.Replicas[0], copy[0]];
            using (var hold = await pool.Mover.LockAsync(image.Id, 0))
                Assert.AreEqual(ChunkSwitch.Switched, hold.SwitchWriteback(source, destination, MetaRecords.ChunkMap(image.Id, 0, destination), ChunkSize));
            inPlace = pool.Log.InPlaceWrites;
            await image.WriteAsync(0, TestDevices.Pattern(ChunkSize, 50 + seed), durable: false);
            Assert.AreEqual(inPlace, pool.Log.InPlaceWrites, $"seed {seed}: a write overwrote the switched mapping in place");
            if (seed % 2 == 1)
                await pool.Log.LoggedAsync();

            power.CrashAtFlush = true;
            await Assert.ThrowsExactlyAsync<PoolReadOnlyException>(() => pool.Log.FlushAsync(), $"seed {seed}");
            var (reopened, again, ras) = await ReopenAfterCrashAsync(disks, seed);
            var got = await ReadChunkAsync(again, 0);
            await reopened.WaitForJobAsync();
            Assert.IsTrue(got.AsSpan().SequenceEqual(TestDevices.Pattern(ChunkSize, seed)) || got.AsSpan().SequenceEqual(TestDevices.Pattern(ChunkSize, 50 + seed)),
                $"seed {seed}: chunk 0 reads neither its durable contents nor the writeback write");
            Assert.AreEqual(0, ras.Events.Count(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable"), $"seed {seed}: {string.Join(" | ", ras.Events.Select(e => e.Message))}");
        }
    }
}
