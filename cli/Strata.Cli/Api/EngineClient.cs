using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using Strata.Engine.Control;

namespace Strata.Cli.Api;

/// <summary>HTTP/1.1 + JSON over the engine's Unix socket. Every failure becomes a <see cref="CliException"/> with its exit code.</summary>
public sealed class EngineClient : IDisposable
{
    private readonly HttpClient _http;

    public EngineClient(string socketPath, TimeSpan? timeout = null)
    {
        SocketPath = socketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await s.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(s, ownsSocket: true);
                }
                catch
                {
                    s.Dispose();
                    throw;
                }
            },
            PooledConnectionLifetime = TimeSpan.FromMinutes(1),
        };
        _http = new HttpClient(handler) { BaseAddress = new Uri("http://strata-engine/"), Timeout = timeout ?? TimeSpan.FromSeconds(120) };
        _http.DefaultRequestHeaders.Add(Strata.Engine.Control.Api.VersionHeader, ClientApiVersion.ToString());
    }

    public string SocketPath { get; }

    /// <summary>The API version this CLI speaks; STRATA_API_VERSION overrides it (tests of the version check).</summary>
    public static int ClientApiVersion =>
        int.TryParse(Environment.GetEnvironmentVariable("STRATA_API_VERSION"), out int v) ? v : Strata.Engine.Control.Api.Version;

    private string Route(string path) => $"v{ClientApiVersion}/{path}";

    public Task<T> GetAsync<T>(string path) => SendJsonAsync<T>(HttpMethod.Get, path, null);

    public Task<T> PostAsync<T>(string path, object? body) => SendJsonAsync<T>(HttpMethod.Post, path, body);

    public Task<T> PutAsync<T>(string path, object? body) => SendJsonAsync<T>(HttpMethod.Put, path, body);

    public async Task DeleteAsync(string path)
    {
        using var resp = await SendAsync(new HttpRequestMessage(HttpMethod.Delete, Route(path)), HttpCompletionOption.ResponseContentRead);
    }

    public async Task<T> SendJsonAsync<T>(HttpMethod method, string path, object? body)
    {
        var req = new HttpRequestMessage(method, Route(path));
        if (body != null)
            req.Content = JsonContent.Create(body, body.GetType(), options: Strata.Engine.Control.Api.Json);
        using var resp = await SendAsync(req, HttpCompletionOption.ResponseContentRead);
        return await resp.Content.ReadFromJsonAsync<T>(Strata.Engine.Control.Api.Json)
            ?? throw new CliException(ExitCodes.Failed, "the engine sent an empty response");
    }

    public async Task<byte[]> GetBytesAsync(string path)
    {
        using var resp = await SendAsync(new HttpRequestMessage(HttpMethod.Get, Route(path)), HttpCompletionOption.ResponseContentRead);
        return await resp.Content.ReadAsByteArrayAsync();
    }

    public async Task<T> PutBytesAsync<T>(string path, ReadOnlyMemory<byte> data)
    {
        var req = new HttpRequestMessage(HttpMethod.Put, Route(path)) { Content = new ReadOnlyMemoryContent(data) };
        req.Content.Headers.ContentType = new("application/octet-stream");
        using var resp = await SendAsync(req, HttpCompletionOption.ResponseContentRead);
        return (await resp.Content.ReadFromJsonAsync<T>(Strata.Engine.Control.Api.Json))!;
    }

    /// <summary>A streaming GET (NDJSON); the caller disposes the response.</summary>
    public Task<HttpResponseMessage> GetStreamAsync(string path, CancellationToken ct) =>
        SendAsync(new HttpRequestMessage(HttpMethod.Get, Route(path)), HttpCompletionOption.ResponseHeadersRead, ct);

    /// <summary>Unversioned routes (the Prometheus text at /metrics).</summary>
    public async Task<string> GetTextAsync(string absolutePath)
    {
        using var resp = await SendAsync(new HttpRequestMessage(HttpMethod.Get, absolutePath.TrimStart('/')), HttpCompletionOption.ResponseContentRead);
        return await resp.Content.ReadAsStringAsync();
    }

    private async Task<HttpResponseMessage> SendAsync(HttpRequestMessage req, HttpCompletionOption completion, CancellationToken ct = default)
    {
        HttpResponseMessage resp;
        try
        {
            resp = await _http.SendAsync(req, completion, ct);
        }
        catch (HttpRequestException e)
        {
            throw Unreachable(e);
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new CliException(ExitCodes.Unreachable, $"the engine at {SocketPath} did not answer within {_http.Timeout.TotalSeconds:0} s");
        }
        if (resp.IsSuccessStatusCode)
        {
            if (!resp.Headers.Contains(Strata.Engine.Control.Api.VersionHeader))
                throw new CliException(ExitCodes.VersionMismatch, $"{SocketPath} does not answer like a strata engine (no {Strata.Engine.Control.Api.VersionHeader} header)");
            return resp;
        }
        using (resp)
            throw await ErrorAsync(resp);
    }

    private async Task<CliException> ErrorAsync(HttpResponseMessage resp)
    {
        ErrorBody? body = null;
        try
        {
            body = await resp.Content.ReadFromJsonAsync<ErrorBody>(Strata.Engine.Control.Api.Json);
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or HttpRequestException)
        {
        }
        string engineVersion = resp.Headers.TryGetValues(Strata.Engine.Control.Api.VersionHeader, out var v) ? v.First() : "?";
        if (body == null)
        {
            // No JSON error: an engine too old or too new to know this route, or a non-strata server.
            return resp.StatusCode == HttpStatusCode.NotFound && engineVersion != ClientApiVersion.ToString()
                ? new CliException(ExitCodes.VersionMismatch, $"the engine speaks control API v{engineVersion}, this CLI v{ClientApiVersion}; upgrade the older of the two")
                : new CliException(ExitCodes.Failed, $"the engine answered {(int)resp.StatusCode} {resp.ReasonPhrase}");
        }
        int code = body.Code switch
        {
            ErrorCodes.NotFound => ExitCodes.NotFound,
            ErrorCodes.AlreadyExists or ErrorCodes.Busy => ExitCodes.Conflict,
            ErrorCodes.Invalid or ErrorCodes.TooLarge => ExitCodes.Usage,
            ErrorCodes.VersionMismatch => ExitCodes.VersionMismatch,
            ErrorCodes.PermissionDenied => ExitCodes.PermissionDenied,
            _ => ExitCodes.Failed,
        };
        return new CliException(code, body.Error);
    }

    private CliException Unreachable(HttpRequestException e)
    {
        var se = e.InnerException as SocketException ?? e.InnerException?.InnerException as SocketException;
        // Kestrel closes a connection over control.max_connections as soon as it accepts it, before reading
        // the request: the client sees a broken pipe, a reset, or a response that ended before it began.
        if (se?.SocketErrorCode is SocketError.Shutdown or SocketError.ConnectionReset || (se == null && e.HttpRequestError == HttpRequestError.ResponseEnded))
            return new CliException(ExitCodes.Unreachable,
                $"the engine at {SocketPath} closed the connection without answering (at its connection limit, control.max_connections? retry in a moment)");
        return se?.SocketErrorCode switch
        {
            SocketError.AccessDenied => new CliException(ExitCodes.PermissionDenied,
                $"permission denied on {SocketPath}: the socket directory admits only the engine's user and its admin group"),
            SocketError.AddressNotAvailable or SocketError.ConnectionRefused => new CliException(ExitCodes.Unreachable,
                $"no engine is listening on {SocketPath} (is strata-engine running? use --socket, STRATA_SOCKET or --data-dir)"),
            _ when !File.Exists(SocketPath) && se != null => new CliException(ExitCodes.Unreachable,
                $"no engine socket at {SocketPath} (is strata-engine running? use --socket, STRATA_SOCKET or --data-dir)"),
            _ => new CliException(ExitCodes.Unreachable, $"the engine at {SocketPath} is not reachable: {(se?.Message ?? e.Message)}"),
        };
    }

    public void Dispose() => _http.Dispose();
}
