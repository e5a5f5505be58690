using Strata.Engine.Pools;

namespace Strata.Store.Tests;

/// <summary>
/// The client of the job crash suites (data-moving upgrade actions, extend, exclusion and rebuild):
/// while the job runs it writes (half of them writeback), trims, resizes, removes, creates and
/// flushes, and applies each operation to the model as it is acknowledged. One per seeded run,
/// drawing from the run's Random so a seed replays the same operations.
/// </summary>
internal sealed class JobClient(Random rng)
{
    private int _nextImage;

    /// <summary>The run's Random, shared with the workload that drives the job.</summary>
    public Random Random => rng;

    /// <summary>Creates one to three images (4 or 8 KiB chunks) written full of a pattern: the data the job moves.</summary>
    public async Task SeedImagesAsync(Pool pool, CrashModel model)
    {
        for (int i = rng.Next(1, 4); i > 0; i--)
        {
            string label = $"i{_nextImage++}";
            int cs = rng.Next(2) == 0 ? 4096 : 8192;
            var data = TestDevices.Pattern(rng.Next(cs, 96 * 1024), rng.Next());
            var img = await pool.CreateImageAsync("c", label, data.Length, cs);
            await img.WriteAsync(0, data);
            model.Images[label] = new CrashModel.Img { Data = data, ChunkSize = cs };
        }
    }

    /// <summary>One random operation on container "c", recorded in m once the pool acknowledged it.</summary>
    public async Task OneOpAsync(Pool pool, CrashModel m)
    {
        int roll = rng.Next(100);
        var names = m.Images.Keys.Order().ToList();
        if (names.Count == 0 || roll >= 95)
        {
            string label = $"i{_nextImage++}";
            int cs = rng.Next(2) == 0 ? 4096 : 8192;
            int size = rng.Next(1, 64 * 1024);
            m.Images[label] = new CrashModel.Img { Data = new byte[size], ChunkSize = cs };
            await pool.CreateImageAsync("c", label, size, cs);
            m.Flushed();
            return;
        }
        string pick = names[rng.Next(names.Count)];
        var img = m.Images[pick];
        var handle = pool.OpenImage("c", pick);
        if (roll < 70)
        {
            bool durable = rng.Next(2) == 0;
            int len = rng.Next(1, Math.Min(img.Data.Length, img.ChunkSize * 5 / 2) + 1);
            int off = rng.Next(0, img.Data.Length - len + 1);
            await m.WriteAsync(img, handle, off, TestDevices.Pattern(len, rng.Next()), durable);
        }
        else if (roll < 80)
        {
            int len = rng.Next(1, img.Data.Length + 1);
            int off = rng.Next(0, img.Data.Length - len + 1);
            Array.Clear(img.Data, off, len);
            await handle.TrimAsync(off, len);
        }
        else if (roll < 87)
        {
            int size = rng.Next(1, 96 * 1024);
            var data = new byte[size];
            img.Data.AsSpan(0, Math.Min(size, img.Data.Length)).CopyTo(data);
            img.Data = data;
            await handle.ResizeAsync(size, allowShrink: true);
            m.Flushed();
        }
        else if (roll < 91)
        {
            m.Images.Remove(pick);
            await pool.RemoveImageAsync("c", pick);
        }
        else
        {
            await handle.FlushAsync();
            m.Flushed();
        }
    }
}

/// <summary>
/// The seeded crash suites' runner: which seeds a run takes (CI's count, STRATA_SOAK_RUNS=N runs N,
/// STRATA_CRASH_SEED=S starts at S, so a failure reproduces with STRATA_CRASH_SEED=&lt;seed&gt;
/// STRATA_SOAK_RUNS=1; STRATA_CRASH_REPEAT=N runs each N times, for a failure that depends on timing)
/// and running them a few at once until one fails.
/// </summary>
internal static class CrashSeeds
{
    public static int Env(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int v) ? v : fallback;

    /// <summary>The soak's seeds: <paramref name="ciRuns"/> (or STRATA_SOAK_RUNS) from 1 (or STRATA_CRASH_SEED), each STRATA_CRASH_REPEAT times.</summary>
    public static (IEnumerable<int> Seeds, int Runs, int First) FromEnvironment(int ciRuns)
    {
        int runs = Env("STRATA_SOAK_RUNS", ciRuns), first = Env("STRATA_CRASH_SEED", 1), repeat = Env("STRATA_CRASH_REPEAT", 1);
        return (Enumerable.Range(first, runs).SelectMany(s => Enumerable.Repeat(s, repeat)), runs, first);
    }

    /// <summary>
    /// Runs <paramref name="run"/> for each seed, <paramref name="parallel"/> at once, starting no more once one
    /// failed; returns the lowest failing seed and why (a failed assertion's message, any other exception
    /// whole, with its stack), or null.
    /// </summary>
    public static async Task<(int Seed, string Message)?> FirstFailureAsync(IEnumerable<int> seeds, int parallel, Func<int, Task> run, CancellationToken ct = default)
    {
        var failures = new System.Collections.Concurrent.ConcurrentBag<(int Seed, string Message)>();
        await Parallel.ForEachAsync(seeds, new ParallelOptions { MaxDegreeOfParallelism = parallel, CancellationToken = ct }, async (seed, _) =>
        {
            if (!failures.IsEmpty)
                return;
            try
            {
                await run(seed);
            }
            catch (Exception e)
            {
                failures.Add((seed, e is AssertFailedException ? e.Message : e.ToString()));
            }
        });
        return failures.IsEmpty ? null : failures.OrderBy(f => f.Seed).First();
    }

    /// <summary>Fails the test with the seed to reproduce it with, when a run failed.</summary>
    public static void AssertNone((int Seed, string Message)? failure)
    {
        if (failure is { } f)
            Assert.Fail($"crash run failed; reproduce with STRATA_CRASH_SEED={f.Seed} STRATA_SOAK_RUNS=1: {f.Message}");
    }

    /// <summary>
    /// A job suite's runs, two at a time: a run returns whether a reopen found its job mid-way and resumed
    /// it; with 100 runs or more, more than runs / resumedDivisor must have (else the crashes missed the job).
    /// </summary>
    public static async Task<int> RunAsync(int defaultRuns, Func<int, Task<bool>> run, TestContext context, int resumedDivisor)
    {
        var (seeds, runs, first) = FromEnvironment(defaultRuns);
        int resumed = 0;
        AssertNone(await FirstFailureAsync(seeds, 2, async seed =>
        {
            if (await run(seed))
                Interlocked.Increment(ref resumed);
        }, context.CancellationToken));
        context.WriteLine($"{runs} crash runs from seed {first}: {resumed} reopened a pool whose job was mid-way and resumed it");
        if (runs >= 100)
            Assert.IsGreaterThan(runs / resumedDivisor, resumed, "crashes landed inside the job and reopens resumed it");
        return resumed;
    }
}
