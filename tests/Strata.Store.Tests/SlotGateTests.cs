using Strata.Engine.Migration;

namespace Strata.Store.Tests;

/// <summary>
/// The migration loop's per-target slots (SlotGate): a release hands the slot to the first waiter
/// and runs it on the releasing thread, before the release returns, so the waiter's I/O is issued
/// where the previous one completed.
/// </summary>
[TestClass]
public sealed class SlotGateTests
{
    [TestMethod]
    public void TakeAsync_FreeSlots_CompleteAtOnceThenWait()
    {
        var gate = new SlotGate(2);
        Assert.IsTrue(gate.TakeAsync().IsCompletedSuccessfully);
        Assert.IsTrue(gate.TakeAsync().IsCompletedSuccessfully);
        Assert.IsFalse(gate.TakeAsync().IsCompleted);
    }

    [TestMethod]
    public void Release_Waiters_RunInOrderOnTheReleasingThreadBeforeItReturns()
    {
        var gate = new SlotGate(1);
        Assert.IsTrue(gate.TakeAsync().IsCompletedSuccessfully);
        var ran = new List<(int Waiter, int Thread)>();
        var first = gate.TakeAsync().ContinueWith(_ => ran.Add((1, Environment.CurrentManagedThreadId)), TaskContinuationOptions.ExecuteSynchronously);
        var second = gate.TakeAsync().ContinueWith(_ => ran.Add((2, Environment.CurrentManagedThreadId)), TaskContinuationOptions.ExecuteSynchronously);

        gate.Release();
        CollectionAssert.AreEqual(new[] { (1, Environment.CurrentManagedThreadId) }, ran);
        Assert.IsFalse(second.IsCompleted);

        gate.Release();
        CollectionAssert.AreEqual(new[] { (1, Environment.CurrentManagedThreadId), (2, Environment.CurrentManagedThreadId) }, ran);
        Assert.IsTrue(first.IsCompletedSuccessfully && second.IsCompletedSuccessfully);
    }

    [TestMethod]
    public void Release_NoWaiter_GivesTheSlotBack()
    {
        var gate = new SlotGate(1);
        Assert.IsTrue(gate.TakeAsync().IsCompletedSuccessfully);
        gate.Release();
        Assert.IsTrue(gate.TakeAsync().IsCompletedSuccessfully);
        Assert.IsFalse(gate.TakeAsync().IsCompleted);
    }
}
