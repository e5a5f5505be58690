using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using Strata.Engine.Nbd;
using Strata.Engine.Store;

namespace Strata.Engine.Migration;

/// <summary>
/// Where an import reads from (`--import-only --source-spec JSON`): {"type":"raw","path":...} or
/// {"type":"nbd","uri":...}. A read that fails is an IOException (the client sees EIO, the job
/// pauses); <see cref="ReconnectAsync"/> tries again.
/// </summary>
public abstract class ImportSource : IAsyncDisposable
{
    public abstract long Size { get; }

    public abstract string Describe { get; }

    public abstract Task ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default);

    /// <summary>Opens the source afresh after a failure; throws IOException while it is still gone.</summary>
    public abstract Task ReconnectAsync(CancellationToken ct);

    public abstract ValueTask DisposeAsync();

    /// <summary>Parses and opens a source spec; InvalidRequestException for a malformed spec, IOException when the source cannot be reached.</summary>
    public static async Task<ImportSource> OpenAsync(string spec, CancellationToken ct = default)
    {
        string type, target;
        try
        {
            using var doc = JsonDocument.Parse(spec);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String)
                throw new InvalidRequestException($"source spec {UserText.Quote(spec)} needs a \"type\": \"raw\" or \"nbd\"");
            type = t.GetString()!;
            string key = type switch
            {
                "raw" => "path",
                "nbd" => "uri",
                _ => throw new InvalidRequestException($"source spec type {UserText.Quote(type)} is not supported; \"raw\" (a file) or \"nbd\" (an NBD server URI)"),
            };
            if (!root.TryGetProperty(key, out var v) || v.ValueKind != JsonValueKind.String || v.GetString()!.Length == 0)
                throw new InvalidRequestException($"source spec of type {type} needs \"{key}\"");
            target = v.GetString()!;
        }
        catch (JsonException e)
        {
            throw new InvalidRequestException($"source spec is not JSON: {e.Message.Split('\n')[0]}");
        }
        if (type == "raw")
            return RawImportSource.Open(target);
        try
        {
            NbdClient.ParseUri(target);
        }
        catch (FormatException e)
        {
            throw new InvalidRequestException(e.Message);
        }
        return new NbdImportSource(target, await NbdClient.ConnectAsync(target, ct).ConfigureAwait(false));
    }
}

internal sealed class RawImportSource : ImportSource
{
    private SafeFileHandle _file;
    private readonly string _path;

    private RawImportSource(string path, SafeFileHandle file)
    {
        _path = path;
        _file = file;
        Size = RandomAccess.GetLength(file);
    }

    public static RawImportSource Open(string path)
    {
        try
        {
            return new RawImportSource(path, File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, FileOptions.Asynchronous));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"raw source {path} cannot be opened: {e.Message}", e);
        }
    }

    public override long Size { get; }

    public override string Describe => $"raw file {_path}";

    public override async Task ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        int n = 0;
        while (n < destination.Length)
        {
            int r = await RandomAccess.ReadAsync(_file, destination[n..], offset + n, ct).ConfigureAwait(false);
            if (r == 0)
            {
                destination.Span[n..].Clear(); // past the end of a file that shrank: the image's tail reads as zeros
                return;
            }
            n += r;
        }
    }

    public override Task ReconnectAsync(CancellationToken ct)
    {
        var f = Open(_path);
        var old = Interlocked.Exchange(ref _file, f._file);
        old.Dispose();
        return Task.CompletedTask;
    }

    public override ValueTask DisposeAsync()
    {
        _file.Dispose();
        return ValueTask.CompletedTask;
    }
}

internal sealed class NbdImportSource(string uri, NbdClient client) : ImportSource
{
    private NbdClient _client = client;

    public override long Size { get; } = client.Size;

    public override string Describe => $"NBD server {uri}";

    public override async Task ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        var c = Volatile.Read(ref _client);
        await c.ReadAsync(offset, destination, ct).ConfigureAwait(false);
    }

    public override async Task ReconnectAsync(CancellationToken ct)
    {
        var fresh = await NbdClient.ConnectAsync(uri, ct).ConfigureAwait(false);
        var old = Interlocked.Exchange(ref _client, fresh);
        await old.DisposeAsync().ConfigureAwait(false);
    }

    public override ValueTask DisposeAsync() => Volatile.Read(ref _client).DisposeAsync();
}
