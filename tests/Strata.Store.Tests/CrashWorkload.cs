using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>
/// One seeded crash run: format one to three CrashDisks, create a pool (rf 1 or
/// 2), run a random workload until the power fails at a random device command (in
/// a quarter of the runs after an injected EIO on a write, read or flush, where a
/// failed flush drops part of the cache like Linux does), bring the disks back
/// with a random subset of unflushed writes (one torn), sometimes crash again
/// during recovery, reopen and check against the model; then do it once more on
/// the recovered pool.
/// </summary>
internal sealed class CrashWorkload
{
    private const long DiskSize = 4L * 1024 * 1024;
    private const int MaxImageBytes = 96 * 1024;
    private const int MaxImages = 4;
    private readonly PoolCreateOptions _create;
    /// <summary>Writeback writes become durable only by a flush: no timer may move a seed's crash point.</summary>
    private readonly StorageEngineOptions _noTimer;
    /// <summary>Chunk sizes of new images: at layout 3 those above 4 KiB carry a block table.</summary>
    private readonly int[] _chunkSizes;

    private readonly int _seed;
    private readonly Random _rng;
    private CrashModel _model = new();
    private int _nextImage;
    private int _targets;

    /// <summary>Log-tail chunk writes the reopens dropped (their log record was durable, their data was not).</summary>
    public int DroppedTailRecords { get; private set; }

    /// <summary>Reopens that found a target excluded: an injected write error made it leave the pool (PoolLog.TryDropShard) durably before the crash.</summary>
    public int TargetsLeft { get; private set; }

    /// <summary>
    /// Overlapping writeback: most operations are writeback writes into the first two chunks of an
    /// image, with flushes and durable writes between them, so writes land in place in extents no
    /// flush covers yet and crashes fall between such writes and the next flush round.
    /// </summary>
    private readonly bool _overlapping;

    /// <summary>Writeback writes the pools wrote in place (docs/format.md, "Overwriting a writeback extent in place").</summary>
    public long InPlaceWrites { get; private set; }

    /// <summary>Small writes the pools logged and wrote in place (docs/format.md, "Deferred writes").</summary>
    public long DeferredWrites { get; private set; }

    /// <summary>Commit rounds started while a checkpoint was written in the background (before the crash of each round).</summary>
    public long RoundsBesideCheckpoint { get; private set; }

    /// <summary>Background checkpoints that captured the state while commit rounds were still in flight.</summary>
    public long CapturesBeforeRoundsDone { get; private set; }

    /// <param name="layout">The pool's layout: 0 = the engine's newest; 2 = one CRC per chunk; 3 = block_checksums (chunks above 4 KiB carry a block table).</param>
    public CrashWorkload(int seed, uint layout = 0, bool overlapping = false)
    {
        _overlapping = overlapping;
        _seed = seed;
        _rng = new Random(seed);
        _create = new() { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024, LayoutVersion = layout };
        _noTimer = new() { WritebackFlushInterval = Timeout.InfiniteTimeSpan };
        // Layout 6: chunks of 16 and 32 KiB take deferred writes of one and two blocks (a quarter chunk at most).
        _chunkSizes = layout == 3 ? [4096, 8192, 16384] : layout >= 6 ? [4096, 16384, 32768] : [4096, 8192];
    }

