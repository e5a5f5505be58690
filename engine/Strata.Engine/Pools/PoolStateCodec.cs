using System.Buffers.Binary;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// Serializes the whole pool state into a checkpoint payload: a sequence of
/// sections (u16 type, u16 flags, u32 length, bytes). An engine skips an
/// unknown section only when its flags say it may (bit 0), so later versions can
/// add state without a format break. Section numbers are the contract.
/// </summary>
public static class PoolStateCodec
{
    private const ushort SectionPool = 1, SectionContainers = 2, SectionImages = 3, SectionUpgradeJob = 4, SectionLayout = 5;
    private const ushort FlagSkippable = 1;
    private const byte ChunkHasMove = 1, ChunkHasBlocks = 2;

    public static byte[] Serialize(PoolState s)
    {
        var capture = Capture(s);
        try
        {
            return capture.Encode();
        }
        finally
        {
            capture.Release();
        }
    }

    /// <summary>
    /// The chunk arrays a checkpoint captures into, reused from one checkpoint to the next by their owner
    /// (PoolLog: a few MiB for a large image, every few thousand writes, issue 17). They only grow, to a
    /// power of two at least the chunks of every image together: an image that fills up grows them a few
    /// times at most (as the array pools they replace, whose sizes were powers of two).
    /// One capture uses them at a time: the owner hands them to <see cref="Capture"/> and takes them back
    /// from <see cref="PoolStateCapture.Buffers"/> once the capture is released.
    /// </summary>
    public sealed class CaptureBuffers
    {
        internal long[] Keys = [];
        internal ChunkMap[] Maps = [];

