using Strata.Engine.Device;
using Strata.Engine.Pools;

namespace Strata.Engine.Store;

/// <summary>A pool's extent on one target: its header, log, checkpoints and data area.</summary>
internal sealed class Shard
{
    public Shard(Target target, long baseOffset, ShardHeader header)
    {
        Target = target;
        Base = baseOffset;
        Header = header;
        Allocator = new ExtentAllocator(header.DataLength);
    }

    public Target Target { get; }

    public IBlockDevice Device => Target.Device;

    public int Index => Target.Index;

    /// <summary>Byte offset of the shard on its device (-1 until a reintegration reads it, for a target whose superblock could not be read).</summary>
    public long Base { get; set; }

    /// <summary>The newest durable header.</summary>
    public ShardHeader Header { get; set; }

    /// <summary>
    /// The device could not be read at the open, so <see cref="Header"/> is another shard's with this
    /// target's identity (same regions; PoolOpener.UnreadShard): its generation, checkpoint slot and
    /// log head are unknown until a reintegration reads the real header.
    /// </summary>
    public bool HeaderUnread { get; set; }

    public ExtentAllocator Allocator { get; }

    /// <summary>Makes completed writes durable, sharing the flush with concurrent callers.</summary>
    public Task FlushAsync() => Target.Flusher.FlushAsync();

    /// <summary>As <see cref="FlushAsync"/>, pooled: for a caller that awaits it exactly once and never calls AsTask.</summary>
    public ValueTask FlushOnceAsync() => Target.Flusher.FlushOnceAsync();

    public long WalStart => Base + Header.WalOffset;

    /// <summary>Where the data area starts on the device.</summary>
    public long DataStart => Base + Header.DataOffset;

    /// <summary>Writes the header to both copies (generation + 1, then + 2) and makes it current.</summary>
    public async Task WriteHeaderAsync(ShardHeader h)
    {
        ulong last = await HeaderCopies.WriteBothAsync(Device, Base, Header.Generation, g => (h with { Generation = g }).Encode()).ConfigureAwait(false);
        Header = h with { Generation = last };
    }

    public ValueTask ReadDataAsync(long dataOffset, Memory<byte> destination) =>
        Overlay == null ? DeviceIo.ReadAsync(Device, Base + Header.DataOffset + dataOffset, destination) : ReadPatchedAsync(dataOffset, destination);

    /// <summary>
    /// Bytes served over the device's (a read-only open with deferred writes its replay could not write:
    /// PoolOpener.OverlayDeferred); null on every writable pool.
    /// </summary>
    public DataOverlay? Overlay { get; set; }

    private async ValueTask ReadPatchedAsync(long dataOffset, Memory<byte> destination)
    {
        await DeviceIo.ReadAsync(Device, Base + Header.DataOffset + dataOffset, destination).ConfigureAwait(false);
        Overlay?.Patch(dataOffset, destination.Span);
    }

    public ValueTask WriteDataAsync(long dataOffset, ReadOnlyMemory<byte> source) =>
        DeviceIo.WriteAsync(Device, Base + Header.DataOffset + dataOffset, source);

    /// <summary>As <see cref="WriteDataAsync"/>, pooled: for a caller that awaits it exactly once and never calls AsTask.</summary>
    public ValueTask WriteDataPooledAsync(long dataOffset, ReadOnlyMemory<byte> source) =>
        DeviceIo.WritePooledAsync(Device, Base + Header.DataOffset + dataOffset, source);

    /// <summary>A block table and its chunk right after it, in one device call where the device can (DeviceIo.ReadScatterAsync).</summary>
    public ValueTask ReadDataScatterAsync(long dataOffset, Memory<byte> head, Memory<byte> rest) =>
        Overlay == null ? DeviceIo.ReadScatterAsync(Device, Base + Header.DataOffset + dataOffset, head, rest) : ReadScatterPatchedAsync(dataOffset, head, rest);

    private async ValueTask ReadScatterPatchedAsync(long dataOffset, Memory<byte> head, Memory<byte> rest)
    {
        await DeviceIo.ReadScatterAsync(Device, Base + Header.DataOffset + dataOffset, head, rest).ConfigureAwait(false);
        Overlay?.Patch(dataOffset, head.Span);
        Overlay?.Patch(dataOffset + head.Length, rest.Span);
    }

    /// <summary>
    /// A block table and its chunk right after it, in one device call where the device can; awaited exactly
    /// once (DeviceIo.WriteGatherPooledAsync).
    /// </summary>
    public ValueTask WriteDataGatherPooledAsync(long dataOffset, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> rest) =>
        DeviceIo.WriteGatherPooledAsync(Device, Base + Header.DataOffset + dataOffset, head, rest);
}
