using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Strata.Engine.Control;
using Strata.Engine.Store;

namespace Strata.Engine.Host;

/// <summary>Maps domain exceptions to an HTTP status and the one-line JSON error body; nothing else builds error responses.</summary>
internal static class ApiErrors
{
    public static (int Status, string Code) Map(Exception e) => e switch
    {
        NotFoundException => (StatusCodes.Status404NotFound, ErrorCodes.NotFound),
        DuplicateLabelException => (StatusCodes.Status409Conflict, ErrorCodes.AlreadyExists),
        BusyException => (StatusCodes.Status409Conflict, ErrorCodes.Busy),
        PoolBusyException => (StatusCodes.Status503ServiceUnavailable, ErrorCodes.Busy),
        InvalidRequestException => (StatusCodes.Status400BadRequest, ErrorCodes.Invalid),
        NoSpaceException => (StatusCodes.Status507InsufficientStorage, ErrorCodes.NoSpace),
        PoolReadOnlyException => (StatusCodes.Status409Conflict, ErrorCodes.ReadOnly),
        IncompatibleLayoutException => (StatusCodes.Status409Conflict, ErrorCodes.IncompatibleLayout),
        DataIntegrityException => (StatusCodes.Status500InternalServerError, ErrorCodes.DataIntegrity),
        CorruptMetadataException => (StatusCodes.Status500InternalServerError, ErrorCodes.Corrupt),
        StoreException or IOException when e is not BadHttpRequestException => (StatusCodes.Status500InternalServerError, ErrorCodes.Io),
        BadHttpRequestException b => (b.StatusCode, b.StatusCode == StatusCodes.Status413PayloadTooLarge ? ErrorCodes.TooLarge : ErrorCodes.Invalid),
        JsonException or ApiRequestException => (StatusCodes.Status400BadRequest, ErrorCodes.Invalid),
        ObjectDisposedException => (StatusCodes.Status503ServiceUnavailable, ErrorCodes.Busy),
        _ => (StatusCodes.Status500InternalServerError, ErrorCodes.Internal),
    };

    public static async Task Middleware(HttpContext ctx, RequestDelegate next, ILogger logger)
    {
        try
        {
            await next(ctx);
        }
        catch (Exception e) when (!ctx.Response.HasStarted && !ctx.RequestAborted.IsCancellationRequested)
        {
            var (status, code) = Map(e);
            string message = e.Message;
            if (code == ErrorCodes.Internal)
                Log.RequestFailed(logger, e, ctx.Request.Method, ctx.Request.Path);
            if (e is BadHttpRequestException && status == StatusCodes.Status413PayloadTooLarge)
                message = $"request body is larger than the engine's limit of {Api.MaxBodyBytes} bytes";
            else if (e is BadHttpRequestException && QueryBindingMessage(e.Message) is { } binding)
                message = binding;
            else if (e is JsonException)
                message = $"malformed JSON request: {e.Message.Split('\n')[0]}";
            await Write(ctx, status, code, UserText.Cap(OneLine(message)));
        }
    }

    private static readonly System.Text.RegularExpressions.Regex BindFailed = new(
        "^Failed to bind parameter \"(?<type>[^ \"]+) (?<name>[^\"]+)\" from \"(?<value>.*)\"\\.$");

    private static readonly System.Text.RegularExpressions.Regex BindMissing = new(
        "^Required parameter \"(?<type>[^ \"]+) (?<name>[^\"]+)\" was not provided from query string\\.$");

    /// <summary>
    /// ASP.NET's binding errors name .NET types ("Failed to bind parameter "long offset" from "abc"");
    /// say what the caller sent and what is expected instead. Null for any other message.
    /// </summary>
    internal static string? QueryBindingMessage(string framework)
    {
        static string Expected(string type) => type.Replace("Nullable<", "", StringComparison.Ordinal).TrimEnd('>') switch
        {
            "long" or "int" or "uint" or "ulong" or "Int64" or "Int32" or "UInt32" or "UInt64" => "a whole number",
            "bool" or "Boolean" => "true or false",
            _ => "a valid value",
        };
        var m = BindFailed.Match(framework);
        if (m.Success)
            return $"query parameter '{m.Groups["name"].Value}' is {UserText.Quote(m.Groups["value"].Value)}; expected {Expected(m.Groups["type"].Value)}";
        m = BindMissing.Match(framework);
        if (m.Success)
            return $"query parameter '{m.Groups["name"].Value}' is required ({Expected(m.Groups["type"].Value)})";
        return null;
    }

    public static Task Write(HttpContext ctx, int status, string code, string message)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(new ErrorBody(message, code), Api.Json);
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();
}

/// <summary>A malformed request found by a handler (missing query parameter, bad number).</summary>
internal sealed class ApiRequestException(string message) : Exception(message);
