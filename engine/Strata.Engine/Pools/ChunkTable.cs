using System.Collections;
using System.Diagnostics.CodeAnalysis;

namespace Strata.Engine.Pools;

/// <summary>
/// An image's chunk maps (chunk index to <see cref="ChunkMap"/>), read and changed under the pool state's
/// lock. It tracks which maps may be held outside that lock, so that a client write can reuse the map it
/// superseded for a later write instead of allocating one (issue 17; docs/format.md, "Chunk maps in memory"):
/// <list type="bullet">
/// <item>A map handed out one at a time (<see cref="TryGetValue"/>, the indexer) or put in by anything but a
/// client write (the indexer: replay, checkpoint load, moves) is marked escaped: it is never reused.</item>
/// <item>Enumerating the maps (<see cref="Values"/>, the enumerator, LINQ) hands out every map installed so far
/// to a caller that may keep them: those are never reused either (a permanent <see cref="Hold"/>).</item>
/// <item>A scoped <see cref="Hold"/> (a checkpoint's capture, until it is encoded) keeps every map installed
/// before it from being reused while it lasts.</item>
/// <item><see cref="Scan"/> and <see cref="GetLocked"/> hand out maps to callers that are done with them before
/// they leave the state's lock, or (the data path) before they leave the chunk's lock.</item>
/// </list>
/// A map that a client write's <see cref="Install"/> replaces is marked reusable when none of these can
/// hold it; the write path returns it to the pool's spares once its extents are freed (ChunkMapSpares).
/// </summary>
public sealed class ChunkTable : IEnumerable<KeyValuePair<long, ChunkMap>>
{
    private readonly Dictionary<long, ChunkMap> _maps = new();
    /// <summary>Maps installed so far (each install's stamp is the next).</summary>
    private long _stamp;
    /// <summary>Holds not yet released (permanent ones never are), and the latest stamp an active hold covers.</summary>
    private int _holds;
    private long _heldThrough;

    public int Count => _maps.Count;

    public bool ContainsKey(long index) => _maps.ContainsKey(index);

    /// <summary>The chunk indexes (no maps are handed out).</summary>
    public Dictionary<long, ChunkMap>.KeyCollection Keys => _maps.Keys;

    /// <summary>Every map, to a caller that may keep them (they are never reused).</summary>
    public Dictionary<long, ChunkMap>.ValueCollection Values
    {
        get
        {
            Hold();
            return _maps.Values;
        }
    }

    /// <summary>Every map, to a caller that is done with all of them before it leaves the state's lock.</summary>
    internal Dictionary<long, ChunkMap>.ValueCollection Scan => _maps.Values;

    /// <summary>
    /// Every chunk and map, to a caller that is done with them before it leaves the state's lock, or keeps
    /// only maps it then removes from the table while it holds all of the image's locks (a trim or shrink
    /// frees their extents: a map that leaves the table that way is never reused).
    /// </summary>
    internal Dictionary<long, ChunkMap> ScanPairs => _maps;

    /// <summary>A map, to a caller that may keep it (it is never reused).</summary>
    public ChunkMap this[long index]
    {
        get
        {
            var m = _maps[index];
            m.Escaped = true;
            return m;
        }
        set
        {
            value.Escaped = true;
            _maps[index] = value;
        }
    }

    /// <summary>A map, to a caller that may keep it (it is never reused).</summary>
    public bool TryGetValue(long index, [MaybeNullWhen(false)] out ChunkMap map)
    {
        if (!_maps.TryGetValue(index, out map))
            return false;
        map.Escaped = true;
        return true;
    }

    public bool Remove(long index) => _maps.Remove(index);

    /// <summary>A map, to a caller that holds the chunk's lock and drops the reference before it releases it (or the state's lock, likewise).</summary>
    internal ChunkMap? GetLocked(long index) => _maps.TryGetValue(index, out var m) ? m : null;

    /// <summary>
    /// A client write's new mapping (made for it, not yet seen by anyone else): the map it replaces is
    /// marked reusable unless it escaped or a hold covers it.
    /// </summary>
    internal void Install(long index, ChunkMap map)
    {
        map.Born = ++_stamp;
        map.Escaped = false;
        map.Reusable = false;
        if (_maps.TryGetValue(index, out var old))
            old.Reusable = !old.Escaped && (Volatile.Read(ref _holds) == 0 || old.Born > _heldThrough);
        _maps[index] = map;
    }

    /// <summary>
    /// Keeps every map in the table now from being reused until <see cref="Release"/> (under the state's
    /// lock; Release need not be): a caller that copies the references and uses them after the lock.
    /// </summary>
    internal void Hold()
    {
        Interlocked.Increment(ref _holds);
        _heldThrough = _stamp;
    }

    /// <summary>Ends a <see cref="Hold"/>: the caller no longer uses any map it took under it.</summary>
    internal void Release() => Interlocked.Decrement(ref _holds);

    public Dictionary<long, ChunkMap>.Enumerator GetEnumerator()
    {
        Hold();
        return _maps.GetEnumerator();
    }

    IEnumerator<KeyValuePair<long, ChunkMap>> IEnumerable<KeyValuePair<long, ChunkMap>>.GetEnumerator() => GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
