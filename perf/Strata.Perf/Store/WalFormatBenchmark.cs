using System.Diagnostics;
using System.Globalization;
using Strata.Engine.Pools;
using Strata.Engine.Store;
using Strata.Perf.Common;

namespace Strata.Perf.Store;

/// <summary>
/// WAL v1 against WAL v2 framing (docs/format.md, "WAL v2"), in memory: log bytes and CPU per commit
/// batch of k 4 KiB client writes (one ChunkMap record each), laid out exactly as PoolLog lays out a
/// round (v1: DurableThrough mark, records, pad to the block; v2: batch header, compact records, zeros
/// to the block), then replayed. No device: the figures are the framing's own.
/// </summary>
public static class WalFormatBenchmark
{
    public const string Usage = """
        wal-format: WAL v1 vs v2 framing, bytes and CPU per commit batch of k 4 KiB writes (in memory)
          --batches LIST     records per batch, comma-separated (default 1,8,64,256)
          --block N          log block size (default 4096)
          --iterations N     batches encoded and replayed per row (default 20000)
        """;

    public static Task<int> RunAsync(CommandLine cl)
    {
        var sizes = (cl.String("batches") ?? "1,8,64,256").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int block = cl.Int("block", 4096);
        int iterations = cl.Int("iterations", 20_000);
        cl.ThrowIfUnused();
        var table = new TablePrinter("rf", "writes/batch", "v1 bytes/write", "v2 bytes/write", "v1 batch bytes", "v2 batch bytes", "v1 encode", "v2 encode", "v1 replay", "v2 replay");
        var pool = Guid.NewGuid();
        foreach (int rf in new[] { 1, 2 })
        {
            foreach (int k in sizes)
            {
                var records = Enumerable.Range(0, k).Select(c => MetaRecords.ChunkMap(1, c, Enumerable.Range(0, rf).Select(r => new Replica((ushort)r, c * 4096L, 0x1234_5678)).ToArray())).ToArray();
                var v1 = EncodeV1(records, pool, block);
                var v2 = EncodeV2(records, pool, block);
                double e1 = Time(iterations, () => EncodeV1(records, pool, block));
                double e2 = Time(iterations, () => EncodeV2(records, pool, block));
                uint s1 = WalFormat.Seed(pool, 1), s2 = WalFormatV2.Seed(pool, 1);
                double r1 = Time(iterations, () => WalFormat.Replay(v1, 0, s1, 1));
                double r2 = Time(iterations, () => WalFormatV2.Replay(v2, 0, s2, 1, 0));
                if (WalFormat.Replay(v1, 0, s1, 1).Records.Count != k + 1 || WalFormatV2.Replay(v2, 0, s2, 1, 0).Records.Count != k)
                    throw new InvalidOperationException("a batch did not replay whole");
                int body1 = records.Sum(r => WalFormat.EncodedLength(r.Payload.Length));
                int body2 = records.Sum(r => WalFormatV2.RecordLength(r.Payload.Length));
                table.Add(rf.ToString(CultureInfo.InvariantCulture), k.ToString(CultureInfo.InvariantCulture),
                    (body1 / (double)k).ToString("0", CultureInfo.InvariantCulture), (body2 / (double)k).ToString("0", CultureInfo.InvariantCulture),
                    v1.Length.ToString(CultureInfo.InvariantCulture), v2.Length.ToString(CultureInfo.InvariantCulture),
                    TablePrinter.Latency(e1), TablePrinter.Latency(e2), TablePrinter.Latency(r1), TablePrinter.Latency(r2));
            }
        }
        Console.WriteLine($"framing of one commit batch of k 4 KiB writes (ChunkMap records), {block}-byte log blocks; CPU per batch (median of 5 runs of {iterations})");
        Console.WriteLine(table);
        return Task.FromResult(0);
    }

    private static double Time(int iterations, Action body)
    {
        var runs = new double[5];
        for (int r = 0; r < runs.Length; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < iterations; i++)
                body();
            runs[r] = Stopwatch.GetElapsedTime(t0).TotalNanoseconds / iterations;
        }
        Array.Sort(runs);
        return runs[runs.Length / 2];
    }

    /// <summary>As PoolLog.WriteRecordsAsync lays out a v1 round.</summary>
    private static byte[] EncodeV1(MetaRecord[] records, Guid pool, int block)
    {
        uint seed = WalFormat.Seed(pool, 1);
        int mark = WalFormat.EncodedLength(8);
        long total = mark + records.Sum(r => WalFormat.EncodedLength(r.Payload.Length));
        long padded = (total + block - 1) / block * block;
        if (padded - total is > 0 and < WalFormat.HeaderSize)
            padded += block;
        var buf = new byte[padded];
        ulong seq = 1;
        var m = MetaRecords.DurableThrough(0);
        WalFormat.Encode(buf, seed, seq++, (ushort)m.Type, 0, m.Payload, mark);
        int pos = mark;
        foreach (var r in records)
        {
            int len = WalFormat.EncodedLength(r.Payload.Length);
            WalFormat.Encode(buf.AsSpan(pos), seed, seq++, (ushort)r.Type, r.Flags, r.Payload, len);
            pos += len;
        }
        if (pos < padded)
            WalFormat.Encode(buf.AsSpan(pos), seed, seq, WalFormat.PadType, 0, default, (int)(padded - pos));
        return buf;
    }

    /// <summary>As PoolLog.WriteBatchV2Async lays out a v2 round.</summary>
    private static byte[] EncodeV2(MetaRecord[] records, Guid pool, int block)
    {
        uint seed = WalFormatV2.Seed(pool, 1);
        long body = records.Sum(r => WalFormatV2.RecordLength(r.Payload.Length));
        var buf = new byte[(WalFormatV2.HeaderSize + body + block - 1) / block * block];
        int pos = WalFormatV2.HeaderSize;
        foreach (var r in records)
            pos += WalFormatV2.EncodeRecord(buf.AsSpan(pos), (ushort)r.Type, r.Flags, r.Payload);
        WalFormatV2.Seal(buf, seed, 1, 0, buf.Length, pos - WalFormatV2.HeaderSize);
        return buf;
    }
}
