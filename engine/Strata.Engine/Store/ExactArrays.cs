using System.Collections.Concurrent;

namespace Strata.Engine.Store;

/// <summary>
/// Arrays of exact lengths, reused: for payloads whose length is the array's (a log record's), which
/// ArrayPool's power-of-two buckets cannot give, and for arrays rented on one thread and given back on
/// another long after (a deferred write's, held until its round is done), which ArrayPool's per-thread and
/// per-core caches drop and make again. A few lengths recur (a deferred write's record length follows from its
/// chunk size, replica count and block count), so each keeps a small queue.
/// </summary>
internal sealed class ExactArrays<T>(int perLength = 256)
{
    private readonly ConcurrentDictionary<int, ConcurrentQueue<T[]>> _byLength = new();

    public T[] Rent(int length) =>
        _byLength.TryGetValue(length, out var q) && q.TryDequeue(out var a) ? a : new T[length];

    /// <summary>Gives an array back; dropped when its length already keeps <c>perLength</c> of them, or too many lengths are kept.</summary>
    public void Return(T[] array)
    {
        var q = _byLength.TryGetValue(array.Length, out var found) ? found
            : _byLength.Count < 64 ? _byLength.GetOrAdd(array.Length, _ => new ConcurrentQueue<T[]>()) : null;
        if (q != null && q.Count < perLength)
            q.Enqueue(array);
    }
}