    public async Task RunAsync(int rounds = 2, int opsPerRound = 25)
    {
        var power = new CrashSwitch();
        _targets = _rng.Next(1, 4);
        var disks = Enumerable.Range(0, _targets).Select(i => new CrashDisk($"crash{i}", DiskSize, power)).ToArray();
        var engine = await StorageEngine.FormatAsync(disks, _noTimer);
        _model.Rf = _targets > 1 && _rng.Next(2) == 0 ? "2" : "1";
        // 1 MiB of data per target; images total at most MaxImages * MaxImageBytes (384 KiB).
        var pool = await engine.CreatePoolAsync("p", _targets * 1024L * 1024, int.Parse(_model.Rf), _create);
        DeferWriteback(pool);
        await pool.CreateContainerAsync("c");
        for (int round = 0; round < rounds; round++)
        {
            // One run in four injects a device error (EIO on a write, read or flush) instead
            // of, or before, the power loss; the power is cut right after the failing operation.
            int crashAfter = _rng.Next(1, 300);
            power.Reset(crashAfter, _rng.Next(4) == 0 ? _rng.Next(1, crashAfter + 1) : 0, new Random(_rng.Next()));
            // Half the rounds hold each routine checkpoint's writes until a commit round was started beside it.
            // (Its own generator: the workload's sequence, and so every seed's known path, is unchanged.)
            pool.Log.HoldCheckpointForARound = new Random(unchecked(_seed * 7919 + round)).Next(2) == 0;
            var (before, after) = await RunOpsAsync(pool, power, opsPerRound);
            InPlaceWrites += pool.Log.InPlaceWrites;
            DeferredWrites += pool.Log.DeferredWrites;
            RoundsBesideCheckpoint += pool.Log.Stats.RoundsBesideCheckpoint;
            CapturesBeforeRoundsDone += pool.Log.Stats.CapturesBeforeRoundsDone;
            power = new CrashSwitch();
            disks = disks.Select(d => d.AfterCrash(_rng, power)).ToArray();
            if (_rng.Next(3) == 0)
            {
                // Power fails again during recovery (replay and the open-time checkpoint).
                power.Reset(_rng.Next(1, 60));
                try
                {
                    var e = await StorageEngine.OpenAsync(disks, _noTimer);
                    await e.OpenPoolAsync("p");
                }
                catch (Exception) when (power.Crashed)
                {
                }
                power.CutPower();
                power = new CrashSwitch();
                disks = disks.Select(d => d.AfterCrash(_rng, power)).ToArray();
            }
            var ras = new Strata.Engine.Store.InMemoryRasSink();
            engine = await StorageEngine.OpenAsync(disks, _noTimer with { Ras = ras });
            pool = await engine.OpenPoolAsync("p");
            DeferWriteback(pool);
            // An rf change job resumed by the open ends before the pool is compared (rf is the old or the new value).
            await pool.WaitForJobAsync();
            DroppedTailRecords += pool.DroppedTailRecords;
            TargetsLeft += pool.ExcludedTargets.Count;
            int events = ras.WithId(Strata.Engine.Store.RasIds.LogTailWriteDropped).Count();
            if (events != (pool.DroppedTailRecords > 0 ? 1 : 0))
                throw new AssertFailedException($"seed {_seed} round {round}: {pool.DroppedTailRecords} dropped tail records reported by {events} {Strata.Engine.Store.RasIds.LogTailWriteDropped} events");
            await CrashModel.VerifyAsync(pool, before, after, $"seed {_seed} round {round}");
            var bad = ras.Events.FirstOrDefault(e => e.Id is "data_checksum_mismatch" or "data_unrecoverable");
            if (bad != null)
                throw new AssertFailedException($"seed {_seed} round {round}: unexpected RAS event {bad.Id}: {bad.Message}");
            // Whatever the in-flight operation did is now the truth the next round builds on.
            _model = await ReadBackAsync(pool, before, after);
        }
    }

    /// <summary>Even seeds defer small writeback writes too (durable ones always are, at layout 6); odd ones copy them on write.</summary>
    private void DeferWriteback(Pool pool) => pool.DeferWritebackFromChunkSize = _seed % 2 == 0 ? 0 : int.MaxValue;

    /// <summary>Runs operations until the power fails; returns the acknowledged model and, if an operation was in flight, the model with it applied.</summary>
    private async Task<(CrashModel Before, CrashModel? After)> RunOpsAsync(Pool pool, CrashSwitch power, int ops)
    {
        for (int i = 0; i < ops; i++)
        {
            var after = _model.Clone();
            try
            {
                await OneOpAsync(pool, after);
            }
            catch (Exception) when (power.Crashed || power.Faulted)
            {
                power.CutPower();
                return (_model, after);
            }
            catch (Exception e)
            {
                throw new AssertFailedException($"seed {_seed}: operation {i} failed without a crash: {e}");
            }
            _model = after;
            if (power.Crashed)
                return (_model, null);
        }
        // The power fails after the workload: everything must be there.
        power.CutPower();
        return (_model, null);
    }

