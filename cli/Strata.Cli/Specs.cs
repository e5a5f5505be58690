using System.CommandLine;
using Strata.Engine.Store;

namespace Strata.Cli;

/// <summary>
/// The positional arguments of a command that names a container or an image, accepted in two
/// forms: separate words (`POOL CONT IMAGE`) or one spec (`POOL/CONT/IMAGE`, as rbd users type
/// it and as NBD export names are shown). Labels never contain '/', so the split is unambiguous.
/// Arguments after the spec (a property name and value) follow in either form.
/// </summary>
public sealed class SpecArgs
{
    private static readonly string[] PartNames = ["POOL", "CONT", "IMAGE"];

    private readonly Argument<string?>[] _args;
    private readonly int _parts;
    private readonly int _requiredExtras;
    private readonly string _what;

    private SpecArgs(Argument<string?>[] args, int parts, int requiredExtras, string what)
    {
        _args = args;
        _parts = parts;
        _requiredExtras = requiredExtras;
        _what = what;
    }

    private string Slashed => string.Join('/', PartNames.Take(_parts));

    private string Spaced => string.Join(' ', PartNames.Take(_parts));

    /// <summary>
    /// Adds the arguments to <paramref name="cmd"/>: the spec's parts (2: pool/cont, 3: pool/cont/image),
    /// then <paramref name="extras"/> (name, description, required). Every argument is optional to the
    /// parser; <see cref="Get"/> checks the counts and prints one line when they do not fit.
    /// </summary>
    public static SpecArgs Add(Command cmd, int parts, params (string Name, string Description, bool Required)[] extras)
    {
        var args = new List<Argument<string?>>
        {
            new("pool") { Description = $"Pool label, or the whole spec {string.Join('/', PartNames.Take(parts))}", Arity = ArgumentArity.ExactlyOne },
            new("cont") { Description = "Container label (when the pool is given alone)", Arity = ArgumentArity.ZeroOrOne },
        };
        if (parts == 3)
            args.Add(new("image") { Description = "Image label (when the pool is given alone)", Arity = ArgumentArity.ZeroOrOne });
        foreach (var (name, description, _) in extras)
            args.Add(new(name) { Description = description, Arity = ArgumentArity.ZeroOrOne });
        foreach (var a in args)
            cmd.Arguments.Add(a);
        return new SpecArgs([.. args], parts, extras.Count(e => e.Required), parts == 3 ? "an image" : "a container");
    }

    /// <summary>The spec's parts (pool, cont[, image]) and the arguments after it (null where not given).</summary>
    public (string[] Spec, string?[] Extras) Get(ParseResult parse)
    {
        var words = _args.Select(a => parse.GetValue(a)).Where(v => v != null).Select(v => v!).ToList();
        string[] spec;
        List<string> rest;
        if (words.Count > 0 && words[0].Contains('/'))
        {
            spec = words[0].Split('/');
            if (spec.Length != _parts)
                throw new CliException(ExitCodes.Usage, $"{UserText.Quote(words[0])} is not {_what} spec: it has {spec.Length} part(s), {_what} is {Slashed}");
            if (spec.Any(p => p.Length == 0))
                throw new CliException(ExitCodes.Usage, $"{UserText.Quote(words[0])} is not {_what} spec: it has an empty part ({Slashed})");
            rest = words.Skip(1).ToList();
        }
        else
        {
            if (words.Take(_parts).FirstOrDefault(p => p.Contains('/')) is { } mixed)
                throw new CliException(ExitCodes.Usage, $"{UserText.Quote(mixed)} mixes the two forms: give {Slashed} as one word or {Spaced} as separate words");
            if (words.Count < _parts)
                throw new CliException(ExitCodes.Usage, $"{_what} is given as {Slashed} or {Spaced}; got {UserText.Quote(string.Join(' ', words))}");
            spec = words.Take(_parts).ToArray();
            rest = words.Skip(_parts).ToList();
        }
        int extras = _args.Length - (_parts == 3 ? 3 : 2);
        if (rest.Count < _requiredExtras)
            throw new CliException(ExitCodes.Usage, $"missing argument(s) after {_what}: {string.Join(' ', _args.Skip(_args.Length - extras).Take(_requiredExtras).Select(a => a.Name.ToUpperInvariant()))}");
        if (rest.Count > extras)
            throw new CliException(ExitCodes.Usage, $"unexpected argument {UserText.Quote(rest[extras])}");
        var result = new string?[extras];
        for (int i = 0; i < rest.Count; i++)
            result[i] = rest[i];
        return (spec, result);
    }
}
