namespace Strata.Engine.Store;

internal static partial class PoolOpener
{
    /// <summary>Reads a shard's log region and replays it from the head (<see cref="ReadLog"/>); Bytes: how much was read.</summary>
    private static async Task<(List<WalRecord> Records, long Tail, ulong NextSeq, ulong Durable, long Bytes)> ReadLiveLogAsync(Shard s, Guid poolId)
    {
        var h = s.Header;
        var wal = new byte[h.WalLength];
        await DeviceIo.ReadAsync(s.Device, s.WalStart, wal).ConfigureAwait(false);
        var (records, tail, nextSeq, durable) = ReadLog(wal, h, poolId);
        return (records, tail, nextSeq, durable, wal.Length);
    }
}
