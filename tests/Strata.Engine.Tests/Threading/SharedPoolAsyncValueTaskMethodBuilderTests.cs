using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Strata.Engine.Threading;

namespace Strata.Engine.Tests.Threading;

/// <summary>
/// The write path's async methods (SharedPoolAsyncValueTaskMethodBuilder): boxes rented on one thread and
/// given back on another are reused, the caller's execution context flows into the method, and failures
/// before or after the first await reach the awaiter.
/// </summary>
[TestClass]
[DoNotParallelize]
public sealed class SharedPoolAsyncValueTaskMethodBuilderTests
{
    /// <summary>An operation the test completes on the thread of its choice; the method resumes inline there.</summary>
    private sealed class Gate : IValueTaskSource
    {
        private ManualResetValueTaskSourceCore<bool> _core;

        public ValueTask Next()
        {
            _core.Reset();
            return new ValueTask(this, _core.Version);
        }

        public void Open() => _core.SetResult(true);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public void GetResult(short token) => _core.GetResult(token);
    }

    [AsyncMethodBuilder(typeof(SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask StepAsync(ValueTask wait, StrongBox<long> steps)
    {
        await wait.ConfigureAwait(false);
        steps.Value++;
    }

    /// <summary>
    /// Batches of methods started on this thread, each resumed, completed and awaited on another (as a write's
    /// steps rented by a writer and given back on the device's polling thread): after a warm-up no box is new.
    /// The runtime's PoolingAsyncValueTaskMethodBuilder keeps one box per thread and one per CPU, so it would
    /// make most of a batch's boxes anew every time.
    /// </summary>
    [TestMethod]
    public void Boxes_RentedOnOneThreadGivenBackOnAnother_AreReused()
    {
        const int Batch = 8, Batches = 500;
        var gates = Enumerable.Range(0, Batch).Select(_ => new Gate()).ToArray();
        var started = new ValueTask[Batch];
        var steps = new StrongBox<long>();
        using var go = new ManualResetEventSlim();
        using var done = new ManualResetEventSlim();
        var other = new Thread(() =>
        {
            for (int b = 0; b < 2 * Batches; b++)
            {
                go.Wait();
                go.Reset();
                for (int i = 0; i < Batch; i++)
                {
                    gates[i].Open();
                    started[i].GetAwaiter().GetResult();
                }
                done.Set();
            }
        }) { IsBackground = true };
        other.Start();
        long Run()
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int b = 0; b < Batches; b++)
            {
                for (int i = 0; i < Batch; i++)
                    started[i] = StepAsync(gates[i].Next(), steps);
                go.Set();
                done.Wait();
                done.Reset();
            }
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Run();
        long allocated = Run();
        Assert.IsTrue(other.Join(TimeSpan.FromMinutes(1)), "the other thread finished");
        Assert.AreEqual(2L * Batch * Batches, steps.Value, "every method ran to its end");
        Assert.IsLessThan(Batch * Batches, allocated, $"{allocated} bytes allocated for {Batch * Batches} methods started after the warm-up");
    }

    private static readonly AsyncLocal<string?> Flowed = new();

    [AsyncMethodBuilder(typeof(SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask ReadFlowedAsync(ValueTask wait, StrongBox<string?> seen)
    {
        await wait.ConfigureAwait(false);
        seen.Value = Flowed.Value;
    }

    [TestMethod]
    public async Task Method_ResumedOnAThreadWithoutTheCallersContext_SeesTheCallersAsyncLocals()
    {
        var gate = new Gate();
        var seen = new StrongBox<string?>();
        Flowed.Value = "caller";
        var running = ReadFlowedAsync(gate.Next(), seen);
        Flowed.Value = null;
        // Opened from a thread that does not carry the caller's context.
        using (ExecutionContext.SuppressFlow())
            ThreadPool.UnsafeQueueUserWorkItem(_ => gate.Open(), null);
        await running;
        Assert.AreEqual("caller", seen.Value, "the method resumed in the context it was started in");
    }

    [AsyncMethodBuilder(typeof(SharedPoolAsyncValueTaskMethodBuilder))]
    private static async ValueTask FailAsync(ValueTask wait, bool before)
    {
        if (before)
            throw new InvalidOperationException("before the await");
        await wait.ConfigureAwait(false);
        throw new InvalidOperationException("after the await");
    }

    [TestMethod]
    public async Task Method_ThrowsBeforeOrAfterItsFirstAwait_TheAwaiterGetsTheException()
    {
        var early = await Assert.ThrowsExactlyAsync<InvalidOperationException>(async () => await FailAsync(default, before: true));
        Assert.AreEqual("before the await", early.Message);
        var gate = new Gate();
        var running = FailAsync(gate.Next(), before: false);
        Assert.IsFalse(running.IsCompleted, "the method waits for its operation");
        _ = Task.Run(gate.Open);
        var late = await Assert.ThrowsExactlyAsync<InvalidOperationException>(async () => await running);
        Assert.AreEqual("after the await", late.Message);
    }
}
