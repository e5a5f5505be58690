namespace Strata.Cli;

/// <summary>The CLI's documented exit codes (docs/operations.md); scripts depend on them, never renumber.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    public const int Failed = 1;
    public const int Usage = 2;
    public const int Unreachable = 3;
    public const int VersionMismatch = 4;
    public const int NotFound = 5;
    public const int Conflict = 6;
    public const int PermissionDenied = 7;
}

/// <summary>An expected failure: printed as one line ("strata: ...") without a stack trace, exits with <see cref="ExitCode"/>.</summary>
public sealed class CliException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
