using System.Diagnostics;
using Strata.Engine.Device;
using Strata.Interop;

namespace Strata.Engine.Host;

/// <summary>
/// The device self-check an operator runs before trusting a target: every
/// command of the device contract once, with the data read back and compared.
/// </summary>
internal static class SelfCheck
{
    public static async Task<int> RunAsync(DirectoryInfo dataDir, int targetCount, string size, TextWriter output, CancellationToken ct)
    {
        if (targetCount is < 1 or > 64)
        {
            await Console.Error.WriteLineAsync($"strata-engine: --targets must be between 1 and 64 (got {targetCount})");
            return 2;
        }
        dataDir.Create();
        int failures = 0;
        output.WriteLine($"{"target",-8} {"device",-48} {"capacity",10} {"block",6} {"result",-8} detail");
        for (int i = 0; i < targetCount; i++)
        {
            string uri = $"file:{Path.Combine(dataDir.FullName, $"target{i}.img")}?create=1&size={size}";
            string result;
            string detail;
            string capacity = "-", block = "-";
            try
            {
                await using var dev = NativeBlockDevice.Open(uri);
                capacity = FormatBytes(dev.Geometry.Capacity);
                block = dev.Geometry.LogicalBlockSize.ToString();
                var sw = Stopwatch.StartNew();
                await CheckAsync(dev, ct);
                result = "ok";
                detail = $"{sw.Elapsed.TotalMilliseconds:F1} ms, {dev.Geometry.Kind}{((dev.Geometry.Features & DeviceFeatures.DirectIo) != 0 ? ", O_DIRECT" : "")}{(dev.RegisteredArena ? ", fixed buffers" : "")}";
            }
            catch (Exception e) when (e is IOException or DllNotFoundException or InvalidOperationException or SelfCheckException)
            {
                result = "FAILED";
                detail = e.Message;
                failures++;
            }
            output.WriteLine($"{i,-8} {Truncate(uri, 48),-48} {capacity,10} {block,6} {result,-8} {detail}");
        }
        output.WriteLine(failures == 0 ? $"self-check passed on {targetCount} target(s)" : $"self-check FAILED on {failures} of {targetCount} target(s)");
        return failures == 0 ? 0 : 1;
    }

    private static async Task CheckAsync(IBlockDevice dev, CancellationToken ct)
    {
        int bs = dev.Geometry.LogicalBlockSize;
        long last = dev.Geometry.Capacity - 16L * bs;
        using var w = dev.Buffers.Rent(16 * bs);
        using var r = dev.Buffers.Rent(16 * bs);
        // Leave user data alone: the check uses the last 16 blocks, restoring them afterwards.
        using var saved = dev.Buffers.Rent(16 * bs);
        await dev.ReadAsync(last, saved.Memory, ct);
        try
        {
            Random.Shared.NextBytes(w.Span);
            await dev.WriteAsync(last, w.Memory, WriteFlags.None, ct);
            await dev.FlushAsync(ct);
            await dev.ReadAsync(last, r.Memory, ct);
            Expect(w.Span.SequenceEqual(r.Span), "write/read round trip returned different bytes");
            await dev.WriteAsync(last, w.Memory, WriteFlags.Fua, ct);
            await dev.WriteZeroesAsync(last, 4L * bs, ct);
            await dev.TrimAsync(last + 4L * bs, 4L * bs, ct);
            await dev.ReadAsync(last, r.Memory, ct);
            Expect(!r.Span[..(8 * bs)].ContainsAnyExcept((byte)0), "write-zeroes or trim left non-zero bytes");
            Expect(r.Span[(8 * bs)..].SequenceEqual(w.Span[(8 * bs)..]), "bytes next to a trimmed range changed");
            await dev.ExecuteAsync(new[] { IoRequest.Write(last, w.Memory), IoRequest.Flush() }, ct);
            await dev.ReadAsync(last, r.Memory, ct);
            Expect(w.Span.SequenceEqual(r.Span), "a batched write read back different bytes");
        }
        finally
        {
            await dev.WriteAsync(last, saved.Memory, WriteFlags.None, ct);
            await dev.FlushAsync(ct);
        }
    }

    private static void Expect(bool condition, string what)
    {
        if (!condition)
            throw new SelfCheckException(what);
    }

    private static string FormatBytes(long b) =>
        b >= 1L << 30 ? $"{b / (double)(1L << 30):0.#} GiB" : b >= 1 << 20 ? $"{b / (double)(1 << 20):0.#} MiB" : $"{b} B";

    private static string Truncate(string s, int n) => s.Length <= n ? s : "…" + s[^(n - 1)..];

    private sealed class SelfCheckException(string message) : Exception(message);
}
