namespace Strata.Fuzz;

/// <summary>What the store's and the NBD server's corpus tests share (this file is linked into both projects).</summary>
internal static class CorpusRunner
{
    public static void Run(string harness, FuzzTarget target)
    {
        var files = Directory.GetFiles(Path.Combine(AppContext.BaseDirectory, "corpus", harness)).Order(StringComparer.Ordinal).ToList();
        Assert.IsTrue(files.Any(f => Path.GetFileName(f).StartsWith("valid-", StringComparison.Ordinal)), $"no valid-* seed for {harness}");
        var failures = new List<string>();
        foreach (var file in files)
        {
            string name = Path.GetFileName(file);
            string outcome;
            try
            {
                outcome = target(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                failures.Add($"{name}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
                continue;
            }
            var lines = outcome.Split('\n');
            if (name.StartsWith("valid-", StringComparison.Ordinal) && lines.FirstOrDefault(IsRefusal) is { } refusal)
                failures.Add($"{name}: a seed made by the encoders did not decode: {refusal}");
        }
        Assert.AreEqual(0, failures.Count, $"{harness}: {files.Count} file(s), {failures.Count} failed:\n{string.Join("\n", failures)}");
    }

    private static bool IsRefusal(string line) =>
        line.StartsWith("refused:", StringComparison.Ordinal) || line.StartsWith("invalid:", StringComparison.Ordinal) || line.StartsWith("damaged:", StringComparison.Ordinal);
}
