using Strata.Engine.Layout;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>Options of pool creation that tests and operators may tune.</summary>
public sealed record PoolCreateOptions
{
    /// <summary>WAL bytes per shard (0 = 1/32 of the shard's data, 256 KiB..64 MiB).</summary>
    public long WalBytes { get; init; }

    /// <summary>Smallest chunk size an image of this pool may use; sizes the checkpoint slots.</summary>
    public int MinChunkSize { get; init; } = 64 * 1024;

    /// <summary>Room in each checkpoint slot for containers, images and properties (beyond chunk maps).</summary>
    public long MetadataBytes { get; init; } = 512 * 1024;

    /// <summary>Layout version of the new pool; 0 = the newest this engine supports. An older one keeps the pool openable by older releases.</summary>
    public uint LayoutVersion { get; init; }

    public static PoolCreateOptions Default { get; } = new();
}

/// <summary>Computes a new pool's shard regions (identical on every target).</summary>
internal static class PoolLayoutPlan
{
    public const int MaxChunkSize = 1024 * 1024;
    public const long MinWal = 128 * 1024;
    /// <summary>Checkpoint bytes per mapped chunk (index, flags, two replicas) with margin.</summary>
    public const int CheckpointBytesPerChunk = 48;

    public static ShardHeader Plan(string label, Guid pool, long size, int targets, int blockSize, PoolCreateOptions o, Layout.LayoutCatalog catalog)
    {
        uint layout = o.LayoutVersion == 0 ? catalog.MaxSupported : o.LayoutVersion;
        if (layout < Layout.LayoutCatalog.MinSupported || layout > catalog.MaxSupported)
            throw new InvalidRequestException($"layout version {layout} is not supported by this engine ({Layout.LayoutCatalog.MinSupported}..{catalog.MaxSupported})");
        if (o.MinChunkSize < ExtentAllocator.Unit || o.MinChunkSize > MaxChunkSize || (o.MinChunkSize & (o.MinChunkSize - 1)) != 0)
            throw new InvalidRequestException($"minimum chunk size {o.MinChunkSize} is not a power of two between {ExtentAllocator.Unit} and {MaxChunkSize}");
        // Checked: the size comes from outside. StorageEngine.CreatePoolAsync bounds it first (SizeLimits),
        // far below 2^63, so a throw here is a bug, not input.
        checked
        {
            long data = DeviceIo.AlignUp(size / targets + (size % targets != 0 ? 1 : 0), 64 * 1024);
            long wal = o.WalBytes > 0 ? DeviceIo.AlignUp(o.WalBytes, blockSize) : Math.Clamp(DeviceIo.AlignUp(data / 32, blockSize), 256 * 1024, 64L * 1024 * 1024);
            if (wal < MinWal)
                throw new InvalidRequestException($"WAL of {wal} bytes is smaller than the minimum {MinWal}");
            long maxChunks = data * targets / o.MinChunkSize;
            long ckpt = DeviceIo.AlignUp(Checkpoint.HeaderSize + o.MetadataBytes + maxChunks * CheckpointBytesPerChunk, 64 * 1024);
            long walOffset = ShardHeader.Size;
            long ckpt0 = DeviceIo.AlignUp(walOffset + wal, blockSize);
            long ckpt1 = ckpt0 + ckpt;
            long dataOffset = DeviceIo.AlignUp(ckpt1 + ckpt, 64 * 1024);
            long shard = DeviceIo.AlignUp(dataOffset + data, TargetSuperblock.ExtentAlignment);
            var (compat, ro, incompat) = catalog.FeatureWords(layout);
            return new ShardHeader
            {
                LayoutVersion = layout,
                Compat = compat,
                RoCompat = ro,
                Incompat = incompat,
                WalFormat = catalog.HasWalV2(layout) ? WalFormatV2.Format : 1,
                PoolId = pool,
                TargetCount = targets,
                Generation = 1,
                ShardLength = shard,
                WalOffset = walOffset,
                WalLength = wal,
                Checkpoint0Offset = ckpt0,
                Checkpoint1Offset = ckpt1,
                CheckpointLength = ckpt,
                DataOffset = dataOffset,
                DataLength = data,
                ActiveCheckpoint = 0,
                MinChunkSize = o.MinChunkSize,
                CheckpointSeq = 0,
                WalHead = 0,
                CreatedUnixMicros = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() * 1000,
                Label = label,
            };
        }
    }
}