    private async Task OneOpAsync(Pool pool, CrashModel m)
    {
        int roll = _rng.Next(100);
        var names = m.Images.Keys.Order().ToList();
        string? pick = names.Count > 0 ? names[_rng.Next(names.Count)] : null;
        if (pick == null || (roll < 12 && names.Count < MaxImages))
        {
            string label = $"i{_nextImage++}";
            int cs = _chunkSizes[_rng.Next(_chunkSizes.Length)];
            int size = _rng.Next(1, MaxImageBytes);
            m.Images[label] = new CrashModel.Img { Data = new byte[size], ChunkSize = cs };
            await pool.CreateImageAsync("c", label, size, cs);
            m.Flushed();
            return;
        }
        var img = m.Images[pick];
        var handle = pool.OpenImage("c", pick);
        if (_overlapping && roll < 75)
        {
            roll = _rng.Next(100);
            if (roll < 12)
            {
                await handle.FlushAsync();
                m.Flushed();
                return;
            }
            // Into the first two chunks, often block-aligned: in place while no flush covers the chunk.
            bool durable = roll < 22;
            int span = Math.Min(img.Data.Length, 2 * img.ChunkSize);
            int len = _rng.Next(2) == 0 ? Math.Min(span, 4096) : _rng.Next(1, span + 1);
            int off = _rng.Next(2) == 0 ? _rng.Next(0, (span - len) / 4096 + 1) * 4096 : _rng.Next(0, span - len + 1);
            await WriteRandomAsync(m, img, handle, off, len, durable);
            return;
        }
        if (roll < 55)
        {
            // Half the writes are writeback (NBD without FUA): lost or kept chunk by chunk until a flush.
            bool durable = _rng.Next(2) == 0;
            int len = _rng.Next(1, Math.Min(img.Data.Length, img.ChunkSize * 5 / 2) + 1);
            int off = _rng.Next(0, img.Data.Length - len + 1);
            await WriteRandomAsync(m, img, handle, off, len, durable);
        }
        else if (roll < 65)
        {
            // Concurrent writes to distinct chunks: they share group commits.
            int chunks = (img.Data.Length + img.ChunkSize - 1) / img.ChunkSize;
            var picked = Enumerable.Range(0, chunks).OrderBy(_ => _rng.Next()).Take(_rng.Next(2, 5)).ToList();
            var tasks = new List<Task>();
            bool durable = _rng.Next(2) == 0;
            if (!durable)
                img.Unflushed.Add((byte[])img.Data.Clone());
            foreach (int c in picked)
            {
                int start = c * img.ChunkSize, end = Math.Min(img.Data.Length, start + img.ChunkSize);
                int off = _rng.Next(start, end);
                int len = _rng.Next(1, end - off + 1);
                var data = new byte[len];
                _rng.NextBytes(data);
                data.CopyTo(img.Data, off);
                tasks.Add(handle.WriteAsync(off, data, durable).AsTask());
            }
            await Task.WhenAll(tasks);
            if (durable)
                m.Flushed();
        }
        else if (roll < 75)
        {
            int len = _rng.Next(1, img.Data.Length + 1);
            int off = _rng.Next(0, img.Data.Length - len + 1);
            Array.Clear(img.Data, off, len);
            await handle.TrimAsync(off, len);
        }
        else if (roll < 82)
        {
            int size = _rng.Next(1, MaxImageBytes);
            var data = new byte[size];
            img.Data.AsSpan(0, Math.Min(size, img.Data.Length)).CopyTo(data);
            img.Data = data;
            await handle.ResizeAsync(size, allowShrink: true);
            m.Flushed();
        }
        else if (roll < 87)
        {
            m.Images.Remove(pick);
            await pool.RemoveImageAsync("c", pick);
        }
        else if (roll < 91 && _targets - pool.ExcludedTargets.Count > 1)
        {
            // (An injected write error may have made a target leave the pool: rf 2 then needs another.)
            // On a pool with data a job gives every chunk the new count of copies; the operation is
            // done when the job is (rf says the new value from then on).
            m.Rf = m.Rf == "1" ? "2" : "1";
            await pool.SetPropertyAsync("rf", m.Rf);
            await pool.WaitForJobAsync();
            if (pool.JobStatus is { Kind: Pool.ReplicateJob, State: not "completed" } j)
                throw new IOException($"the rf change job {j.State}: {j.Reason}");
        }
        else if (roll < 96)
        {
            string c = $"x{_rng.Next(3)}";
            if (m.Containers.Remove(c))
            {
                foreach (var k in m.ContainerProps.Keys.Where(k => k.StartsWith(c + "/", StringComparison.Ordinal)).ToList())
                    m.ContainerProps.Remove(k);
                await pool.DestroyContainerAsync(c);
            }
            else
            {
                m.Containers.Add(c);
                await pool.CreateContainerAsync(c);
            }
        }
        else if (roll < 98)
        {
            await handle.FlushAsync();
            m.Flushed();
        }
        else
        {
            string value = $"v{_rng.Next(1000)}";
            m.ContainerProps["c/user.note"] = value;
            await pool.SetContainerPropertyAsync("c", "user.note", value);
        }
    }

    /// <summary>Writes <paramref name="len"/> random bytes at <paramref name="off"/> and records them in the model (writeback: kept or lost until a flush).</summary>
    private async Task WriteRandomAsync(CrashModel m, CrashModel.Img img, Image handle, int off, int len, bool durable)
    {
        var data = new byte[len];
        _rng.NextBytes(data);
        await m.WriteAsync(img, handle, off, data, durable);
    }

    /// <summary>The recovered pool's contents as the next round's model (already checked against before/after).</summary>
    private static async Task<CrashModel> ReadBackAsync(Pool pool, CrashModel before, CrashModel? after)
    {
        var m = new CrashModel
        {
            Rf = pool.GetProperty("rf"),
            Containers = pool.ListContainers().Select(c => c.Label).ToHashSet(),
        };
        foreach (var key in before.ContainerProps.Keys.Union(after?.ContainerProps.Keys ?? Enumerable.Empty<string>()))
        {
            var parts = key.Split('/');
            if (!m.Containers.Contains(parts[0]))
                continue;
            try
            {
                m.ContainerProps[key] = pool.GetContainerProperty(parts[0], parts[1]);
            }
            catch (Engine.Store.NotFoundException)
            {
            }
        }
        foreach (var info in pool.ListImages("c"))
        {
            var data = new byte[info.Size];
            await pool.OpenImage("c", info.Label).ReadAsync(0, data);
            m.Images[info.Label] = new CrashModel.Img { Data = data, ChunkSize = info.ChunkSize };
        }
        return m;
    }
}
