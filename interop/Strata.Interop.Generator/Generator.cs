using System.Text;

namespace Strata.Interop.Generator;

/// <summary>The generator's API: header in, C# text out, plus the drift check.</summary>
internal static class BindingGenerator
{
    /// <summary>Generates the C# mirror of headerPath; the banner names it relative to repoRoot.</summary>
    public static string Generate(string headerPath, string repoRoot) =>
        Emitter.Emit(HeaderReader.Read(headerPath, repoRoot), EmitOptions.For(headerPath));

    /// <summary>Null when expected equals actual, else a unified-style diff of the first changed lines.</summary>
    public static string? Diff(string expected, string actual, int maxLines = 12)
    {
        if (expected == actual)
            return null;
        var a = expected.Split('\n');
        var b = actual.Split('\n');
        // Trim the common ends, then run a plain LCS on the middle (small for a header's mirror).
        int head = 0;
        while (head < a.Length && head < b.Length && a[head] == b[head])
            head++;
        int tail = 0;
        while (tail < a.Length - head && tail < b.Length - head && a[^(tail + 1)] == b[^(tail + 1)])
            tail++;
        int n = a.Length - head - tail, m = b.Length - head - tail;
        var edits = (long)n * m <= 4_000_000 ? Lcs(a.AsSpan(head, n), b.AsSpan(head, m)) : null;

        var sb = new StringBuilder($"@@ -{head + 1} +{head + 1} @@ first difference at line {head + 1}\n");
        for (int k = Math.Max(0, head - 2); k < head; k++)
            sb.Append(' ').Append(a[k]).Append('\n');
        int shown = 0, i = 0, j = 0;
        if (edits is null)
        {
            for (; i < n && shown < maxLines; i++, shown++) sb.Append('-').Append(a[head + i]).Append('\n');
            for (; j < m && shown < maxLines; j++, shown++) sb.Append('+').Append(b[head + j]).Append('\n');
        }
        else
        {
            // The first hunk: changes until a run of three unchanged lines, with two of context.
            int run = 0, k = 0;
            for (; k < edits.Count && shown < maxLines; k++)
            {
                var (op, line) = edits[k];
                run = op == ' ' ? run + 1 : 0;
                if (run > 2)
                    break;
                shown += op == ' ' ? 0 : 1;
                sb.Append(op).Append(line).Append('\n');
            }
            int more = edits.Skip(k).Count(e => e.Op != ' ');
            if (more > 0)
                sb.Append($"... and {more} more changed line(s)\n");
            else
                for (int t = a.Length - tail; t < a.Length && t < a.Length - tail + 2 - run; t++)
                    sb.Append(' ').Append(a[t]).Append('\n');
        }
        return sb.ToString();
    }

    // Longest common subsequence edit script: (' ', line) kept, ('-', line) removed, ('+', line) added.
    private static List<(char Op, string Line)> Lcs(ReadOnlySpan<string> a, ReadOnlySpan<string> b)
    {
        var len = new int[a.Length + 1, b.Length + 1];
        for (int i = a.Length - 1; i >= 0; i--)
            for (int j = b.Length - 1; j >= 0; j--)
                len[i, j] = a[i] == b[j] ? len[i + 1, j + 1] + 1 : Math.Max(len[i + 1, j], len[i, j + 1]);
        var edits = new List<(char, string)>();
        int x = 0, y = 0;
        while (x < a.Length || y < b.Length)
        {
            if (x < a.Length && y < b.Length && a[x] == b[y]) { edits.Add((' ', a[x])); x++; y++; }
            else if (y == b.Length || (x < a.Length && len[x + 1, y] >= len[x, y + 1])) edits.Add(('-', a[x++]));
            else edits.Add(('+', b[y++]));
        }
        return edits;
    }
}
