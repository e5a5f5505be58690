namespace Strata.Engine.Layout;

/// <summary>The names the API and CLI print for the catalog's enums: ro_compat, metadata_only, data_movement.</summary>
public static class CatalogNames
{
    public static string Of(Enum value)
    {
        string s = value.ToString();
        return string.Concat(s.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));
    }
}

/// <summary>ext4/ZFS compatibility classes of a layout feature.</summary>
public enum FeatureClass
{
    /// <summary>Software that does not know it may open the pool read-write (it ignores the feature).</summary>
    Compat,
    /// <summary>Software that does not know it may only open the pool read-only.</summary>
    RoCompat,
    /// <summary>Software that does not know it must refuse the pool.</summary>
    Incompat,
}

/// <summary>What a feature's upgrade action does, which decides how the pool is accessed while it runs.</summary>
public enum ActionKind
{
    /// <summary>Adds or changes metadata only; metadata changes wait for one log batch, image I/O continues.</summary>
    MetadataOnly,
    /// <summary>Reads every chunk and rewrites its metadata; online, chunk by chunk.</summary>
    DataScan,
    /// <summary>Copies chunks to new places; online, needs free space.</summary>
    DataMovement,
    /// <summary>Changes the log format; needs exclusive access (image I/O held at the gate, metadata changes refused).</summary>
    LogFormat,
}

/// <summary>How the pool can be used while an action runs.</summary>
public enum ActionAccess
{
    /// <summary>Metadata changes wait while the action commits in one log batch (a short pause); image I/O continues.</summary>
    Quiesce,
    /// <summary>
    /// Image I/O is held at the pool's gate (in flight finishes first; new requests wait, as a barrier
    /// holds them, and are answered after) and metadata changes are refused until the action ends:
    /// for short switches (a log format); clients stay connected and see a pause.
    /// </summary>
    Exclusive,
    /// <summary>The pool stays in use; the action locks one item at a time.</summary>
    Online,
}

/// <summary>
/// One layout feature: the unit the catalog lists and an upgrade enables. Its
/// bit is the on-disk contract (docs/format.md); its action must be idempotent:
/// run once or five times from any cursor, the pool ends the same. The default
/// catalog binds no action (<paramref name="Action"/> null): the job takes it from
/// Migration.UpgradeActionBindings by name, so Layout references nothing above it;
/// a test catalog may bind its own here.
/// </summary>
public sealed record LayoutFeature(
    string Name,
    uint Version,
    FeatureClass Class,
    int Bit,
    ActionKind Kind,
    string Description,
    IUpgradeAction? Action)
{
    /// <summary>How the pool can be used while the action runs, which follows from its kind.</summary>
    public ActionAccess Access => Kind switch
    {
        ActionKind.MetadataOnly => ActionAccess.Quiesce,
        ActionKind.LogFormat => ActionAccess.Exclusive,
        _ => ActionAccess.Online,
    };

    public ulong Mask => 1UL << Bit;
}

/// <summary>One layout version: its features, and whether this build can run its actions and open pools at it.</summary>
public sealed record LayoutVersion(uint Version, string Summary, IReadOnlyList<LayoutFeature> Features, bool Supported);

/// <summary>A named software release and the newest layout it opens (what the pool property `compatibility` pins to).</summary>
public sealed record StrataRelease(string Name, uint MaxLayout);

/// <summary>
/// The explicit, ordered list of layout versions (ARCHITECTURE.md, "Layout versions and
/// the feature catalog"). No reflection: adding a version is adding an entry here, its
/// bits to docs/format.md, and its actions. An engine may run as an older release
/// (<see cref="Truncate"/>, the daemon's hidden --max-layout), which is how the tests
/// play "older software".
/// </summary>
public sealed class LayoutCatalog
{
    private readonly IReadOnlyList<LayoutVersion> _all;

