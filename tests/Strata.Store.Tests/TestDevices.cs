using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>Shared helpers: memory targets, small pools, patterned data.</summary>
internal static class TestDevices
{
    public const long TargetSize = 16L * 1024 * 1024;

    public static MemoryBlockDevice[] Memory(int count, long size = TargetSize) =>
        Enumerable.Range(0, count).Select(i => new MemoryBlockDevice($"mem{i}", size)).ToArray();

    /// <summary>Small regions so tests exercise wrap-around and checkpoints quickly.</summary>
    public static PoolCreateOptions SmallPool { get; } = new() { WalBytes = 128 * 1024, MinChunkSize = 4096, MetadataBytes = 64 * 1024 };

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static async Task<(StorageEngine Engine, InMemoryRasSink Ras)> FormatAsync(IBlockDevice[] devices)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.FormatAsync(devices, new StorageEngineOptions { Ras = ras });
        return (engine, ras);
    }

    public static async Task<(StorageEngine Engine, InMemoryRasSink Ras)> OpenAsync(IBlockDevice[] devices, bool readOnly = false)
    {
        var ras = new InMemoryRasSink();
        var engine = await StorageEngine.OpenAsync(devices, new StorageEngineOptions { Ras = ras, ReadOnly = readOnly });
        return (engine, ras);
    }
}
