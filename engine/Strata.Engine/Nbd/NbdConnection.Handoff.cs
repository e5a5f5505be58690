using System.Net.Sockets;

namespace Strata.Engine.Nbd;

/// <summary>
/// What a connection parked for a hot swap carries to the engine that adopts it: its id (the
/// pool's client id), the listener it came through, the export and the options it negotiated,
/// who it is, and the request bytes the client sent that were not parsed yet (the held requests;
/// the adopting engine parses them first). TLS connections are never parked (the session keys
/// cannot move): a swap is refused while one is open (docs/operations.md, "Hot swap").
/// </summary>
public sealed record NbdConnectionState(long Id, string Listener, string Export, bool Structured, string Peer, byte[] Pending);

/// <summary>Pausing at a request boundary, resuming, and adoption by a new engine process.</summary>
internal sealed partial class NbdConnection
{
    private readonly NbdConnectionState? _adopted;
    private CancellationTokenSource _pauseCts = new();
    private volatile bool _pausing;
    private bool _paused;
    /// <summary>Request bytes received but not parsed, carried into the next transmission (resume or adoption).</summary>
    private byte[]? _carry;
    private TaskCompletionSource<NbdConnectionState?>? _parked;
    private TaskCompletionSource<bool>? _decision;
    private readonly TaskCompletionSource _go = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal Socket Socket => _socket;

    internal bool IsTls => _tls != null;

    /// <summary>
    /// Parks the connection for a hot swap: it stops parsing at the next request boundary, the
    /// requests in flight finish and their replies go out, and it leaves its pool (so the pool can
    /// close). Completes with its state once parked, or null when it closed instead (a connection
    /// still in its handshake is closed: its client sees a failed connect and may retry).
    /// </summary>
    internal Task<NbdConnectionState?> PauseAsync()
    {
        var parked = new TaskCompletionSource<NbdConnectionState?>(TaskCreationOptions.RunContinuationsAsynchronously);
        _decision = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        _parked = parked;
        _pausing = true;
        if (_closed.Task.IsCompleted)
            parked.TrySetResult(null);
        else if (_export == null && _adopted == null)
            _ = RevokeAsync("the engine is being replaced (hot swap) during the handshake");
        else
            _pauseCts.Cancel();
        return parked.Task;
    }

    /// <summary>The swap failed: the parked connection reopens its export here (after the storage reopened) and goes on.</summary>
    internal void Resume() => _decision?.TrySetResult(true);

    /// <summary>The new engine took the connection: close this process's copy of the socket (marked shared: no shutdown).</summary>
    internal void HandOver() => _decision?.TrySetResult(false);

    /// <summary>An adopted connection starts reading its socket (after the old engine let go).</summary>
    internal void Go() => _go.TrySetResult();

    /// <summary>Opens an adopted connection's export and joins its pool; null when it can, else why not.</summary>
    internal async Task<string?> OpenAdoptedAsync()
    {
        var s = _adopted!;
        Peer = s.Peer;
        _structured = s.Structured;
        _carry = s.Pending;
        return await ReopenAsync(s.Export).ConfigureAwait(false);
    }

    private async Task<string?> ReopenAsync(string name)
    {
        var (export, error) = await OpenExportAsync(name).ConfigureAwait(false);
        if (export == null)
            return error;
        if (!Register(export, out string? why))
            return why;
        _export = export;
        return null;
    }

    /// <summary>Transmission until the client goes or the connection is handed over; a resumed connection goes round again.</summary>
    private async Task<string> TransmitParkingAsync()
    {
        while (true)
        {
            string why = await TransmitAsync().ConfigureAwait(false);
            if (!_paused)
                return why;
            _paused = false;
            var state = new NbdConnectionState(Id, _listener.Address.Spec, _export!.Name, _structured, Peer, _carry ?? []);
            _registration?.Dispose();
            _registration = null;
            _export = null;
            _parked?.TrySetResult(state);
            bool resume = await _decision!.Task.ConfigureAwait(false);
            _pausing = false;
            _pauseCts = new CancellationTokenSource();
            if (!resume)
                return "handed over to the new engine (hot swap)";
            if (await ReopenAsync(state.Export).ConfigureAwait(false) is { } refused)
                return $"the swap failed and export '{state.Export}' could not be reopened: {refused}";
        }
    }

    /// <summary>The receive loop stops here: what is buffered and unparsed goes with the connection.</summary>
    private string Paused()
    {
        _paused = true;
        _carry = _recv.AsSpan(_rs, _re - _rs).ToArray();
        _rs = _re = 0;
        return "paused";
    }

    /// <summary>Puts carried request bytes at the front of a fresh receive buffer.</summary>
    private void LoadCarry()
    {
        _rs = _re = 0;
        if (_carry is { Length: > 0 } c)
        {
            c.CopyTo(_recv, 0);
            _re = c.Length;
        }
        _carry = null;
    }
}
