using Strata.Engine.Nbd;
using Strata.Engine.Store;

namespace Strata.Fuzz;

/// <summary>A harness: runs one input through a decoder and says what came of it (for tests and repro).</summary>
public delegate string FuzzTarget(ReadOnlySpan<byte> input);

/// <summary>
/// What the harnesses share. A decoder may refuse its input only with a typed error, which a
/// harness turns into an outcome; any other exception escapes it, and afl-fuzz counts it as a crash
/// (FuzzCorpusTests as a failure).
/// </summary>
public static class FuzzHarness
{
    /// <summary>The errors a decoder may refuse bad bytes with: corrupt or newer on-disk metadata, a broken NBD message.</summary>
    public static bool IsTyped(Exception e) => e is CorruptMetadataException or IncompatibleLayoutException or NbdProtocolException;

    /// <summary>Runs one decoding step: its outcome, or "refused: TYPE: message" for a typed error.</summary>
    public static string Step(Func<string> step)
    {
        try
        {
            return step();
        }
        catch (Exception e) when (IsTyped(e))
        {
            return $"refused: {e.GetType().Name}: {e.Message}";
        }
    }

    /// <summary>The input cut or zero-padded to exactly <paramref name="length"/> bytes.</summary>
    public static byte[] Fit(ReadOnlySpan<byte> input, int length)
    {
        var b = new byte[length];
        input[..Math.Min(input.Length, length)].CopyTo(b);
        return b;
    }
}
