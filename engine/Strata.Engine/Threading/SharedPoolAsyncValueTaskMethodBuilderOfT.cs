using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Strata.Engine.Threading;

/// <summary>
/// <see cref="SharedPoolAsyncValueTaskMethodBuilder"/> for a method that returns a ValueTask of
/// <typeparamref name="TResult"/>: boxes reused through a pool every thread shares.
/// </summary>
[System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Auto)]
public struct SharedPoolAsyncValueTaskMethodBuilder<TResult>
{
    private PooledResultBox<TResult>? _box;
    private TResult _result;

    public static SharedPoolAsyncValueTaskMethodBuilder<TResult> Create() => default;

    public readonly void Start<TStateMachine>(ref TStateMachine stateMachine) where TStateMachine : IAsyncStateMachine =>
        default(AsyncTaskMethodBuilder).Start(ref stateMachine);

    public readonly void SetStateMachine(IAsyncStateMachine stateMachine)
    {
    }

    public readonly ValueTask<TResult> Task => _box is { } box ? new ValueTask<TResult>(box, box.Version) : new ValueTask<TResult>(_result);

    public void SetResult(TResult result)
    {
        if (_box is { } box)
            box.SetResult(result);
        else
            _result = result;
    }

    public void SetException(Exception exception) => (_box ??= new PooledResultBox<TResult>()).SetException(exception);

    public void AwaitOnCompleted<TAwaiter, TStateMachine>(ref TAwaiter awaiter, ref TStateMachine stateMachine)
        where TAwaiter : INotifyCompletion where TStateMachine : IAsyncStateMachine =>
        awaiter.OnCompleted(BoxFor(ref stateMachine).MoveNextAction);

    public void AwaitUnsafeOnCompleted<TAwaiter, TStateMachine>(ref TAwaiter awaiter, ref TStateMachine stateMachine)
        where TAwaiter : ICriticalNotifyCompletion where TStateMachine : IAsyncStateMachine =>
        awaiter.UnsafeOnCompleted(BoxFor(ref stateMachine).MoveNextAction);

    private PooledResultBox<TResult, TStateMachine> BoxFor<TStateMachine>(ref TStateMachine stateMachine) where TStateMachine : IAsyncStateMachine
    {
        var context = ExecutionContext.Capture();
        if (_box is PooledResultBox<TResult, TStateMachine> boxed)
        {
            boxed.Context = context;
            return boxed;
        }
        Debug.Assert(_box == null, "a method's box is of its own state machine's type");
        var box = PooledResultBox<TResult, TStateMachine>.Rent();
        _box = box;
        box.StateMachine = stateMachine;
        box.Context = context;
        return box;
    }
}

/// <summary>As <see cref="PooledBox"/>, with a result.</summary>
internal class PooledResultBox<TResult> : IValueTaskSource<TResult>
{
    private ManualResetValueTaskSourceCore<TResult> _core;

    public short Version => _core.Version;

    public void SetResult(TResult result) => _core.SetResult(result);

    public void SetException(Exception exception) => _core.SetException(exception);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public TResult GetResult(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            Recycle();
        }
    }

    protected virtual void Recycle()
    {
    }
}

/// <summary>As <see cref="PooledBox{TStateMachine}"/>, with a result.</summary>
internal sealed class PooledResultBox<TResult, TStateMachine> : PooledResultBox<TResult> where TStateMachine : IAsyncStateMachine
{
    private static readonly ContextCallback s_moveNext = s => Unsafe.As<PooledResultBox<TResult, TStateMachine>>(s!).StateMachine.MoveNext();

    public TStateMachine StateMachine = default!;
    public ExecutionContext? Context;

    public PooledResultBox() => MoveNextAction = MoveNext;

    public Action MoveNextAction { get; }

    public static PooledResultBox<TResult, TStateMachine> Rent() => SharedPool<PooledResultBox<TResult, TStateMachine>>.Rent();

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
        SharedPool<PooledResultBox<TResult, TStateMachine>>.Return(this);
    }
}
