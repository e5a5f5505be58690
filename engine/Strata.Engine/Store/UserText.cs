namespace Strata.Engine.Store;

/// <summary>
/// User input quoted in an error message. Long input is cut: a 900 KB label must not come back
/// whole in a one-line error (nor fill a log); the length says how much was sent.
/// </summary>
public static class UserText
{
    /// <summary>Characters of user input an error message quotes.</summary>
    public const int MaxQuoted = 64;

    /// <summary>'text', or 'first 64 characters...' (N characters).</summary>
    public static string Quote(string? text)
    {
        text ??= "";
        return text.Length <= MaxQuoted ? $"'{text}'" : $"'{text[..MaxQuoted]}...' ({text.Length} characters)";
    }

    /// <summary>A whole message cut to a length a terminal line and a log hold (the last line of defence for input quoted without <see cref="Quote"/>).</summary>
    public static string Cap(string message, int max = 1024) =>
        message.Length <= max ? message : $"{message[..max]}... ({message.Length} characters)";
}
