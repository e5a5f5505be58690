using System.Globalization;

namespace Strata.Perf.Common;

/// <summary>An expected operator error (bad option, missing tool): printed as one line.</summary>
public sealed class PerfUsageException(string message) : Exception(message);

/// <summary>
/// Minimal "--name value" / "--flag" parser shared by the subcommands; every
/// option is looked up by name, and <see cref="ThrowIfUnused"/> rejects typos.
/// </summary>
public sealed class CommandLine
{
    private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public static CommandLine Parse(string[] args)
    {
        var cl = new CommandLine();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
                throw new PerfUsageException($"unexpected argument '{a}'");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                value = name[(eq + 1)..];
                name = name[..eq];
            }
            else if (i + 1 < args.Length && !args[i + 1].StartsWith("--", StringComparison.Ordinal))
            {
                value = args[++i];
            }
            cl._options[name] = value;
        }
        return cl;
    }

    public bool Has(string name)
    {
        _used.Add(name);
        return _options.ContainsKey(name);
    }

    public bool Flag(string name)
    {
        if (!Has(name))
            return false;
        string? v = _options[name];
        return v is null or "1" or "true" or "yes" or "on";
    }

    public string? String(string name)
    {
        if (!Has(name))
            return null;
        return _options[name] ?? throw new PerfUsageException($"--{name} needs a value");
    }

    public int Int(string name, int fallback)
    {
        string? s = String(name);
        if (s is null)
            return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < 0)
            throw new PerfUsageException($"--{name}: '{s}' is not a non-negative integer");
        return v;
    }

    /// <summary>An integer that may be negative (e.g. --busy-poll-us -1).</summary>
    public int SignedInt(string name, int fallback)
    {
        string? s = String(name);
        if (s is null)
            return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new PerfUsageException($"--{name}: '{s}' is not an integer");
        return v;
    }

    public double Seconds(string name, double fallback)
    {
        string? s = String(name);
        if (s is null)
            return fallback;
        s = s.TrimEnd('s');
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v <= 0)
            throw new PerfUsageException($"--{name}: '{s}' is not a positive number of seconds");
        return v;
    }

    public long Bytes(string name, long fallback)
    {
        string? s = String(name);
        return s is null ? fallback : ParseBytes(s, name);
    }

    /// <summary>Parses 4096, 4K, 1M, 2G, 1T (binary multiples).</summary>
    public static long ParseBytes(string s, string what)
    {
        string t = s.Trim().ToUpperInvariant();
        if (t.EndsWith("IB", StringComparison.Ordinal))
            t = t[..^2];
        else if (t.EndsWith('B'))
            t = t[..^1];
        long mult = 1;
        if (t.Length > 0 && "KMGT".Contains(t[^1]))
        {
            mult = t[^1] switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1L << 40 };
            t = t[..^1];
        }
        if (!long.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) || v <= 0)
            throw new PerfUsageException($"--{what}: '{s}' is not a size (e.g. 2G, 512M)");
        return checked(v * mult);
    }

    /// <summary>Rejects options no subcommand looked at (typos).</summary>
    public void ThrowIfUnused()
    {
        foreach (var k in _options.Keys)
            if (!_used.Contains(k))
                throw new PerfUsageException($"unknown option --{k}");
    }
}
