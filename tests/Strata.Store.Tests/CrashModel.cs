using Strata.Engine.Pools;

namespace Strata.Store.Tests;

/// <summary>What the crash workload believes a pool holds: images in container "c", spare containers, rf.</summary>
internal sealed class CrashModel
{
    public sealed class Img
    {
        public byte[] Data = [];
        public int ChunkSize;
        /// <summary>
        /// Earlier contents a crash may bring back, chunk by chunk: the last durable one and every
        /// writeback write's since (a flush, or any durable write, empties it).
        /// </summary>
        public List<byte[]> Unflushed = [];

        public Img Clone() => new() { Data = (byte[])Data.Clone(), ChunkSize = ChunkSize, Unflushed = [.. Unflushed] };
    }

    /// <summary>Everything acknowledged is durable now (a flush round completed).</summary>
    public void Flushed()
    {
        foreach (var img in Images.Values)
            img.Unflushed.Clear();
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="off"/> of an image and records it (writeback: kept or lost until a flush).</summary>
    public async Task WriteAsync(Img img, Image handle, int off, byte[] data, bool durable)
    {
        if (!durable)
            img.Unflushed.Add((byte[])img.Data.Clone());
        data.CopyTo(img.Data, off);
        await handle.WriteAsync(off, data, durable);
        if (durable)
            Flushed();
    }

    public Dictionary<string, Img> Images = new();
    public HashSet<string> Containers = new() { "c" };
    public Dictionary<string, string> ContainerProps = new();
    public string Rf = "1";

    public CrashModel Clone() => new()
    {
        Images = Images.ToDictionary(kv => kv.Key, kv => kv.Value.Clone()),
        Containers = new HashSet<string>(Containers),
        ContainerProps = new Dictionary<string, string>(ContainerProps),
        Rf = Rf,
    };

    /// <summary>
    /// Checks a reopened pool: it must equal the model after the last acknowledged
    /// operation, except where the operation in flight at the crash (before → after)
    /// may or may not have happened; image data may differ from both only chunk by chunk.
    /// </summary>
    public static async Task VerifyAsync(Pool pool, CrashModel before, CrashModel? after, string context)
    {
        after ??= before;
        string rf = pool.GetProperty("rf");
        if (rf != before.Rf && rf != after.Rf)
            throw new AssertFailedException($"{context}: rf is {rf}, expected {before.Rf} or {after.Rf}");
        var containers = pool.ListContainers().Select(c => c.Label).ToHashSet();
        if (!containers.SetEquals(before.Containers) && !containers.SetEquals(after.Containers))
            throw new AssertFailedException($"{context}: containers are [{string.Join(",", containers.Order())}], expected [{string.Join(",", before.Containers.Order())}] or [{string.Join(",", after.Containers.Order())}]");
        foreach (var (key, value) in before.ContainerProps.Concat(after.ContainerProps).DistinctBy(kv => kv.Key))
        {
            var parts = key.Split('/');
            if (!containers.Contains(parts[0]))
                continue;
            string? actual = null;
            try
            {
                actual = pool.GetContainerProperty(parts[0], parts[1]);
            }
            catch (Engine.Store.NotFoundException)
            {
            }
            before.ContainerProps.TryGetValue(key, out var b);
            after.ContainerProps.TryGetValue(key, out var a);
            if (actual != b && actual != a)
                throw new AssertFailedException($"{context}: container property {key} is '{actual}', expected '{b}' or '{a}'");
        }
        var actualImages = pool.ListImages("c").ToDictionary(i => i.Label);
        foreach (var label in before.Images.Keys.Union(after.Images.Keys).Union(actualImages.Keys))
        {
            before.Images.TryGetValue(label, out var b);
            after.Images.TryGetValue(label, out var a);
            if (!actualImages.TryGetValue(label, out var info))
            {
                if (b != null && a != null)
                    throw new AssertFailedException($"{context}: image {label} is missing");
                continue;
            }
            if (b == null && a == null)
                throw new AssertFailedException($"{context}: image {label} exists but was never acknowledged");
            if (info.Size != b?.Data.Length && info.Size != a?.Data.Length)
                throw new AssertFailedException($"{context}: image {label} has size {info.Size}, expected {b?.Data.Length} or {a?.Data.Length}");
            var data = new byte[info.Size];
            await pool.OpenImage("c", label).ReadAsync(0, data);
            int cs = info.ChunkSize;
            for (long at = 0; at < data.Length; at += cs)
            {
                int n = (int)Math.Min(cs, data.Length - at);
                var actual = data.AsSpan((int)at, n);
                if (!Matches(actual, b, at) && !Matches(actual, a, at) && !MatchesAny(actual, b, a, at))
                {
                    int first = 0;
                    var expect = (b ?? a)!.Data;
                    while (first < n && at + first < expect.Length && actual[first] == expect[at + first])
                        first++;
                    throw new AssertFailedException($"{context}: image {label} chunk at {at}: wrong bytes (first difference at {at + first}) — neither the acknowledged nor the in-flight contents, nor unflushed writeback ones");
                }
            }
        }
    }

    private static bool Matches(ReadOnlySpan<byte> actual, Img? img, long at) => img != null && Matches(actual, img.Data, at);

    /// <summary>Whether the chunk holds one of the unflushed writeback contents of either model.</summary>
    private static bool MatchesAny(ReadOnlySpan<byte> actual, Img? before, Img? after, long at)
    {
        foreach (var img in new[] { before, after })
            if (img != null)
                foreach (var u in img.Unflushed)
                    if (Matches(actual, u, at))
                        return true;
        return false;
    }

    private static bool Matches(ReadOnlySpan<byte> actual, byte[] data, long at)
    {
        for (int i = 0; i < actual.Length; i++)
        {
            long p = at + i;
            byte expect = p < data.Length ? data[p] : (byte)0;
            if (actual[i] != expect)
                return false;
        }
        return true;
    }
}