        /// <summary>Room for <paramref name="chunks"/> (their content is not kept); <paramref name="exact"/>: no more (buffers used once).</summary>
        internal void EnsureRoom(int chunks, bool exact = false)
        {
            if (Keys.Length >= chunks)
                return;
            int length = exact ? chunks : (int)Math.Min((ulong)Array.MaxLength, System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)chunks));
            Keys = new long[length];
            Maps = new ChunkMap[length];
        }
    }

    /// <summary>
    /// What a checkpoint needs of the state, taken under the state's lock (<see cref="PoolState.Sync"/>)
    /// in time linear in the chunks and without sorting or encoding them: a checkpoint holds writers
    /// off only that long, and encodes outside the lock (<see cref="PoolStateCapture.Encode"/>). Chunk
    /// maps are immutable (records replace them), so copying the references is a consistent copy.
    /// </summary>
    /// <param name="buffers">
    /// Where the chunks go (the log's, reused; <see cref="PoolStateCapture.Release"/> clears them and the
    /// capture then gives them back through <see cref="PoolStateCapture.Buffers"/>); null: arrays of its own.
    /// </param>
    public static PoolStateCapture Capture(PoolState s, CaptureBuffers? buffers = null)
    {
        var head = new MetaWriter();
        Section(head, SectionPool, p =>
        {
            p.U32(s.NextContainerId).U32(s.NextImageId);
            Props(p, s.Props);
        });
        Section(head, SectionContainers, p =>
        {
            p.U32((uint)s.Containers.Count);
            foreach (var c in s.Containers.Values.OrderBy(c => c.Id))
            {
                p.U32(c.Id).Str(c.Label);
                Props(p, c.Props);
            }
        });
        long chunks = 0;
        foreach (var i in s.Images.Values)
            chunks += i.Chunks.Count;
        bool once = buffers == null;
        buffers ??= new CaptureBuffers();
        buffers.EnsureRoom(checked((int)chunks), exact: once);
        var images = new PoolStateCapture.ImageCapture[s.Images.Count];
        int n = 0, at = 0;
        foreach (var i in s.Images.Values)
        {
            var header = new MetaWriter();
            header.U32(i.Id).U32(i.Container).Str(i.Label).I64(i.Size).U32((uint)i.ChunkSize);
            Props(header, i.Props);
            int count = i.Chunks.Count;
            // The maps are encoded after the lock: none of them is reused until Release (ChunkTable.Hold).
            i.Chunks.Hold();
            i.Chunks.Keys.CopyTo(buffers.Keys, at);
            i.Chunks.Scan.CopyTo(buffers.Maps, at);
            images[n++] = new PoolStateCapture.ImageCapture(i.Id, header.ToArray(), at, count, i.Chunks);
            at += count;
        }
        return new PoolStateCapture(head.ToArray(), images, s.UpgradeJob, s.Layout, buffers, at);
    }

    /// <summary>
    /// A pool state as <see cref="Capture"/> took it; <see cref="Encode"/> lays it out as the checkpoint
    /// payload (containers, images and chunks in id order, so equal states encode equally).
    /// </summary>
    public sealed class PoolStateCapture
    {
        /// <summary>An image's header and its chunks: <see cref="Count"/> keys and maps of the buffers from <see cref="Start"/>.</summary>
        internal sealed record ImageCapture(uint Id, byte[] Header, int Start, int Count, ChunkTable Table);

        private readonly byte[] _head;
        private readonly ImageCapture[] _images;
        private readonly UpgradeJobMeta? _job;
        private readonly LayoutMeta? _layout;
        private readonly CaptureBuffers _buffers;
        private readonly int _chunks;
        private MetaWriter? _tail;
        private long _body;

        internal PoolStateCapture(byte[] head, ImageCapture[] images, UpgradeJobMeta? job, LayoutMeta? layout, CaptureBuffers buffers, int chunks)
        {
            _head = head;
            _images = images;
            _job = job;
            _layout = layout;
            _buffers = buffers;
            _chunks = chunks;
        }

        /// <summary>The arrays the chunks were captured into: their owner's to reuse once <see cref="Release"/> returned, never before.</summary>
        public CaptureBuffers Buffers => _buffers;

        /// <summary>Bytes the chunk maps take in the payload; the slot reserves room for every possible chunk separately, so only the rest counts against the metadata room.</summary>
        public long ChunkBytes { get; private set; }

        public byte[] Encode()
        {
            var payload = new byte[Measure()];
            EncodeInto(payload);
            return payload;
        }

        /// <summary>Sorts the chunks and returns the payload's length (what <see cref="EncodeInto"/> then writes).</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public int Measure()
        {
            var tail = new MetaWriter();
            if (_job is { } j)
                Section(tail, SectionUpgradeJob, p =>
                {
                    p.U64(j.Id).U32(j.From).U32(j.To).Byte((byte)j.State).U32(j.Action).U64(j.Cursor);
                    if (j.Reason != null)
                        p.Str(j.Reason);
                });
            if (_layout is { } l)
                Section(tail, SectionLayout, p => p.U32(l.Version).U64(l.Compat).U64(l.RoCompat).U64(l.Incompat));
            long chunkBytes = 0;
            long body = 4;
            var keys = _buffers.Keys;
            var maps = _buffers.Maps;
            foreach (var i in _images)
            {
                if (!Ascending(keys.AsSpan(i.Start, i.Count)))
                    Array.Sort(keys, maps, i.Start, i.Count);
                body += i.Header.Length + 8;
                for (int k = i.Start; k < i.Start + i.Count; k++)
                {
                    var m = maps[k];
                    chunkBytes += 9 + MetaRecords.ReplicasLength(m.Replicas) + (m.Moving == null ? 0 : MetaRecords.ReplicasLength(m.Moving));
                }
            }
            body += chunkBytes;
            ChunkBytes = chunkBytes;
            Array.Sort(_images, (a, b) => a.Id.CompareTo(b.Id));
            _tail = tail;
            _body = body;
            return checked(_head.Length + 8 + (int)body + tail.Length);
        }

        /// <summary>
        /// Lays the payload out into <paramref name="d"/>, exactly <see cref="Measure"/>'s length. Checkpoints
        /// are rare, so tiered compilation would leave this loop unoptimized for long: compiled fully at once.
        /// </summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void EncodeInto(Span<byte> d)
        {
            var tail = _tail ?? throw new InvalidOperationException("Measure comes first");
            long body = _body;
            _head.CopyTo(d);
            int at = _head.Length;
            BinaryPrimitives.WriteUInt16LittleEndian(d[at..], SectionImages);
            BinaryPrimitives.WriteUInt16LittleEndian(d[(at + 2)..], 0);
            BinaryPrimitives.WriteUInt32LittleEndian(d[(at + 4)..], (uint)body);
            BinaryPrimitives.WriteUInt32LittleEndian(d[(at + 8)..], (uint)_images.Length);
            at += 12;
            var keys = _buffers.Keys;
            var maps = _buffers.Maps;
            foreach (var i in _images)
            {
                i.Header.CopyTo(d[at..]);
                at += i.Header.Length;
                BinaryPrimitives.WriteInt64LittleEndian(d[at..], i.Count);
                at += 8;
                for (int k = i.Start; k < i.Start + i.Count; k++)
                {
                    var map = maps[k];
                    BinaryPrimitives.WriteInt64LittleEndian(d[at..], keys[k]);
                    d[at + 8] = (byte)((map.Moving != null ? ChunkHasMove : 0) | (map.Blocks ? ChunkHasBlocks : 0));
                    at += 9;
                    at += MetaRecords.EncodeReplicas(d[at..], map.Replicas);
                    if (map.Moving != null)
                        at += MetaRecords.EncodeReplicas(d[at..], map.Moving);
                }
            }
            tail.WrittenSpan.CopyTo(d[at..]);
        }

        /// <summary>
        /// Ends the capture's hold on the maps (their writes may reuse them once superseded) and clears the
        /// buffers' references to them (their owner may then reuse the buffers, <see cref="Buffers"/>); the
        /// capture is not encoded again. Called once, after encoding.
        /// </summary>
        public void Release()
        {
            Array.Clear(_buffers.Maps, 0, _chunks);
            foreach (var i in _images)
                i.Table.Release();
        }

        /// <summary>Chunks come out of the map in the order they were first written, often ascending already.</summary>
        private static bool Ascending(ReadOnlySpan<long> keys)
        {
            for (int k = 1; k < keys.Length; k++)
                if (keys[k] <= keys[k - 1])
                    return false;
            return true;
        }
    }

    public static PoolState Deserialize(ReadOnlySpan<byte> payload, ulong seq)
    {
        var s = new PoolState { LastSeq = seq };
        var r = new MetaReader(payload);
        while (r.Remaining > 0)
        {
            ushort type = r.U16(), flags = r.U16();
            int length = (int)r.U32();
            var body = new MetaReader(r.Bytes(length));
            switch (type)
            {
                case SectionPool:
                    s.NextContainerId = body.U32();
                    s.NextImageId = body.U32();
                    ReadProps(ref body, s.Props);
                    break;
                case SectionContainers:
                    for (uint n = body.U32(); n > 0; n--)
                    {
                        var c = new ContainerMeta { Id = body.U32(), Label = body.Str() };
                        ReadProps(ref body, c.Props);
                        s.Containers[c.Id] = c;
                    }
                    break;
                case SectionImages:
                    for (uint n = body.U32(); n > 0; n--)
                    {
                        uint id = body.U32(), container = body.U32();
                        var i = new ImageMeta { Id = id, Container = container, Label = body.Str(), Size = body.I64(), ChunkSize = ImageMeta.ReadChunkSize(body.U32(), id) };
                        ReadProps(ref body, i.Props);
                        for (long k = body.I64(); k > 0; k--)
                        {
                            long index = body.I64();
                            byte chunkFlags = body.Byte();
                            var replicas = MetaRecords.ReadReplicas(ref body);
                            var moving = (chunkFlags & ChunkHasMove) != 0 ? MetaRecords.ReadReplicas(ref body) : null;
                            if ((chunkFlags & ~(ChunkHasMove | ChunkHasBlocks)) != 0)
                                throw new CorruptMetadataException($"checkpoint image {id} chunk {index} has flags 0x{chunkFlags:x}, unknown to this engine");
                            var map = new ChunkMap(replicas, moving, (chunkFlags & ChunkHasBlocks) != 0);
                            // A map being moved is never reused (ChunkMapSpares.Return); the others are held by nothing yet.
                            if (moving == null)
                                i.Chunks.Install(index, map);
                            else
                                i.Chunks[index] = map;
                        }
                        s.Images[i.Id] = i;
                    }
                    break;
                case SectionUpgradeJob:
                    s.UpgradeJob = new UpgradeJobMeta(body.U64(), body.U32(), body.U32(), (UpgradeJobState)body.Byte(), body.U32(), body.U64(),
                        body.Remaining > 0 ? body.Str() : null);
                    break;
                case SectionLayout:
                    s.Layout = new LayoutMeta(body.U32(), body.U64(), body.U64(), body.U64());
                    break;
                default:
                    if ((flags & FlagSkippable) == 0)
                        throw new IncompatibleLayoutException($"checkpoint section {type} is unknown to this engine and not skippable; it was written by a newer engine");
                    break;
            }
        }
        return s;
    }

    private static void Section(MetaWriter w, ushort type, Action<MetaWriter> body)
    {
        var b = new MetaWriter();
        body(b);
        w.U16(type).U16(0).U32((uint)b.Length).Bytes(b.WrittenSpan);
    }

    private static void Props(MetaWriter w, Dictionary<string, string> props)
    {
        w.U32((uint)props.Count);
        foreach (var (k, v) in props.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            w.Str(k).Str(v);
    }

    private static void ReadProps(ref MetaReader r, Dictionary<string, string> props)
    {
        for (uint n = r.U32(); n > 0; n--)
            props[r.Str()] = r.Str();
    }
}
