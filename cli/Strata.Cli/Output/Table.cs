using System.Globalization;
using System.Text;
using Strata.Engine.Store;

namespace Strata.Cli.Output;

/// <summary>A plain text table for people (aligned columns, a dashed rule under the header, as dmg prints).</summary>
public sealed class Table(params string[] headers)
{
    private readonly List<string[]> _rows = new();

    public Table Add(params object?[] cells)
    {
        _rows.Add(cells.Select(c => c switch
        {
            null => "-",
            IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
            _ => c.ToString() ?? "-",
        }).ToArray());
        return this;
    }

    public void Write(TextWriter w)
    {
        var widths = headers.Select((h, i) => Math.Max(h.Length, _rows.Count == 0 ? 0 : _rows.Max(r => i < r.Length ? r[i].Length : 0))).ToArray();
        w.WriteLine(Line(headers, widths));
        w.WriteLine(Line(widths.Select(n => new string('-', n)).ToArray(), widths));
        foreach (var r in _rows)
            w.WriteLine(Line(r, widths));
    }

    private static string Line(string[] cells, int[] widths)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < widths.Length; i++)
        {
            string c = i < cells.Length ? cells[i] : "";
            sb.Append(i == widths.Length - 1 ? c : c.PadRight(widths[i] + 1));
        }
        return sb.ToString().TrimEnd();
    }
}

/// <summary>Byte sizes as people write them (1G, 512M) and read them (1.0 GiB).</summary>
public static class Sizes
{
    public static string Format(long b)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = b;
        int u = 0;
        while (Math.Abs(v) >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }
        return u == 0 ? $"{b} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.0} {units[u]}");
    }

    /// <summary>
    /// Parses a size or offset exactly (decimal arithmetic, never through double): "4096", "512M",
    /// "1.5G". Signs are refused; a value that is not a whole number of bytes or does not fit in
    /// 63 bits gets a one-line error.
    /// </summary>
    public static long Parse(string s, string what)
    {
        string t = s.Trim();
        if (t.StartsWith('+') || t.StartsWith('-'))
            throw new CliException(ExitCodes.Usage, $"{what} {UserText.Quote(s)} has a sign; give the size itself (512M, 4G, 1T)");
        return ParseMagnitude(t, s, what);
    }

    /// <summary>A size that may be relative: "+128M" grows by 128 MiB (Relative = true); "64G" is absolute.</summary>
    public static (long Value, bool Relative) ParseRelative(string s, string what)
    {
        string t = s.Trim();
        if (t.StartsWith('-'))
            throw new CliException(ExitCodes.Usage, $"{what} {UserText.Quote(s)} is negative; give the new size itself (shrinking also needs --allow-shrink)");
        return t.StartsWith('+') ? (ParseMagnitude(t[1..], s, what), true) : (ParseMagnitude(t, s, what), false);
    }

    private static long ParseMagnitude(string t, string s, string what)
    {
        long mult = 1;
        string num = t;
        string lower = t.ToLowerInvariant();
        foreach (var (suffix, m) in new (string, long)[]
                 {
                     ("pib", 1L << 50), ("tib", 1L << 40), ("gib", 1L << 30), ("mib", 1L << 20), ("kib", 1L << 10),
                     ("pb", 1L << 50), ("tb", 1L << 40), ("gb", 1L << 30), ("mb", 1L << 20), ("kb", 1L << 10),
                     ("p", 1L << 50), ("t", 1L << 40), ("g", 1L << 30), ("m", 1L << 20), ("k", 1L << 10), ("b", 1),
                 })
        {
            if (lower.EndsWith(suffix, StringComparison.Ordinal))
            {
                mult = m;
                num = t[..^suffix.Length];
                break;
            }
        }
        // Digits with an optional fraction only: no exponent, sign, group separators or white space inside.
        if (num.Length == 0 || num.Any(c => c is not (>= '0' and <= '9') and not '.') || num.Count(c => c == '.') > 1 || num == "."
            || !decimal.TryParse(num, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal v))
            throw new CliException(ExitCodes.Usage, $"{what} {UserText.Quote(s)} is not a size (use bytes or a suffix: 512M, 4G, 1T)");
        decimal bytes;
        try
        {
            bytes = v * mult;
        }
        catch (OverflowException)
        {
            bytes = decimal.MaxValue;
        }
        if (bytes > long.MaxValue)
            throw new CliException(ExitCodes.Usage, $"{what} {UserText.Quote(s)} is too large: at most {long.MaxValue} bytes");
        if (bytes != decimal.Truncate(bytes))
            throw new CliException(ExitCodes.Usage, $"{what} {UserText.Quote(s)} is not a whole number of bytes");
        return (long)bytes;
    }
}
