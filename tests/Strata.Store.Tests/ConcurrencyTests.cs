using Strata.Engine.Device;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

[TestClass]
public sealed class ConcurrencyTests
{
    /// <summary>Memory disk whose commands take a little while, so concurrent operations really interleave.</summary>
    private sealed class JitterDisk(string name, long capacity) : MemoryBlockDevice(name, capacity)
    {
        protected override void Execute(IoOpcode opcode, long offset, long length, ReadOnlyMemory<byte> buffer, WriteFlags flags)
        {
            Thread.SpinWait(Random.Shared.Next(2000));
            if (Random.Shared.Next(4) == 0)
                Thread.Yield();
            base.Execute(opcode, offset, length, buffer, flags);
        }
    }

    /// <summary>
    /// Writers own interleaved byte regions that share chunks (so their
    /// read-modify-writes contend), readers read everywhere while extents are freed
    /// and reused: no read may fail or see a checksum mismatch, and every writer's
    /// last bytes must be there at the end and after reopening.
    /// </summary>
    [TestMethod]
    public async Task Image_ConcurrentWritersAndReaders_NoLostUpdateNoFalseMismatch()
    {
        const int Seed = 424242, Writers = 4, Region = 10_000, OpsPerWriter = 150;
        var devs = Enumerable.Range(0, 3).Select(i => new JitterDisk($"jitter{i}", TestDevices.TargetSize)).ToArray();
        var (engine, ras) = await TestDevices.FormatAsync(devs);
        // A small data area, so freed extents are reused while readers may still be looking.
        var pool = await engine.CreatePoolAsync("tank", 3 * 128 * 1024, 2, TestDevices.SmallPool);
        await pool.CreateContainerAsync("c");
        var img = await pool.CreateImageAsync("c", "v", Writers * Region, 8192);
        var model = new byte[Writers * Region];
        using var stop = new CancellationTokenSource();
        var readers = Enumerable.Range(0, 3).Select(r => Task.Run(async () =>
        {
            var rng = new Random(Seed + 100 + r);
            var buf = new byte[20_000];
            while (!stop.IsCancellationRequested)
            {
                int len = rng.Next(1, buf.Length);
                await img.ReadAsync(rng.Next(0, model.Length - len), buf.AsMemory(0, len));
            }
        })).ToList();
        var writers = Enumerable.Range(0, Writers).Select(w => Task.Run(async () =>
        {
            var rng = new Random(Seed + w);
            for (int i = 0; i < OpsPerWriter; i++)
            {
                int len = rng.Next(1, 3000);
                int off = w * Region + rng.Next(0, Region - len);
                var data = new byte[len];
                rng.NextBytes(data);
                if (rng.Next(8) == 0)
                {
                    await img.TrimAsync(off, len);
                    Array.Clear(data);
                }
                else
                {
                    await img.WriteAsync(off, data);
                }
                lock (model)
                    data.CopyTo(model, off);
            }
        })).ToList();
        await Task.WhenAll(writers);
        stop.Cancel();
        await Task.WhenAll(readers);
        Assert.AreEqual(0, ras.Events.Count, $"seed {Seed}: " + string.Join("; ", ras.Events.Select(e => e.Message)));
        var back = new byte[model.Length];
        await img.ReadAsync(0, back);
        CollectionAssert.AreEqual(model, back, $"seed {Seed}");
        await engine.DisposeAsync();
        var (engine2, _) = await TestDevices.OpenAsync(devs);
        await (await engine2.OpenPoolAsync("tank")).OpenImage("c", "v").ReadAsync(0, back);
        CollectionAssert.AreEqual(model, back, $"seed {Seed} after reopen");
    }
}
