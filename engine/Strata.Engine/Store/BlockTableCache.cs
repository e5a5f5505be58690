using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>
/// Verified block tables of block-checksummed replicas (docs/format.md, "Per-block checksums"), so
/// that a small read of a chunk reads its data blocks and not its table again. Keyed by the replica
/// as the map records it (target, extent, table CRC): a rewrite gets a fresh extent and a new CRC,
/// and a reused extent whose table has the same CRC has the same table, so an entry is never stale.
/// Two generations bound it: when the young one is full it becomes the old one (and the old one is
/// dropped); a hit in the old one moves the entry back to the young one.
/// </summary>
internal sealed class BlockTableCache(int capacity)
{
    private readonly object _lock = new();
    private Dictionary<Replica, uint[]> _young = new();
    private Dictionary<Replica, uint[]> _old = new();

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

    private void AddLocked(Replica replica, uint[] crcs)
    {
        if (_young.Count >= capacity / 2)
        {
            _old = _young;
            _young = new Dictionary<Replica, uint[]>();
        }
        _young[replica] = crcs;
    }
}
