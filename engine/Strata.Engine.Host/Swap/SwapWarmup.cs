using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Host.Swap;

/// <summary>
/// The new process of a hot swap runs the storage code once before it says hello, so the open during
/// the clients' pause does not compile it: an engine of its own on a throw-away file target in the run
/// directory (EngineService, as at start: the native device, its pollers and DMA pool, the RAS log)
/// formats it, creates a pool and writes, closes, opens it again (superblock, shard headers, checkpoint,
/// log replay) and writes, flushes and reads as NBD clients do. Measured before it existed: 550-600 ms
/// of compiling (1,450-1,600 methods) inside a 0.9-1.3 s open, on 2 loaded cores. It never stops the
/// swap: a failure is logged (1606) and the swap goes on cold.
/// </summary>
internal static class SwapWarmup
{
    public static async Task RunAsync(ResolvedConfig cfg, ILogger logger)
    {
        long started = Stopwatch.GetTimestamp();
        var jit = System.Runtime.JitInfo.GetCompilationTime();
        long methods = System.Runtime.JitInfo.GetCompiledMethodCount();
        string dir = Path.Combine(cfg.SocketDir, $"swap-warmup-{Environment.ProcessId}");
        var own = cfg with
        {
            DataDir = dir,
            Targets = [$"file:{Path.Combine(dir, "t0.img")}?create=1&size=64M"],
            RasPath = Path.Combine(dir, "events.jsonl"),
            PidFile = Path.Combine(dir, "pid"),
            SocketPath = Path.Combine(dir, "none.sock"),
        };
        try
        {
            Directory.CreateDirectory(dir);
            await ExerciseAsync(own).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            await JitSettledAsync().ConfigureAwait(false);
            Log.SwapWarmedUp(logger, Stopwatch.GetElapsedTime(started).TotalMilliseconds,
                (System.Runtime.JitInfo.GetCompilationTime() - jit).TotalMilliseconds, System.Runtime.JitInfo.GetCompiledMethodCount() - methods);
        }
        catch (Exception e) when (e is StoreException or IOException or UnauthorizedAccessException or DllNotFoundException or ConfigException)
        {
            Log.SwapWarmupFailed(logger, e.Message);
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Log.SwapWarmupFailed(logger, e.Message);
            }
        }
    }

    private static async Task ExerciseAsync(ResolvedConfig own)
    {
        var data = new byte[64 * 1024];
        Random.Shared.NextBytes(data);
        // Its logs would read as the engine's own: they go nowhere.
        var quiet = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        var svc = await EngineService.StartAsync(own, quiet).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await using (svc.ConfigureAwait(false))
        {
            var pool = await svc.Engine.CreatePoolAsync("warmup", 16L * 1024 * 1024).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            await pool.CreateContainerAsync("c").ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            await pool.CreateImageAsync("c", "i", 4L * 1024 * 1024).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
            await WriteAndReadAsync(await svc.OpenImageIoAsync("warmup", "c", "i").ConfigureAwait(ConfigureAwaitOptions.ForceYielding), data)
                .ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        }
        // Opened again as the takeover opens the real targets.
        svc = await EngineService.StartAsync(own, quiet).ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await using (svc.ConfigureAwait(false))
        {
            await WriteAndReadAsync(await svc.OpenImageIoAsync("warmup", "c", "i").ConfigureAwait(ConfigureAwaitOptions.ForceYielding), data)
                .ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        }
    }

    /// <summary>What NBD clients do: writeback writes, a flush, a durable write, reads.</summary>
    private static async Task WriteAndReadAsync(IImageIo image, byte[] data)
    {
        for (int i = 0; i < 4; i++)
            await image.WriteAsync(i * 4096L, data.AsMemory(0, 4096), durable: false).AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await image.FlushAsync().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await image.WriteAsync(1024 * 1024, data).AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        var back = new byte[data.Length];
        await image.ReadAsync(1024 * 1024, back).AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        await image.ReadAsync(0, back.AsMemory(0, 4096)).AsTask().ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
    }

    /// <summary>
    /// Methods the run called often are compiled again, optimized, on a background thread (tiered
    /// compilation) shortly after: measured, 580 ms of compiling fell into the pause of a swap that
    /// followed the run at once. Waits until no method was compiled for 200 ms (at most 3 s).
    /// </summary>
    private static async Task JitSettledAsync()
    {
        long seen = System.Runtime.JitInfo.GetCompiledMethodCount();
        for (int quiet = 0, waited = 0; quiet < 2 && waited < 30; waited++)
        {
            await Task.Delay(100).ConfigureAwait(false);
            long now = System.Runtime.JitInfo.GetCompiledMethodCount();
            quiet = now == seen ? quiet + 1 : 0;
            seen = now;
        }
    }
}
