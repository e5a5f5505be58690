using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>
/// The pool property `migrate_rate`: bytes per second a migration may write (0: unthrottled), as
/// a byte count or with a binary suffix (100M, 1.5G, 512KiB), stored as the byte count; or
/// <see cref="Auto"/>, the default: <see cref="AutoBytes"/> while clients do I/O on the pool (any
/// in the last <see cref="ClientWindow"/>), unthrottled while they do none (docs/migration.md,
/// "The throttle's default").
/// </summary>
public static class MigrateRate
{
    public const string Property = "migrate_rate";

    /// <summary>The default: throttled while clients are active, unthrottled while they are idle.</summary>
    public const string Auto = "auto";

    /// <summary>
    /// What <see cref="Auto"/> allows while clients do I/O. Measured on the 2-vCPU VM (perf migrate
    /// --latency --size 4G --data 2G: 8 writers of 4 KiB, the placement_v2 move of 1 MiB chunks): the
    /// writers' p99 during the move is 2.9x their p99 before unthrottled, 2.7-3.0x at 256 MiB/s,
    /// 1.55-1.75x at 128 MiB/s, 1.05-1.15x at 64 MiB/s (docs/migration.md).
    /// </summary>
    public const long AutoBytes = 128L << 20;

    /// <summary>
    /// What <see cref="Auto"/> allows an image migration's copy while clients do I/O: half of
    /// <see cref="AutoBytes"/>, since those clients' writes are mirrored (each lands on the devices
    /// twice), which leaves them less room beside the copy. Measured on the 2-vCPU VM (perf
    /// image-migrate --latency --size 1G --data 256M, 4 readers and 4 writers of 4 KiB, QD 1): p99
    /// during/before 2.11-2.31x (reads and writes) at 128 MiB/s, 1.73-1.99x at 96, 1.49-1.88x at 64.
    /// </summary>
    public const long AutoImageCopyBytes = 64L << 20;

    /// <summary>Clients count as active for this long after their last I/O.</summary>
    public static readonly TimeSpan ClientWindow = TimeSpan.FromMilliseconds(200);

    /// <summary>The stored form of a value: <see cref="Auto"/>, or the byte count; anything else is refused with one line.</summary>
    public static string Normalize(string value) =>
        value.Trim().Equals(Auto, StringComparison.OrdinalIgnoreCase) ? Auto : Parse(value).ToString(CultureInfo.InvariantCulture);

    /// <summary>Parses a rate in bytes per second; anything else is refused with one line.</summary>
    public static long Parse(string value)
    {
        string t = value.Trim();
        string shown = UserText.Quote(value);
        if (t.StartsWith('-'))
            throw new InvalidRequestException($"{Property} {shown} is negative; give bytes per second (100M, 1G), 0 for unthrottled or auto");
        string num = t;
        long mult = 1;
        string lower = t.ToLowerInvariant();
        foreach (var (suffix, m) in Suffixes)
        {
            if (lower.EndsWith(suffix, StringComparison.Ordinal))
            {
                mult = m;
                num = t[..^suffix.Length];
                break;
            }
        }
        if (num.Length == 0 || num.Any(c => c is not (>= '0' and <= '9') and not '.') || num.Count(c => c == '.') > 1 || num == "."
            || !decimal.TryParse(num, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal v))
            throw new InvalidRequestException($"{Property} {shown} is not a size; give bytes per second (100M, 1G), 0 for unthrottled or auto");
        decimal bytes = v <= long.MaxValue / (decimal)mult ? decimal.Truncate(v * mult) : decimal.MaxValue;
        if (bytes > long.MaxValue)
            throw new InvalidRequestException($"{Property} {shown} is too large; at most {long.MaxValue} bytes per second");
        return (long)bytes;
    }

    private static readonly (string, long)[] Suffixes =
    [
        ("tib", 1L << 40), ("gib", 1L << 30), ("mib", 1L << 20), ("kib", 1L << 10),
        ("tb", 1L << 40), ("gb", 1L << 30), ("mb", 1L << 20), ("kb", 1L << 10),
        ("t", 1L << 40), ("g", 1L << 30), ("m", 1L << 20), ("k", 1L << 10), ("b", 1),
    ];
}

/// <summary>
/// Paces a migration to the pool's `migrate_rate`, read before every chunk, so a change applies
/// to the next chunk; a wait for its turn also ends when the property is set. A token bucket
/// with a burst of one second's worth (at least one chunk), so pauses are short and regular.
/// <paramref name="clientsToo"/>: another pool whose clients count for `auto` (an image migration's source).
/// <paramref name="auto"/>: what `auto` allows while clients are active (<see cref="MigrateRate.AutoBytes"/>,
/// or an image copy's <see cref="MigrateRate.AutoImageCopyBytes"/>).
/// </summary>
internal sealed class MigrationThrottle(Pool pool, Pool? clientsToo = null, long auto = MigrateRate.AutoBytes)
{
    private long _next = Stopwatch.GetTimestamp();

    /// <summary>Whether the loop is paced now (a rate is set, or `auto` sees clients).</summary>
    public bool Paced => pool.MigrateRateAt(Stopwatch.GetTimestamp(), clientsToo, auto) > 0;

    /// <summary>Whether <see cref="TakeAsync"/> would wait for <paramref name="bytes"/> now.</summary>
    public bool MustWait(long bytes)
    {
        long now = Stopwatch.GetTimestamp();
        return bytes > 0 && pool.MigrateRateAt(now, clientsToo, auto) > 0 && _next > now;
    }

    /// <summary>Waits until <paramref name="bytes"/> more may be written at the current rate.</summary>
    public async ValueTask TakeAsync(long bytes, CancellationToken ct)
    {
        if (bytes <= 0)
            return;
        while (true)
        {
            long now = Stopwatch.GetTimestamp();
            long rate = pool.MigrateRateAt(now, clientsToo, auto);
            if (rate <= 0)
            {
                _next = now;
                return;
            }
            // Debt is measured from max(now - 1 s, _next): unused time is credited up to one second.
            long floor = now - Stopwatch.Frequency;
            long start = Math.Max(_next, floor);
            long cost = (long)(bytes * (double)Stopwatch.Frequency / rate);
            if (start <= now)
            {
                _next = start + cost;
                return;
            }
            var changed = pool.MigrateRateChanged;
            var wait = TimeSpan.FromSeconds(Math.Min(3600, (double)(start - now) / Stopwatch.Frequency));
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var delay = Task.Delay(wait, stop.Token);
            await Task.WhenAny(delay, changed).ConfigureAwait(false);
            stop.Cancel();
            ct.ThrowIfCancellationRequested();
            if (changed.IsCompleted)
                _next = Stopwatch.GetTimestamp();
        }
    }
}