    public LayoutCatalog(IReadOnlyList<LayoutVersion> versions, IReadOnlyList<StrataRelease> releases)
    {
        for (int i = 0; i < versions.Count; i++)
            if (versions[i].Version != i + 1)
                throw new ArgumentException($"catalog versions must be 1, 2, 3, ... in order; entry {i} is {versions[i].Version}");
        _all = versions;
        Releases = releases;
        MaxSupported = versions.LastOrDefault(v => v.Supported)?.Version ?? throw new ArgumentException("a catalog supports at least version 1");
        for (uint v = 1; v <= MaxSupported; v++)
            if (!versions[(int)v - 1].Supported)
                throw new ArgumentException($"supported versions must be contiguous from 1; {v} is not");
        foreach (var f in versions.Where(v => v.Supported).SelectMany(v => v.Features))
        {
            switch (f.Class)
            {
                case FeatureClass.Compat: KnownCompat |= f.Mask; break;
                case FeatureClass.RoCompat: KnownRoCompat |= f.Mask; break;
                default: KnownIncompat |= f.Mask; break;
            }
        }
        KnownIncompat |= IncompatUpgradeInProgress;
    }

    /// <summary>Incompat bit 62: set while an upgrade job may have written state older software cannot read.</summary>
    public const ulong IncompatUpgradeInProgress = 1UL << 62;

    public const uint MinSupported = 1;

    /// <summary>The feature whose pools frame their log as WAL v2 (docs/format.md, "WAL v2").</summary>
    public const string WalV2Feature = "wal_v2";

    /// <summary>The feature whose pools log small writes into durable chunks and write them in place (docs/format.md, "Deferred writes").</summary>
    public const string DeferredWritesFeature = "deferred_writes";

    /// <summary>
    /// Whether a pool at this layout frames its log as WAL v2 (the layout includes <see cref="WalV2Feature"/>).
    /// The shard header records each log's framing: a job between the switch and the layout switch
    /// writes v2 at the older layout.
    /// </summary>
    public bool HasWalV2(uint layout) =>
        _all.Take((int)Math.Min(layout, (uint)_all.Count)).SelectMany(v => v.Features).Any(f => f.Name == WalV2Feature);

    /// <summary>Every version the catalog describes, supported by this build or not (what `pool upgrade --list` prints).</summary>
    public IReadOnlyList<LayoutVersion> Versions => _all;

    public IReadOnlyList<StrataRelease> Releases { get; }

    /// <summary>Newest layout this engine opens and upgrades to (new pools get it).</summary>
    public uint MaxSupported { get; }

    public ulong KnownCompat { get; }

    public ulong KnownRoCompat { get; }

    public ulong KnownIncompat { get; }

    public LayoutVersion this[uint version] => version >= 1 && version <= _all.Count
        ? _all[(int)version - 1]
        : throw new ArgumentOutOfRangeException(nameof(version), $"layout version {version} is not in the catalog (1..{_all.Count})");

    /// <summary>The feature words a pool at this version carries (all features up to it).</summary>
    public (ulong Compat, ulong RoCompat, ulong Incompat) FeatureWords(uint version)
    {
        if (version < 1 || version > MaxSupported)
            throw new ArgumentOutOfRangeException(nameof(version), $"layout version {version} is not supported by this engine ({MinSupported}..{MaxSupported})");
        ulong c = 0, r = 0, i = 0;
        foreach (var f in _all.Take((int)version).SelectMany(v => v.Features))
        {
            switch (f.Class)
            {
                case FeatureClass.Compat: c |= f.Mask; break;
                case FeatureClass.RoCompat: r |= f.Mask; break;
                default: i |= f.Mask; break;
            }
        }
        return (c, r, i);
    }

    /// <summary>The features whose actions take a pool from one version to another, in order.</summary>
    public IReadOnlyList<LayoutFeature> Chain(uint from, uint to) =>
        _all.Where(v => v.Version > from && v.Version <= to).SelectMany(v => v.Features).ToList();

    /// <summary>The feature a name refers to, or null.</summary>
    public LayoutFeature? Find(string name) => _all.SelectMany(v => v.Features).FirstOrDefault(f => f.Name == name);

    /// <summary>Whether a feature is enabled in a pool at this layout version (Ozone's isAllowed).</summary>
    public bool IsEnabled(string feature, uint poolVersion) =>
        Find(feature) is { } f ? f.Version <= poolVersion : throw new ArgumentException($"no layout feature '{feature}'", nameof(feature));

