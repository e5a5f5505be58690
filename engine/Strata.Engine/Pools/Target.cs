using Strata.Engine.Device;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>One device the engine owns, with its current (durable) superblock.</summary>
public sealed class Target
{
    internal Target(IBlockDevice device, TargetSuperblock superblock)
    {
        Device = device;
        Superblock = superblock;
    }

    public IBlockDevice Device { get; }

    /// <summary>Every flush of pool data and logs on this target goes through here (shared, sticky on failure).</summary>
    internal FlushCoalescer Flusher => _flusher ??= new FlushCoalescer(Device);

    private FlushCoalescer? _flusher;

    public int Index => Superblock.TargetIndex;

    public Guid Id => Superblock.TargetId;

    internal TargetSuperblock Superblock { get; private set; }

    /// <summary>
    /// Why the device's superblock could not be read when the engine opened (a dead disk), or null. Such
    /// a target has a stand-in superblock (its index by elimination, no extents, no target id) that is
    /// never written; its pools open only if they exclude it, and a reintegration reads the real one.
    /// </summary>
    internal string? UnreadReason { get; private set; }

    /// <summary>A target whose superblock could not be read at open (<see cref="UnreadReason"/>).</summary>
    internal static Target Unread(IBlockDevice device, Guid engine, int index, int count, string reason) =>
        new(device, new TargetSuperblock { EngineId = engine, TargetIndex = index, TargetCount = count, Capacity = device.Geometry.Capacity })
        {
            UnreadReason = reason,
        };

    /// <summary>The real superblock of a target that could not be read at open, read since (a reintegration).</summary>
    internal void AdoptSuperblock(TargetSuperblock superblock)
    {
        System.Diagnostics.Debug.Assert(UnreadReason != null && superblock.TargetIndex == Index, "only an unread target's own superblock is adopted");
        Superblock = superblock;
        UnreadReason = null;
    }

    private void ThrowIfUnread()
    {
        if (UnreadReason != null)
            throw new InvalidRequestException($"target {Index} ('{Device.Name}') could not be read when the engine started ({UnreadReason}); " +
                $"its superblock is not written until 'strata storage reintegrate-target {Index}' reads it");
    }

    /// <summary>Generation of the current superblock; it changes when both copies are rewritten (health: a bad copy healed).</summary>
    public ulong SuperblockGeneration => Superblock.Generation;

    /// <summary>Bytes of this target's extents given to pools (shard headers, logs, checkpoints and data).</summary>
    public long AllocatedBytes => Superblock.Extents.Sum(e => e.Length);

    /// <summary>
    /// A reintegrated target: flushes start afresh (a failed flush stays sticky otherwise). Called
    /// after a flush of the device itself succeeded and what it holds was verified.
    /// </summary>
    internal void ResetFlusher() => _flusher = null;

    /// <summary>The sticky failure of a flush on this device, if one failed (health).</summary>
    public Exception? FlushFailure => _flusher?.Failure;

    /// <summary>Writes a new superblock generation with these extents; durable on return.</summary>
    internal async Task UpdateExtentsAsync(List<ShardExtent> extents)
    {
        ThrowIfUnread();
        ulong last = await HeaderCopies.WriteBothAsync(Device, 0, Superblock.Generation,
            g => Superblock.Clone(g, extents).Encode()).ConfigureAwait(false);
        Superblock = Superblock.Clone(last, extents);
    }

    /// <summary>Writes a new superblock generation that counts <paramref name="targets"/> targets in the engine; durable on return.</summary>
    internal async Task UpdateTargetCountAsync(int targets)
    {
        ThrowIfUnread();
        var extents = Superblock.Extents;
        ulong last = await HeaderCopies.WriteBothAsync(Device, 0, Superblock.Generation,
            g => Superblock.Clone(g, extents, targets).Encode()).ConfigureAwait(false);
        Superblock = Superblock.Clone(last, extents, targets);
    }
}

/// <summary>Validates labels of pools, containers and images.</summary>
public static class Labels
{
    public const int MaxLength = 63;

    public static void Validate(string kind, string label)
    {
        if (string.IsNullOrEmpty(label))
            throw new InvalidRequestException($"{kind} label must not be empty");
        if (label.Length > MaxLength)
            throw new InvalidRequestException($"{kind} label {UserText.Quote(label)} is longer than {MaxLength} characters");
        if (!char.IsAsciiLetterOrDigit(label[0]))
            throw new InvalidRequestException($"{kind} label {UserText.Quote(label)} must start with a letter or digit");
        foreach (char c in label)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                throw new InvalidRequestException($"{kind} label {UserText.Quote(label)} contains '{c}'; use letters, digits, '-', '_' and '.'");
    }
}
