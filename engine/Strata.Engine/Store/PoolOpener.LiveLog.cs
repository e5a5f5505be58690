using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Strata.Engine.Store;

/// <summary>
/// The open reads only the live part of a shard's log: from the head (where the checkpoint left it) to
/// the first batch that is not valid, plus that batch's bytes, instead of the whole region (up to
/// 64 MiB a shard, read at every open, also after a clean close that left nothing to replay).
/// </summary>
internal static partial class PoolOpener
{
    /// <summary>Bytes of the log read first, from the head on; each further read at least doubles what was read.</summary>
    internal const int FirstLogWindow = 64 * 1024;

    /// <summary>
    /// Replays a shard's log (<see cref="ReadLog"/>) reading it from the head in growing windows, and
    /// stops reading once every byte replay looked at was read: the replayed batches, and the header and
    /// stated length of the one that ended replay. The log image has the region's size and is zero where
    /// nothing was read, so the result is the one a read of the whole region gives. Bytes: how much was read.
    /// </summary>
    private static async Task<(List<WalRecord> Records, long Tail, ulong NextSeq, ulong Durable, long Bytes)> ReadLiveLogAsync(Shard s, Guid poolId)
    {
        var h = s.Header;
        long length = h.WalLength;
        int block = s.Device.Geometry.LogicalBlockSize;
        using var wal = new LogImage(length);
        long read = 0;
        long want = Math.Min(length, DeviceIo.AlignUp(Math.Max(FirstLogWindow, block), block));
        while (true)
        {
            await ReadFromHeadAsync(s, wal, read, want).ConfigureAwait(false);
            read = want;
            var (records, tail, nextSeq, durable) = ReadLog(wal.Span, h, poolId);
            long needed = read == length ? length : BytesReplayNeeds(wal.Span, h, tail, nextSeq);
            if (needed <= read)
                return (records, tail, nextSeq, durable, read);
            want = Math.Min(length, DeviceIo.AlignUp(Math.Max(needed, 2 * read), block));
        }
    }

    /// <summary>Reads the log bytes [from, to) counted from the head (the region wraps at its end) into their places in <paramref name="wal"/>.</summary>
    private static async Task ReadFromHeadAsync(Shard s, LogImage wal, long from, long to)
    {
        long head = s.Header.WalHead, length = wal.Length;
        var piece = ArrayPool<byte>.Shared.Rent((int)Math.Min(to - from, MaxLogPiece));
        try
        {
            while (from < to)
            {
                long at = (head + from) % length;
                int n = (int)Math.Min(Math.Min(to - from, length - at), MaxLogPiece);
                await DeviceIo.ReadAsync(s.Device, s.WalStart + at, piece.AsMemory(0, n)).ConfigureAwait(false);
                piece.AsSpan(0, n).CopyTo(wal.Span.Slice((int)at, n));
                from += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(piece);
        }
    }

    private const int MaxLogPiece = 1024 * 1024;

    /// <summary>
    /// A log region's image in zeroed native memory (calloc: the kernel maps zero pages as they are
    /// first touched, so a 64 MiB region of which 64 KiB is read costs 64 KiB). A managed array of the
    /// region's size cost up to 650 ms each under load (a clear of 64 MiB, or a GC for it).
    /// </summary>
    private sealed unsafe class LogImage : IDisposable
    {
        private byte* _bytes;

        public LogImage(long length)
        {
            Length = checked((int)length);
            _bytes = (byte*)NativeMemory.AllocZeroed((nuint)length);
        }

        public int Length { get; }

        public Span<byte> Span
        {
            get
            {
                ObjectDisposedException.ThrowIf(_bytes == null, this);
                return new Span<byte>(_bytes, Length);
            }
        }

        public void Dispose()
        {
            NativeMemory.Free(_bytes);
            _bytes = null;
        }
    }

    /// <summary>
    /// Log bytes from the head that a replay ending at <paramref name="tail"/> depends on: those it replayed,
    /// and those of the batch (v1: record) at the tail that ended it, as far as its header says it reaches
    /// (at most the region's end, where a batch ends). Only read bytes count: a header not yet read asks for
    /// itself first.
    /// </summary>
    internal static long BytesReplayNeeds(ReadOnlySpan<byte> wal, ShardHeader h, long tail, ulong nextSeq)
    {
        long length = wal.Length;
        long replayed = (tail - h.WalHead + length) % length;
        // Back at the head with records replayed: a whole lap (a full log).
        if (replayed == 0 && nextSeq > h.CheckpointSeq + 1)
            return length;
        bool v2 = h.WalFormat == WalFormatV2.Format;
        int headerSize = v2 ? WalFormatV2.HeaderSize : WalFormat.HeaderSize;
        long room = length - tail;
        if (room < headerSize)
            return replayed; // no batch fits before the region's end: replay ends here whatever is read
        var at = wal[(int)tail..];
        // v2: without the magic the decoder looks no further than the header. A length past the region's
        // end fails the decoder before it reads the body (WalFormat.TryDecode, WalFormatV2.TryDecodeBatch).
        long stated = v2
            ? BinaryPrimitives.ReadUInt32LittleEndian(at) == WalFormatV2.Magic ? BinaryPrimitives.ReadUInt32LittleEndian(at[24..]) : 0
            : BinaryPrimitives.ReadUInt32LittleEndian(at);
        return replayed + (stated > headerSize && stated <= room ? stated : headerSize);
    }
}