    /// <summary>Newest layout a `compatibility` value allows ("off" = no pin), or null when the value is unknown.</summary>
    public uint? CompatibilityLimit(string value)
    {
        if (value == "off")
            return (uint)_all.Count;
        return Releases.FirstOrDefault(r => r.Name == value)?.MaxLayout;
    }

    /// <summary>This catalog as a release that supports versions up to maxLayout only (the tests' "older software").</summary>
    public LayoutCatalog Truncate(uint maxLayout)
    {
        if (maxLayout < 1 || maxLayout > MaxSupported)
            throw new ArgumentOutOfRangeException(nameof(maxLayout), $"--max-layout {maxLayout} is outside 1..{MaxSupported}");
        return new LayoutCatalog(_all.Select(v => v.Version <= maxLayout ? v : v with { Supported = false }).ToList(), Releases);
    }

    /// <summary>Formats a set of bits as names where the catalog knows them ("0x6 (block_checksums, bit 1)").</summary>
    public string DescribeBits(ulong bits, FeatureClass cls)
    {
        var parts = new List<string>();
        for (int i = 0; i < 64; i++)
        {
            if ((bits & (1UL << i)) == 0)
                continue;
            var f = _all.SelectMany(v => v.Features).FirstOrDefault(x => x.Bit == i && x.Class == cls);
            parts.Add(f != null ? $"{f.Name} (layout {f.Version})" : cls == FeatureClass.Incompat && i == 62 ? "upgrade_in_progress" : $"bit {i}");
        }
        return $"0x{bits:x} ({string.Join(", ", parts)})";
    }

    /// <summary>The catalog of this build.</summary>
    public static LayoutCatalog Default { get; } = new(
    [
        new(1, "base: pool/container/image metadata, placement v1, one CRC32C per chunk",
        [
            new("base", 1, FeatureClass.Incompat, 0, ActionKind.MetadataOnly,
                "pool, container and image metadata; placement v1 (hash modulo targets); one CRC32C per chunk", null),
        ], Supported: true),
        new(2, "pool properties scrub and reclaim; container property compression",
        [
            new("pool_props_v2", 2, FeatureClass.Compat, 0, ActionKind.MetadataOnly,
                "pool properties 'scrub' (off, lazy, timed) and 'reclaim' (disabled, lazy, time), set to their defaults",
                null),
            new("container_compression", 2, FeatureClass.Incompat, 1, ActionKind.MetadataOnly,
                "container property 'compression' for containers created at layout 2 or later (containers created earlier cannot enable it)",
                null),
        ], Supported: true),
        new(3, "one CRC32C per 4 KiB block",
        [
            new("block_checksums", 3, FeatureClass.Incompat, 2, ActionKind.DataScan,
                "one CRC32C per 4 KiB block instead of one per chunk: every chunk above 4 KiB is read, checked against its chunk CRC and rewritten with a 4 KiB block table (online; paced by migrate_rate)",
                null),
        ], Supported: true),
        new(4, "placement v2",
        [
            new("placement_v2", 4, FeatureClass.Incompat, 3, ActionKind.DataMovement,
                "placement by jump consistent hash with replica spreading: chunks whose target changes are copied, verified, switched, then freed; needs free space",
                null),
        ], Supported: true),
        new(5, "write-ahead log v2",
        [
            new(WalV2Feature, 5, FeatureClass.Incompat, 4, ActionKind.LogFormat,
                "write-ahead log v2, checksummed batches: one header and CRC32C per batch, compact records (a 4 KiB write's record 30 bytes instead of 56); every shard is checkpointed and its log restarted in the new format",
                null),
        ], Supported: true),
        new(6, "deferred small writes",
        [
            new(DeferredWritesFeature, 6, FeatureClass.Incompat, 5, ActionKind.MetadataOnly,
                "small writes into durable chunks with block tables log their blocks (record ChunkDeferred) and are written in place once the record is durable, instead of copying the whole chunk; older software could not replay such a log, so it must refuse the pool (docs/format.md, \"Deferred writes\")",
                null),
        ], Supported: true),
    ],
    [
        new("strata-1.0", 1),
        new("strata-1.1", 2),
        new("strata-1.2", 3),
        new("strata-1.3", 4),
        new("strata-1.4", 5),
        new("strata-1.5", 6),
    ]);
}
