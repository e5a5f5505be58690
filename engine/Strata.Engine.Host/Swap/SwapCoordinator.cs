using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Strata.Engine.Control;
using Strata.Engine.Nbd;
using Strata.Engine.Store;
using Strata.Interop;

namespace Strata.Engine.Host.Swap;

/// <summary>A swap that failed after it began: the old engine took everything back and serves on.</summary>
internal sealed class SwapFailedException(string message) : StoreException(Interop.Errno.ECANCELED, message);

/// <summary>
/// The running engine's side of the hot swap (docs/operations.md, "Hot swap"). It listens on
/// SOCKET_DIR/swap.sock for a new engine process (`strata-engine run --takeover`, started by
/// `strata system swap --binary` or by hand), checks it (same data directory, a release that opens
/// every pool, no TLS connection, no upgrade job, one swap at a time), then: pauses NBD (no new
/// request is parsed; those in flight are answered), freezes the barrier, closes the storage (every
/// pool checkpoints), hands over the control socket, the NBD listeners and every NBD connection with
/// its state (SCM_RIGHTS), and waits for the new process to open the storage and adopt them. On
/// `ready` it commits: the control API stops here, `go` lets the new process serve, this one exits.
/// On `fail`, a crash or the timeout it takes everything back (storage reopened, connections resumed,
/// thawed) and raises RAS swap_failed.
/// </summary>
internal sealed class SwapCoordinator(ResolvedConfig cfg, EngineService svc, NbdServer? nbd, int controlFd,
    IReadOnlyList<string> runArgs, uint engineUid, ILogger logger)
{
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromHours(1);
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    private readonly SemaphoreSlim _one = new(1, 1);
    private readonly ConcurrentDictionary<int, TaskCompletionSource<(Socket, HandoffMessage)>> _awaited = new();
    private Socket? _listener;
    private Socket? _peer;
    private volatile string? _current;

    public string SocketPath => Path.Combine(cfg.SocketDir, "swap.sock");

    /// <summary>Set once a new engine reported ready: this engine stops without touching what it handed over.</summary>
    public bool HandedOver { get; private set; }

    /// <summary>Binds the swap socket (mode 0600: the engine's user only) and accepts new engine processes.</summary>
    public void Listen()
    {
        ControlSocket.PreparePath(SocketPath, $"another engine is listening on {SocketPath}", logger);
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Bind(new UnixDomainSocketEndPoint(SocketPath));
        File.SetUnixFileMode(SocketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        s.Listen(4);
        _listener = s;
        new Thread(AcceptLoop) { IsBackground = true, Name = "strata-swap-accept" }.Start();
    }

    /// <summary>Blocking accepts on a thread of its own: the hand-off uses blocking sockets (SO_RCVTIMEO bounds each wait).</summary>
    private void AcceptLoop()
    {
        while (_listener is { } l)
        {
            Socket peer;
            try
            {
                peer = l.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }
            _ = Task.Run(() => OnPeerAsync(peer));
        }
    }

    private async Task OnPeerAsync(Socket peer)
    {
        try
        {
            if (Unix.PeerCredentials(peer) is not { } cred || (cred.Uid != 0 && cred.Uid != engineUid))
            {
                peer.Dispose();
                return;
            }
            peer.ReceiveTimeout = 10_000;
            var (hello, _) = HandoffWire.Receive(peer);
            if (hello.Type != "hello")
            {
                peer.Dispose();
                return;
            }
            if (_awaited.TryRemove(hello.Pid, out var waiting))
            {
                waiting.TrySetResult((peer, hello));
                return;
            }
            // `strata-engine run --takeover` started by hand.
            if (!_one.Wait(0))
            {
                Refuse(peer, $"a swap is already under way ({_current}); wait for it to finish");
                return;
            }
            try
            {
                _current = $"to pid {hello.Pid}, started by hand, since {DateTimeOffset.UtcNow:HH:mm:ss}Z";
                await HandOverAsync(peer, hello, null, DefaultTimeout).ConfigureAwait(false);
            }
            catch (StoreException)
            {
                // Logged and raised where it failed; the new process was told.
            }
            finally
            {
                _current = null;
                _one.Release();
            }
        }
        catch (Exception e) when (e is IOException or SocketException or JsonException or ObjectDisposedException)
        {
            peer.Dispose();
        }
    }

    /// <summary>`strata system swap --binary PATH`: starts PATH as `run --takeover` and hands over to it.</summary>
    public async Task<SwapResultDto> SwapAsync(SystemSwapRequest req)
    {
        var timeout = TimeSpan.FromSeconds(req.TimeoutSeconds);
        if (!(req.TimeoutSeconds > 0) || timeout > MaxTimeout)
            throw new InvalidRequestException(string.Create(CultureInfo.InvariantCulture,
                $"swap timeout {req.TimeoutSeconds:0.###} s is out of range: more than 0 and at most {MaxTimeout.TotalSeconds:0} s"));
        if (string.IsNullOrWhiteSpace(req.Binary))
            throw new InvalidRequestException("--binary is required: the strata-engine to swap to");
        string binary = Path.GetFullPath(req.Binary);
        if (!File.Exists(binary))
            throw new InvalidRequestException($"--binary {UserText.Quote(req.Binary)} does not exist");
        if (!_one.Wait(0))
            throw new BusyException($"a swap is already under way ({_current}); wait for it to finish");
        Process? child = null;
        try
        {
            _current = $"to {binary}, since {DateTimeOffset.UtcNow:HH:mm:ss}Z";
            var id = await IdentifyAsync(binary, req.MaxLayout).ConfigureAwait(false);
            // Everything that can refuse the swap is checked before anything changes.
            Precheck(binary, id.Version, id.MaxLayout);
            var wait = new TaskCompletionSource<(Socket, HandoffMessage)>(TaskCreationOptions.RunContinuationsAsynchronously);
            child = Start(binary, req.MaxLayout, req.Fault);
            _awaited[child.Id] = wait;
            var exited = child.WaitForExitAsync();
            var first = await Task.WhenAny(wait.Task, exited, Task.Delay(timeout)).ConfigureAwait(false);
            _awaited.TryRemove(child.Id, out _);
            if (first != wait.Task)
            {
                string why = first == exited
                    ? $"the new engine (pid {child.Id}) exited with code {child.ExitCode} before the hand-off began"
                    : $"the new engine (pid {child.Id}) did not connect within {timeout.TotalSeconds:0.#} s";
                Kill(child);
                throw Failed(why, tookBack: false);
            }
            var (peer, hello) = wait.Task.Result;
            return await HandOverAsync(peer, hello, child, timeout).ConfigureAwait(false);
        }
        finally
        {
            child?.Dispose();
            _current = null;
            _one.Release();
        }
    }

    private sealed record Identity(string Engine, string Version, uint MaxLayout, int ApiVersion, int ApiMinVersion);

    /// <summary>Runs `PATH identify`: a strata-engine prints its release as one JSON line; anything else is refused.</summary>
    private static async Task<Identity> IdentifyAsync(string binary, uint? maxLayout)
    {
        var psi = Command(binary);
        psi.ArgumentList.Add("identify");
        if (maxLayout is { } n)
        {
            psi.ArgumentList.Add("--max-layout");
            psi.ArgumentList.Add(n.ToString(CultureInfo.InvariantCulture));
        }
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        string notEngine = $"--binary {binary} is not a strata-engine";
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new InvalidRequestException($"{notEngine} (it did not start)");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidRequestException($"{notEngine} (cannot run it: {e.Message})");
        }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            try
            {
                await p.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                Kill(p);
                throw new InvalidRequestException($"{notEngine} ('identify' did not answer within 60 s)");
            }
            string line = (await stdout.ConfigureAwait(false)).Trim();
            string err = (await stderr.ConfigureAwait(false)).Trim();
            try
            {
                var id = JsonSerializer.Deserialize<Identity>(line, Api.Json);
                if (p.ExitCode == 0 && id is { Engine: "strata-engine", Version.Length: > 0 })
                    return id;
            }
            catch (JsonException)
            {
            }
            string said = line.Length > 0 ? line : err;
            throw new InvalidRequestException($"{notEngine} ('identify' exited {p.ExitCode}: {UserText.Quote(said.Split('\n')[0])})");
        }
    }

    private static ProcessStartInfo Command(string binary)
    {
        ProcessStartInfo psi;
        if (binary.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
        {
            // A framework-dependent build: run it with the same dotnet host as this engine.
            string host = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
            psi = new ProcessStartInfo(host);
            psi.ArgumentList.Add(binary);
        }
        else
        {
            psi = new ProcessStartInfo(binary);
        }
        psi.UseShellExecute = false;
        return psi;
    }

    private Process Start(string binary, uint? maxLayout, string? fault)
    {
        var psi = Command(binary);
        foreach (var a in runArgs)
            psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--takeover");
        if (maxLayout is { } n)
        {
            psi.ArgumentList.Add("--max-layout");
            psi.ArgumentList.Add(n.ToString(CultureInfo.InvariantCulture));
        }
        psi.Environment.Remove(Takeover.FaultVariable);
        if (fault != null)
            psi.Environment[Takeover.FaultVariable] = fault;
        // Standard output and error are inherited: the new engine logs where this one did.
        return Process.Start(psi) ?? throw new InvalidRequestException($"--binary {binary} did not start");
    }

    /// <summary>The refusals that need no change: throws naming the reason.</summary>
    private void Precheck(string newEngine, string newVersion, uint newMaxLayout)
    {
        if (nbd?.HandoffRefusal() is { } tls)
            throw new BusyException($"cannot swap: {tls}");
        foreach (var p in svc.Engine.OpenPools())
        {
            var u = p.GetUpgradeStatus();
            if (u.Running)
                throw new BusyException($"cannot swap while pool '{p.Label}' is upgrading (job {u.JobId}, {u.Status}, {u.ActionsDone}/{u.ActionsTotal} steps); "
                    + "wait for it to complete ('strata pool upgrade-status') and swap then");
        }
        foreach (var p in svc.Engine.OpenPools())
        {
            if (p.RunningJob is { } kind)
                throw new BusyException($"cannot swap while pool '{p.Label}' runs a {kind} job; wait for it to complete and swap then");
        }
        foreach (var m in svc.Engine.ListMigrations())
        {
            if (m.State.ToLowerInvariant() is "executing" or "committing" or "aborting")
                throw new BusyException($"cannot swap while image '{m.Source}' migrates to '{m.Destination}' ({m.State.ToLowerInvariant()}); "
                    + "wait for it to be executed, or commit or abort it, and swap then");
        }
        foreach (var p in svc.Engine.ListPools())
        {
            if (p.LayoutVersion > newMaxLayout)
                throw new IncompatibleLayoutException(
                    $"cannot swap: pool '{p.Label}' is at layout {p.LayoutVersion}, which {newEngine} {newVersion} (layouts 1..{newMaxLayout}) cannot open; "
                    + $"this engine is {EngineService.Version} (layouts 1..{svc.Engine.Catalog.MaxSupported}); nothing was changed");
        }
    }

    private static void Refuse(Socket peer, string why)
    {
        try
        {
            HandoffWire.Send(peer, new HandoffMessage("refuse") { Why = why });
        }
        catch (IOException)
        {
        }
        peer.Dispose();
    }

    private async Task<SwapResultDto> HandOverAsync(Socket peer, HandoffMessage hello, Process? child, TimeSpan timeout)
    {
        try
        {
            string theirs = Path.GetFullPath(hello.DataDir ?? "");
            if (theirs != cfg.DataDir)
                throw new InvalidRequestException($"cannot swap: the new engine (pid {hello.Pid}) serves data directory {theirs}, this engine serves {cfg.DataDir}");
            Precheck($"the new engine (pid {hello.Pid})", hello.Version ?? "?", hello.MaxLayout);
        }
        catch (StoreException e)
        {
            Log.SwapRefused(logger, e.Message);
            Refuse(peer, e.Message);
            if (child != null)
                await WaitExitAsync(child).ConfigureAwait(false);
            throw;
        }

        var clock = Stopwatch.StartNew();
        NbdHandoff handoff = nbd != null ? await nbd.PauseAsync().ConfigureAwait(false) : new NbdHandoff([], []);
        Log.SwapHandingOver(logger, hello.Pid, hello.Version ?? "?", hello.MaxLayout, handoff.Listeners.Count, handoff.Connections.Count);
        var barrier = svc.Engine.Barrier;
        try
        {
            await barrier.FreezeAsync(timeout).ConfigureAwait(false);
        }
        catch (StoreException e)
        {
            nbd?.Resume(new NbdExportCatalog(svc.Engine, svc.OpenImageIoAsync));
            Refuse(peer, $"the barrier did not freeze: {e.Message}");
            throw Failed($"the barrier did not freeze: {e.Message}", tookBack: true);
        }
        double freezeMs = clock.Elapsed.TotalMilliseconds;
        var pools = svc.Engine.ListPools().Where(p => p.State is "ready" or "readonly").Select(p => p.Label).ToList();
        await svc.CloseStorageAsync().ConfigureAwait(false);
        // The closed storage's barrier goes with it (its expiry must not fire later); a reopened storage starts thawed.
        barrier.ThawForStop();
        double checkpointMs = clock.Elapsed.TotalMilliseconds - freezeMs;

        string? failure = null;
        HandoffMessage? answer = null;
        try
        {
            await Task.Run(() =>
            {
                HandoffWire.Send(peer, new HandoffMessage("control") { Pid = Environment.ProcessId }, controlFd);
                foreach (var (spec, socket) in handoff.Listeners)
                    HandoffWire.Send(peer, new HandoffMessage("listener") { Spec = spec }, Fd(socket));
                foreach (var (state, socket) in handoff.Connections)
                    HandoffWire.Send(peer, new HandoffMessage("connection") { Connection = state }, Fd(socket));
                HandoffWire.Send(peer, new HandoffMessage("end") { Pid = Environment.ProcessId, Pools = pools });
            }).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            failure = $"the hand-off to pid {hello.Pid} broke: {e.Message}";
        }
        double handoffMs = clock.Elapsed.TotalMilliseconds - freezeMs - checkpointMs;
        if (failure == null)
        {
            peer.ReceiveTimeout = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
            try
            {
                (answer, _) = await Task.Run(() => HandoffWire.Receive(peer)).ConfigureAwait(false);
                if (answer.Type != "ready")
                    failure = $"the new engine (pid {hello.Pid}) refused: {answer.Why ?? answer.Type}";
            }
            catch (FdPassingException e) when (e.Errno == Errno.EAGAIN)
            {
                failure = $"the new engine (pid {hello.Pid}) did not report ready within {timeout.TotalSeconds:0.#} s";
            }
            catch (Exception e) when (e is IOException or JsonException)
            {
                // The socket closes as the process dies; its exit status follows a moment later.
                if (child != null)
                    await WaitExitAsync(child, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
                failure = child is { HasExited: true }
                    ? $"the new engine (pid {hello.Pid}) died during the hand-off (exit code {child.ExitCode})"
                    : $"the new engine (pid {hello.Pid}) went away during the hand-off ({e.Message})";
            }
        }
        if (failure != null)
        {
            // Its devices must be closed before they open here again: wait for the process to go.
            if (child != null)
            {
                Kill(child);
                await WaitExitAsync(child).ConfigureAwait(false);
            }
            else
            {
                await Task.Run(() => DrainUntilClosed(peer)).ConfigureAwait(false);
            }
            peer.Dispose();
            await TakeBackAsync().ConfigureAwait(false);
            throw Failed(failure, tookBack: true);
        }

        double openMs = answer!.OpenMs;
        // Committed: from here this engine only lets go.
        HandedOver = true;
        _peer = peer;
        FdPassing.MarkShared(controlFd);
        CloseListener();
        Log.SwapHandedOver(logger, hello.Pid, freezeMs, checkpointMs, handoffMs, openMs);
        return new SwapResultDto(Environment.ProcessId, hello.Pid, hello.Version ?? "?", hello.MaxLayout, handoff.Listeners.Count, handoff.Connections.Count,
            freezeMs, checkpointMs, handoffMs, openMs, clock.Elapsed.TotalMilliseconds);
    }

    private static int Fd(Socket s) => (int)s.SafeHandle.DangerousGetHandle();

    /// <summary>Storage reopened, connections resumed (their exports reopened), accepting again; the new barrier starts thawed.</summary>
    private async Task TakeBackAsync()
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                await svc.ReopenStorageAsync().ConfigureAwait(false);
                break;
            }
            catch (DeviceBusyException) when (attempt < 100)
            {
                // The other process's device locks go with it; it is exiting.
                await Task.Delay(100).ConfigureAwait(false);
            }
        }
        nbd?.Resume(new NbdExportCatalog(svc.Engine, svc.OpenImageIoAsync));
    }

    private SwapFailedException Failed(string why, bool tookBack)
    {
        string message = tookBack
            ? $"swap failed and was rolled back: {why}; this engine (pid {Environment.ProcessId}) took everything back and serves on"
            : $"swap failed: {why}; nothing was changed, this engine (pid {Environment.ProcessId}) serves on";
        Log.SwapFailed(logger, message);
        svc.Emit(ControlRasIds.SwapFailed, RasSeverity.Warning, message, data: new Dictionary<string, string> { ["reason"] = why });
        return new SwapFailedException(message);
    }

    private static void DrainUntilClosed(Socket peer)
    {
        var b = new byte[256];
        peer.ReceiveTimeout = 30_000;
        try
        {
            while (peer.Receive(b) > 0)
            {
            }
        }
        catch (SocketException)
        {
        }
    }

    private static void Kill(Process p)
    {
        try
        {
            if (!p.HasExited)
                p.Kill();
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static async Task WaitExitAsync(Process p, TimeSpan? bound = null)
    {
        using var cts = new CancellationTokenSource(bound ?? TimeSpan.FromSeconds(30));
        try
        {
            await p.WaitForExitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            if (bound == null)
                Kill(p);
        }
    }

    private void CloseListener()
    {
        var l = Interlocked.Exchange(ref _listener, null);
        if (l == null)
            return;
        l.Dispose();
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>After this engine's control API stopped: connections and listeners let go, then `go` to the new engine.</summary>
    public void Finish()
    {
        nbd?.HandOver();
        if (_peer is { } p)
        {
            try
            {
                HandoffWire.Send(p, new HandoffMessage("go") { Pid = Environment.ProcessId });
            }
            catch (IOException)
            {
                // The new engine is gone too: nothing more can be done from here (a restart recovers).
            }
            p.Dispose();
        }
    }

    /// <summary>A clean stop without a swap: the swap socket goes.</summary>
    public void Close() => CloseListener();
}
