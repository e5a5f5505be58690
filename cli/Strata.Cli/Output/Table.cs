using System.Globalization;
using System.Text;

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

    public static long Parse(string s, string what)
    {
        string t = s.Trim();
        long mult = 1;
        string num = t;
        string lower = t.ToLowerInvariant();
        foreach (var (suffix, m) in new (string, long)[]
                 {
                     ("tib", 1L << 40), ("gib", 1L << 30), ("mib", 1L << 20), ("kib", 1L << 10),
                     ("tb", 1L << 40), ("gb", 1L << 30), ("mb", 1L << 20), ("kb", 1L << 10),
                     ("t", 1L << 40), ("g", 1L << 30), ("m", 1L << 20), ("k", 1L << 10), ("b", 1),
                 })
        {
            if (lower.EndsWith(suffix, StringComparison.Ordinal))
            {
                mult = m;
                num = t[..^suffix.Length];
                break;
            }
        }
        if (!double.TryParse(num, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v < 0 || v * mult > long.MaxValue)
            throw new CliException(ExitCodes.Usage, $"{what} '{s}' is not a size (use bytes or a suffix: 512M, 4G, 1T)");
        return (long)(v * mult);
    }
}
