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
    private const byte ChunkHasMove = 1;

    public static byte[] Serialize(PoolState s)
    {
        var w = new MetaWriter();
        Section(w, SectionPool, p =>
        {
            p.U32(s.NextContainerId).U32(s.NextImageId);
            Props(p, s.Props);
        });
        Section(w, SectionContainers, p =>
        {
            p.U32((uint)s.Containers.Count);
            foreach (var c in s.Containers.Values.OrderBy(c => c.Id))
            {
                p.U32(c.Id).Str(c.Label);
                Props(p, c.Props);
            }
        });
        Section(w, SectionImages, p =>
        {
            p.U32((uint)s.Images.Count);
            foreach (var i in s.Images.Values.OrderBy(i => i.Id))
            {
                p.U32(i.Id).U32(i.Container).Str(i.Label).I64(i.Size).U32((uint)i.ChunkSize);
                Props(p, i.Props);
                p.I64(i.Chunks.Count);
                foreach (var (index, map) in i.Chunks.OrderBy(kv => kv.Key))
                {
                    p.I64(index).Byte(map.Moving != null ? ChunkHasMove : (byte)0);
                    MetaRecords.WriteReplicas(p, map.Replicas);
                    if (map.Moving != null)
                        MetaRecords.WriteReplicas(p, map.Moving);
                }
            }
        });
        if (s.UpgradeJob is { } j)
            Section(w, SectionUpgradeJob, p =>
            {
                p.U64(j.Id).U32(j.From).U32(j.To).Byte((byte)j.State).U32(j.Action).U64(j.Cursor);
                if (j.Reason != null)
                    p.Str(j.Reason);
            });
        if (s.Layout is { } l)
            Section(w, SectionLayout, p => p.U32(l.Version).U64(l.Compat).U64(l.RoCompat).U64(l.Incompat));
        return w.ToArray();
    }

    /// <summary>
    /// Bytes the chunk maps take in a checkpoint; the slot reserves room for every
    /// possible chunk separately, so only the rest counts against the metadata room.
    /// </summary>
    public static long ChunkBytes(PoolState s)
    {
        long total = 0;
        foreach (var i in s.Images.Values)
            foreach (var m in i.Chunks.Values)
                total += 10 + 14 * m.Replicas.Length + (m.Moving == null ? 0 : 1 + 14 * m.Moving.Length);
        return total;
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
                        var i = new ImageMeta { Id = body.U32(), Container = body.U32(), Label = body.Str(), Size = body.I64(), ChunkSize = (int)body.U32() };
                        ReadProps(ref body, i.Props);
                        for (long k = body.I64(); k > 0; k--)
                        {
                            long index = body.I64();
                            byte chunkFlags = body.Byte();
                            var replicas = MetaRecords.ReadReplicas(ref body);
                            var moving = (chunkFlags & ChunkHasMove) != 0 ? MetaRecords.ReadReplicas(ref body) : null;
                            i.Chunks[index] = new ChunkMap(replicas, moving);
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
