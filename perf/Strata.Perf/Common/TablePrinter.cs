using System.Text;

namespace Strata.Perf.Common;

/// <summary>A plain text table: left-aligned first column, right-aligned numbers.</summary>
public sealed class TablePrinter(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells)
    {
        if (cells.Length != headers.Length)
            throw new ArgumentException($"row has {cells.Length} cells, table has {headers.Length} columns");
        _rows.Add(cells);
    }

    public override string ToString()
    {
        var widths = new int[headers.Length];
        for (int c = 0; c < headers.Length; c++)
            widths[c] = Math.Max(headers[c].Length, _rows.Count == 0 ? 0 : _rows.Max(r => r[c].Length));
        var sb = new StringBuilder();
        void Line(string[] cells)
        {
            for (int c = 0; c < cells.Length; c++)
            {
                if (c > 0)
                    sb.Append("  ");
                sb.Append(c == 0 ? cells[c].PadRight(widths[c]) : cells[c].PadLeft(widths[c]));
            }
            sb.AppendLine();
        }
        Line(headers);
        sb.AppendLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (var r in _rows)
            Line(r);
        return sb.ToString();
    }

    public static string Latency(double ns) => ns switch
    {
        <= 0 => "-",
        < 1_000 => $"{ns:F0}ns",
        < 1_000_000 => $"{ns / 1e3:F1}us",
        _ => $"{ns / 1e6:F2}ms",
    };

    public static string Ratio(double r) => double.IsFinite(r) && r > 0 ? $"{r:F2}x" : "-";
}
