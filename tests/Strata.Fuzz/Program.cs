using SharpFuzz;
using Strata.Fuzz;

// Strata.Fuzz HARNESS          run under afl-fuzz (fuzz.sh), persistent mode, one input per execution
// Strata.Fuzz HARNESS FILE...  run files through the harness once and print what came of each
// Strata.Fuzz seeds DIR        write the seed corpus made by the real encoders into DIR/<harness>/
var harnesses = StoreHarnesses.All.Concat(NbdHarnesses.All).ToDictionary(kv => kv.Key, kv => kv.Value);
if (args.Length == 2 && args[0] == "seeds")
{
    foreach (var (harness, name, bytes) in Seeds.All())
    {
        var dir = Path.Combine(args[1], harness);
        Directory.CreateDirectory(dir);
        File.WriteAllBytes(Path.Combine(dir, name), bytes);
    }
    return 0;
}
if (args.Length == 0 || !harnesses.TryGetValue(args[0], out var target))
{
    Console.Error.WriteLine($"usage: Strata.Fuzz HARNESS [FILE...] | seeds DIR; harnesses: {string.Join(", ", harnesses.Keys)}");
    return 2;
}
if (args.Length > 1)
{
    foreach (var file in args.Skip(1))
        Console.WriteLine($"{file}:\n{target(File.ReadAllBytes(file))}");
    return 0;
}
var buffer = new MemoryStream();
Fuzzer.Run(stream =>
{
    buffer.SetLength(0);
    stream.CopyTo(buffer);
    target(buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
});
return 0;
