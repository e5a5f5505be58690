using System.Security.Cryptography;
using Strata.Engine.Device;
using Strata.Engine.Pools;
using Strata.Engine.Store;

namespace Strata.Store.Tests;

/// <summary>White-box helpers: find where a chunk lives, rewrite headers, hash devices.</summary>
internal static class TestHelpers
{
    /// <summary>Device offset of each replica of a chunk.</summary>
    public static (MemoryBlockDevice Device, long Offset, int Target)[] ReplicaLocations(Pool pool, Image image, long chunk)
    {
        var meta = pool.Meta.Images[image.Id];
        return meta.Chunks[chunk].Replicas.Select(r =>
        {
            var shard = pool.Shards[r.Target];
            return ((MemoryBlockDevice)shard.Device, shard.Base + shard.Header.DataOffset + r.Offset, (int)r.Target);
        }).ToArray();
    }

    public static string Sha256(MemoryBlockDevice device)
    {
        var all = new byte[device.Geometry.Capacity];
        device.ReadBytes(0, all);
        return Convert.ToHexString(SHA256.HashData(all));
    }

    public static string Sha256(IEnumerable<MemoryBlockDevice> devices) => string.Join(",", devices.Select(Sha256));

    /// <summary>Offset of the (only) pool's shard on a target, from its superblock.</summary>
    public static async Task<long> ShardOffsetAsync(MemoryBlockDevice device)
    {
        var r = await HeaderCopies.ReadAsync<TargetSuperblock>(device, 0, TargetSuperblock.Decode, s => s.Generation);
        return r.Best!.Extents.Single().Offset;
    }

    /// <summary>Rewrites both shard header copies of every target through a transform (as a newer or broken engine would).</summary>
    public static async Task RewriteShardHeadersAsync(MemoryBlockDevice[] devices, Func<ShardHeader, ShardHeader> change)
    {
        foreach (var d in devices)
        {
            long at = await ShardOffsetAsync(d);
            var r = await HeaderCopies.ReadAsync<ShardHeader>(d, at, ShardHeader.Decode, h => h.Generation);
            var h = change(r.Best!);
            for (ulong g = 1; g <= 2; g++)
            {
                var copy = h with { Generation = h.Generation + g };
                d.WriteBytes(at + (long)((copy.Generation % 2) * HeaderCopies.CopySize), copy.Encode());
            }
        }
    }

    /// <summary>Which copy (0 = A, 1 = B) of the shard header on a device is the newest.</summary>
    public static async Task<int> NewestShardHeaderCopyAsync(MemoryBlockDevice d)
    {
        long at = await ShardOffsetAsync(d);
        var r = await HeaderCopies.ReadAsync<ShardHeader>(d, at, ShardHeader.Decode, h => h.Generation);
        return r.BestCopy;
    }

    public static void FlipByte(MemoryBlockDevice d, long offset)
    {
        var b = new byte[1];
        d.ReadBytes(offset, b);
        b[0] ^= 0x5A;
        d.WriteBytes(offset, b);
    }
}
