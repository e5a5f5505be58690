using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Strata.Engine.Threading;

/// <summary>
/// An async ValueTask method builder that reuses its state machine boxes, as the runtime's
/// PoolingAsyncValueTaskMethodBuilder does, but through a pool every thread shares: the runtime's keeps
/// one box per thread and one per CPU, so a box rented on one thread (a writer, the committer) and
/// given back on another (the device's polling thread, where the await completes) is a new box on most
/// rounds and writes (issue 17: 33-47 B a durable 4 KiB write on file targets). For a method whose
/// ValueTask is awaited exactly once and never twice, as for the runtime's (the box is reused after).
/// docs/architecture.md, "Threads and allocations of a durable 4 KiB write".
/// </summary>
[System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Auto)]
public struct SharedPoolAsyncValueTaskMethodBuilder
{
    /// <summary>The box once the method first suspended (or failed before it); null while it ran synchronously.</summary>
    private PooledBox? _box;

    public static SharedPoolAsyncValueTaskMethodBuilder Create() => default;

    /// <summary>Runs the method up to its first suspension, with the caller's execution and synchronization contexts restored after.</summary>
    public readonly void Start<TStateMachine>(ref TStateMachine stateMachine) where TStateMachine : IAsyncStateMachine =>
        default(AsyncTaskMethodBuilder).Start(ref stateMachine);

    /// <summary>Unused: the box holds the state machine (as the runtime's pooling builder, it never asks for this).</summary>
    public readonly void SetStateMachine(IAsyncStateMachine stateMachine)
    {
    }

    /// <summary>The method's ValueTask: completed when it finished without suspending, else its box's.</summary>
    public readonly ValueTask Task => _box is { } box ? new ValueTask(box, box.Version) : default;

    public readonly void SetResult() => _box?.SetResult();

    /// <summary>Fails the method; before any suspension, through a box of its own (rare: the exception path), as the runtime's builder.</summary>
    public void SetException(Exception exception) => (_box ??= new PooledBox()).SetException(exception);

    public void AwaitOnCompleted<TAwaiter, TStateMachine>(ref TAwaiter awaiter, ref TStateMachine stateMachine)
        where TAwaiter : INotifyCompletion where TStateMachine : IAsyncStateMachine =>
        awaiter.OnCompleted(BoxFor(ref stateMachine).MoveNextAction);

    public void AwaitUnsafeOnCompleted<TAwaiter, TStateMachine>(ref TAwaiter awaiter, ref TStateMachine stateMachine)
        where TAwaiter : ICriticalNotifyCompletion where TStateMachine : IAsyncStateMachine =>
        awaiter.UnsafeOnCompleted(BoxFor(ref stateMachine).MoveNextAction);

    /// <summary>The method's box: rented at its first suspension, the state machine copied in (this builder naming the box first, so the copy does too).</summary>
    private PooledBox<TStateMachine> BoxFor<TStateMachine>(ref TStateMachine stateMachine) where TStateMachine : IAsyncStateMachine
    {
        var context = ExecutionContext.Capture();
        if (_box is PooledBox<TStateMachine> boxed)
        {
            boxed.Context = context;
            return boxed;
        }
        Debug.Assert(_box == null, "a method's box is of its own state machine's type");
        var box = PooledBox<TStateMachine>.Rent();
        _box = box;
        box.StateMachine = stateMachine;
        box.Context = context;
        return box;
    }
}

/// <summary>A method's completion, awaited once: the base of <see cref="PooledBox{TStateMachine}"/>, and alone a failure before any suspension (never reused).</summary>
internal class PooledBox : IValueTaskSource
{
    // Continuations run inline where the method completes, as for the runtime's builders.
    private ManualResetValueTaskSourceCore<bool> _core;

    public short Version => _core.Version;

    public void SetResult() => _core.SetResult(true);

    public void SetException(Exception exception) => _core.SetException(exception);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    /// <summary>Takes the outcome (the one await); the box may be reused from then on.</summary>
    public void GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            Recycle();
        }
    }

    /// <summary>Clears the box and gives it back to its pool (nothing for a failure's own box).</summary>
    protected virtual void Recycle()
    {
    }
}

/// <summary>The box of a method whose state machine is <typeparamref name="TStateMachine"/>, and their pool.</summary>
internal sealed class PooledBox<TStateMachine> : PooledBox where TStateMachine : IAsyncStateMachine
{
    private static readonly ContextCallback s_moveNext = s => Unsafe.As<PooledBox<TStateMachine>>(s!).StateMachine.MoveNext();

    public TStateMachine StateMachine = default!;
    public ExecutionContext? Context;

    public PooledBox() => MoveNextAction = MoveNext;

    /// <summary>What the awaiters call when the awaited operation completes: made once per box.</summary>
    public Action MoveNextAction { get; }

    /// <summary>This thread's box if it has one, else one from the shared pool, else a new one.</summary>
    public static PooledBox<TStateMachine> Rent() => SharedPool<PooledBox<TStateMachine>>.Rent();

    private void MoveNext()
    {
        var context = Context;
        if (context == null)
            StateMachine.MoveNext();
        else
            ExecutionContext.Run(context, s_moveNext, this);
    }

    protected override void Recycle()
    {
        StateMachine = default!;
        Context = null;
        SharedPool<PooledBox<TStateMachine>>.Return(this);
    }
}
