using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// Verified block tables of block-checksummed replicas (docs/format.md, "Per-block checksums"), so
/// that a small read of a chunk reads its data blocks and not its table again. Keyed by the replica
/// as the map records it (target, extent, table CRC): a rewrite gets a fresh extent and a new CRC,
/// and a reused extent whose table has the same CRC has the same table, so an entry is never stale.
/// Two generations bound it: when the young one is full it becomes the old one (and the old one is
/// dropped: cleared and kept as the next young one, so a full cache allocates nothing more); a hit
/// in the old one moves the entry back to the young one. An in-place write replaces its chunk's
/// entries (<see cref="Replace"/>) instead of adding beside them: 4 KiB writes into 128 KiB chunks
/// otherwise filled a generation every few thousand writes, and each new one grew its dictionary
/// again through the large object heap (15 gen-2 collections in a 3 s NBD row, issue 17).
/// </summary>
internal sealed class BlockTableCache(int capacity)
{
    private readonly object _lock = new();
    private Dictionary<Replica, uint[]> _young = new();
    private Dictionary<Replica, uint[]> _old = new();

    /// <summary>Tables held (both generations): tests.</summary>
    internal int Count
    {
        get
        {
            lock (_lock)
                return _young.Count + _old.Count;
        }
    }

    /// <summary>Drops every table: tests that change a device behind the engine's back.</summary>
    internal void Clear()
    {
        lock (_lock)
        {
            _young.Clear();
            _old.Clear();
        }
    }

    /// <summary>Tables of 1 MiB chunks take 1 KiB each: 8,192 entries take at most 8 MiB.</summary>
    public const int DefaultCapacity = 8192;

    public bool TryGet(Replica replica, out uint[] crcs)
    {
        lock (_lock)
        {
            if (_young.TryGetValue(replica, out crcs!))
                return true;
            if (!_old.Remove(replica, out crcs!))
                return false;
            AddLocked(replica, crcs);
            return true;
        }
    }

    public void Add(Replica replica, uint[] crcs)
    {
        lock (_lock)
            AddLocked(replica, crcs);
    }

    /// <summary>
    /// The chunk's tables after an in-place write: the entries of its superseded replicas go (their
    /// extents now hold <paramref name="crcs"/>' blocks), the new replicas' come in. The caller holds
    /// the chunk's exclusive lock, so no reader of the old mapping can still ask for them.
    /// </summary>
    public void Replace(ReadOnlySpan<Replica> superseded, ReadOnlySpan<Replica> replicas, uint[] crcs)
    {
        lock (_lock)
        {
            foreach (var r in superseded)
            {
                _young.Remove(r);
                _old.Remove(r);
            }
            foreach (var r in replicas)
                AddLocked(r, crcs);
        }
    }

    /// <summary>
    /// Removes the entries of a mapping about to be superseded by a copy on write and returns one of
    /// their arrays (null: none cached), for the new mapping's table (<see cref="Replace"/>). The caller
    /// holds the chunk's exclusive lock: no reader of the old mapping holds the array.
    /// </summary>
    public uint[]? Take(ReadOnlySpan<Replica> replicas)
    {
        uint[]? taken = null;
        lock (_lock)
        {
            foreach (var r in replicas)
            {
                if (_young.Remove(r, out var crcs) || _old.Remove(r, out crcs))
                    taken ??= crcs;
            }
        }
        return taken;
    }

    private void AddLocked(Replica replica, uint[] crcs)
    {
        if (_young.Count >= capacity / 2 && !_young.ContainsKey(replica))
        {
            var dropped = _old;
            dropped.Clear();
            _old = _young;
            _young = dropped;
        }
        _young[replica] = crcs;
    }
}
