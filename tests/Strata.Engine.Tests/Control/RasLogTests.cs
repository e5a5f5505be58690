using System.Text.Json;
using Strata.Cli.Tests;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Engine.Tests.Control;

/// <summary>The durable RAS log's background writer: nothing lost, sequence order kept, flushed on a clean stop, a full disk survived.</summary>
[TestClass]
public sealed class RasLogTests
{
    [TestMethod]
    public void Emit_ManyEventsFromManyThreads_AllInTheLogInOrderAfterDispose()
    {
        string dir = Directory.CreateTempSubdirectory("strata-ras-").FullName;
        try
        {
            string path = Path.Combine(dir, "events.jsonl");
            // More than the writer's queue holds, so emitters also take the wait-for-room path.
            const int threads = 4, perThread = RasLog.QueueCapacity / 2;
            var log = new RasLog(path, maxBytes: 1L << 30);
            var emitted = new long[threads][];
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                emitted[t] = new long[perThread];
                for (int i = 0; i < perThread; i++)
                    emitted[t][i] = log.Emit(new RasEvent("test_event", RasSeverity.Notice, RasType.InfoOnly, $"thread {t} event {i}"), null, null).Seq;
            });
            log.Dispose();

            var lines = File.ReadAllLines(path);
            Assert.HasCount(threads * perThread, lines, "every event is in the file after a clean stop");
            var records = lines.Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();
            CollectionAssert.AreEqual(Enumerable.Range(1, threads * perThread).Select(i => (long)i).ToList(), records.Select(r => r.Seq).ToList(),
                "the file holds the events in sequence order, none missing");
            // Each thread's events keep the order it emitted them in.
            for (int t = 0; t < threads; t++)
            {
                var mine = records.Where(r => r.Msg.StartsWith($"thread {t} ", StringComparison.Ordinal)).Select(r => r.Seq).ToList();
                CollectionAssert.AreEqual(emitted[t], mine);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public async Task ReadAllAsync_SeesEveryEventEmittedBeforeIt_AndSequenceContinuesAfterRestart()
    {
        string dir = Directory.CreateTempSubdirectory("strata-ras-").FullName;
        try
        {
            string path = Path.Combine(dir, "events.jsonl");
            using (var log = new RasLog(path))
            {
                for (int i = 0; i < 500; i++)
                    log.Emit(new RasEvent("test_event", RasSeverity.Warning, RasType.InfoOnly, $"event {i}"));
                var all = await log.ReadAllAsync();
                Assert.HasCount(500, all);
                Assert.AreEqual("event 499", all[^1].Msg);
            }
            using (var again = new RasLog(path))
            {
                Assert.AreEqual(501, again.Emit(new RasEvent("test_event", RasSeverity.Notice, RasType.InfoOnly, "after restart"), null, null).Seq);
                Assert.HasCount(501, await again.ReadAllAsync());
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public async Task Emit_OnAFullFilesystem_NoPartialLine_EventsWaitInMemory_WrittenInOrderWhenSpaceReturns()
    {
        string dir = Directory.CreateTempSubdirectory("strata-rasfull-").FullName;
        try
        {
            using var fs = Tmpfs.MountOrInconclusive(dir, "256k");
            string path = Path.Combine(fs.Dir, "events.jsonl");
            using var log = new RasLog(path);
            int failed = 0;
            log.WriteFailed += n => Interlocked.Add(ref failed, n);
            var resumed = new TaskCompletionSource<RasRecord>(TaskCreationOptions.RunContinuationsAsynchronously);
            log.Emitted += r =>
            {
                if (r.Id == ControlRasIds.RasLogWriteResumed)
                    resumed.TrySetResult(r);
            };
            string pad = new('x', 200);
            for (int i = 0; i < 5; i++)
                log.Emit(new RasEvent("test_event", RasSeverity.Notice, RasType.InfoOnly, $"before {i} {pad}"));
            await log.FlushAsync();

            // The filesystem is full: at most the rest of the file's last page takes a few bytes.
            string filler = fs.Fill();
            log.Emit(new RasEvent("test_event", RasSeverity.Notice, RasType.InfoOnly, $"fits 0 {pad}"));
            await log.FlushAsync();
            long whole = new FileInfo(path).Length;
            DateTime modified = File.GetLastWriteTimeUtc(path);
            for (int i = 0; i < 399; i++)
                log.Emit(new RasEvent("test_event", RasSeverity.Notice, RasType.InfoOnly, $"during {i} {pad}"));
            await log.FlushAsync();
            // The batch that does not fit was refused whole: not written part-way and cut back, which a
            // reader could catch in between (the space is reserved first).
            Assert.AreEqual(whole, new FileInfo(path).Length);
            Assert.AreEqual(modified, File.GetLastWriteTimeUtc(path), "a refused batch never touches the file");

            byte[] onDisk = File.ReadAllBytes(path);
            Assert.IsTrue(onDisk.Length > 0 && onDisk[^1] == (byte)'\n', $"the file ends in a whole line ({onDisk.Length} bytes)");
            var lines = File.ReadAllLines(path).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();
            Assert.IsLessThan(405, lines.Count, "the disk refused some events");
            CollectionAssert.AreEqual(Enumerable.Range(1, lines.Count).Select(i => (long)i).ToList(), lines.Select(r => r.Seq).ToList());
            Assert.IsGreaterThan(0, Volatile.Read(ref failed), "the failed writes are counted");

            // Nothing acknowledged is lost: the waiting events are shown, with the outage's own event among them.
            var all = await log.ReadAllAsync();
            CollectionAssert.AreEqual(Enumerable.Range(1, 406).Select(i => (long)i).ToList(), all.Select(r => r.Seq).ToList());
            StringAssert.Contains(all.Single(r => r.Id == ControlRasIds.RasLogWriteFailed).Msg, "(no space left on device)");

            File.Delete(filler);
            var gap = await resumed.Task.WaitAsync(TimeSpan.FromSeconds(30));
            StringAssert.Matches(gap.Msg, new System.Text.RegularExpressions.Regex(@"^\d+ event\(s\) could not be written between \S+ and \S+ \(no space left on device\); they waited in memory and are in the log now$"));
            Assert.AreEqual("0", gap.Data!["lost"]);
            Assert.AreEqual(all.Count - lines.Count, int.Parse(gap.Data["unwritten"], System.Globalization.CultureInfo.InvariantCulture));
            await log.FlushAsync();
            var after = File.ReadAllLines(path).Select(l => JsonSerializer.Deserialize<RasRecord>(l, Api.Json)!).ToList();
            CollectionAssert.AreEqual(Enumerable.Range(1, 407).Select(i => (long)i).ToList(), after.Select(r => r.Seq).ToList(), "every event in the file, in order");
            CollectionAssert.AreEqual(Enumerable.Range(0, 1).Select(i => $"fits {i} {pad}").Concat(Enumerable.Range(0, 399).Select(i => $"during {i} {pad}")).ToList(),
                after.Where(r => r.Msg.StartsWith("during ", StringComparison.Ordinal) || r.Msg.StartsWith("fits ", StringComparison.Ordinal)).Select(r => r.Msg).ToList());
            Assert.AreEqual(ControlRasIds.RasLogWriteResumed, after[^1].Id);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
