using System.Text.Json;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Engine.Tests.Control;

/// <summary>The durable RAS log's background writer: nothing lost, sequence order kept, flushed on a clean stop.</summary>
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
}
