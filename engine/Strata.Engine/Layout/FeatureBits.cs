namespace Strata.Engine.Layout;

/// <summary>
/// The layout versions and feature words this engine understands, in one place.
/// Semantics follow ext4: an unknown incompat bit refuses the open, an unknown
/// ro_compat bit allows only a read-only open, an unknown compat bit is ignored.
/// The numbers are part of the on-disk format (docs/format.md); never renumber.
/// </summary>
public static class FeatureBits
{
    /// <summary>Oldest layout version this engine opens.</summary>
    public const uint MinLayoutVersion = 1;

    /// <summary>Newest layout version this engine opens (and the one new pools get).</summary>
    public const uint MaxLayoutVersion = 1;

    /// <summary>Layout 1 "base": pool/container/image metadata, WAL v1, placement v1, one CRC32C per chunk.</summary>
    public const ulong IncompatBase = 1UL << 0;

    // Bits reserved for the catalog's later versions (docs/format.md). They are NOT
    // known to this engine, so a pool carrying them is refused (or opened read-only).
    public const ulong ReservedCompatPoolPropsV2 = 1UL << 0;
    public const ulong ReservedIncompatContainerCompression = 1UL << 1;
    public const ulong ReservedIncompatBlockChecksums = 1UL << 2;
    public const ulong ReservedIncompatPlacementV2 = 1UL << 3;
    public const ulong ReservedIncompatWalV2 = 1UL << 4;
    /// <summary>Set while an upgrade job runs, so older software never opens a half-upgraded pool.</summary>
    public const ulong ReservedIncompatUpgradeInProgress = 1UL << 62;

    public const ulong KnownCompat = 0;
    public const ulong KnownRoCompat = 0;
    public const ulong KnownIncompat = IncompatBase;

    /// <summary>Feature words a new pool of the given layout version records.</summary>
    public static (ulong Compat, ulong RoCompat, ulong Incompat) ForLayout(uint version) => version switch
    {
        1 => (0, 0, IncompatBase),
        _ => throw new ArgumentOutOfRangeException(nameof(version), $"layout version {version} is not supported by this engine ({MinLayoutVersion}..{MaxLayoutVersion})"),
    };

    /// <summary>Formats a set of bits as "bit 3, bit 62" for refusal messages.</summary>
    public static string DescribeBits(ulong bits)
    {
        var parts = new List<string>();
        for (int i = 0; i < 64; i++)
            if ((bits & (1UL << i)) != 0)
                parts.Add($"bit {i}");
        return $"0x{bits:x} ({string.Join(", ", parts)})";
    }
}
