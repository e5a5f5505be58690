using System.Threading.Channels;
using Strata.Engine.Store;

namespace Strata.Engine.Pools;

/// <summary>
/// The pool's replicated write-ahead log with group commit: one committer loop
/// drains the queue, writes every waiting record to every shard's log in one
/// write per shard, flushes every shard once, applies the records to the state
/// in sequence order and only then completes the callers. It checkpoints when
/// the log is half full, so replay time stays bounded.
/// </summary>
internal sealed class PoolLog
{
    /// <summary>Records committed together (null: a checkpoint request).</summary>
    private sealed record Pending(MetaRecord[]? Records, TaskCompletionSource Done);

    private readonly Pool _pool;
    private readonly Channel<Pending> _queue = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    private readonly uint _seed;
    private readonly ulong _epoch;
    private readonly long _walLength;
    private readonly int _blockSize;
    private Task? _loop;
    private long _head;
    private long _tail;
    private ulong _nextSeq;

    public PoolLog(Pool pool, long tail, ulong nextSeq, ulong epoch)
    {
        _pool = pool;
        _epoch = epoch;
        _seed = WalFormat.Seed(pool.Id, epoch);
        _walLength = pool.Shards[0].Header.WalLength;
        _blockSize = pool.Shards.Max(s => s.Device.Geometry.LogicalBlockSize);
        _head = _tail = tail;
        _nextSeq = nextSeq;
    }

    /// <summary>Bytes of the log in use (between the checkpoint's head and the tail).</summary>
    public long Used => (_tail - _head + _walLength) % _walLength;

    /// <summary>Checkpoint bytes other than chunk maps, plus what was logged since (to refuse metadata that would not fit).</summary>
    public long MetadataEstimate { get; private set; }

    public ulong NextSeq => _nextSeq;

    public void Start() => _loop = Task.Run(LoopAsync);

    public async Task StopAsync()
    {
        _queue.Writer.TryComplete();
        if (_loop != null)
            await _loop.ConfigureAwait(false);
    }

    /// <summary>Completes when the record is durable on every shard and applied.</summary>
    public Task CommitAsync(MetaRecord record) => Enqueue([record]);

    /// <summary>Commits records in one batch, in order: a crash keeps a prefix of them (every record is checked on replay).</summary>
    public Task CommitManyAsync(IReadOnlyList<MetaRecord> records) => records.Count == 0 ? Task.CompletedTask : Enqueue([.. records]);

    /// <summary>Completes after a checkpoint that includes everything committed before the call.</summary>
    public Task CheckpointAsync() => Enqueue(null);

    private Task Enqueue(MetaRecord[]? records)
    {
        _pool.ThrowIfNotLoggable();
        foreach (var record in records ?? [])
            if (record.Payload.Length > WalFormat.MaxPayload)
                throw new InvalidRequestException($"metadata record of {record.Payload.Length} bytes exceeds {WalFormat.MaxPayload}");
        var p = new Pending(records, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        if (!_queue.Writer.TryWrite(p))
            throw new ObjectDisposedException($"pool '{_pool.Label}'", "the pool is closed");
        return p.Done.Task;
    }

    private async Task LoopAsync()
    {
        var batch = new List<Pending>();
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            batch.Clear();
            long bytes = 0;
            while (bytes < _walLength / 4 && reader.TryRead(out var p))
            {
                batch.Add(p);
                foreach (var r in p.Records ?? [])
                    bytes += WalFormat.EncodedLength(r.Payload.Length);
            }
            await CommitBatchAsync(batch).ConfigureAwait(false);
        }
    }

    private async Task CommitBatchAsync(List<Pending> batch)
    {
        try
        {
            _pool.ThrowIfNotLoggable();
            var records = batch.Where(p => p.Records != null).SelectMany(p => p.Records!).ToList();
            if (records.Count > 0)
            {
                ulong first = await WriteRecordsAsync(records).ConfigureAwait(false);
                ApplyAll(records, first);
                foreach (var p in batch.Where(p => p.Records != null))
                    p.Done.TrySetResult();
            }
            if (batch.Any(p => p.Records == null) || Used > _walLength / 2)
                await WriteCheckpointAsync().ConfigureAwait(false);
            foreach (var p in batch)
                p.Done.TrySetResult();
        }
        catch (Exception e)
        {
            if (e is not PoolReadOnlyException)
                _pool.Fail(e, "the metadata log");
            var error = e as StoreException ?? new PoolReadOnlyException($"pool '{_pool.Label}' is read-only: {_pool.ReadOnlyReason}", e);
            foreach (var p in batch)
                p.Done.TrySetException(error);
        }
    }

    private void ApplyAll(List<MetaRecord> records, ulong firstSeq)
    {
        var state = _pool.Meta;
        lock (state.Sync)
        {
            ulong seq = firstSeq;
            foreach (var r in records)
            {
                state.Apply(new WalRecord(seq++, (ushort)r.Type, r.Flags, r.Payload));
                if (r.Type is not (MetaRecordType.ChunkMap or MetaRecordType.ChunkUnmap))
                    MetadataEstimate += r.Payload.Length;
            }
            state.LastSeq = _nextSeq - 1;
        }
    }

    /// <summary>Writes the records as one batch to every shard and flushes; returns the first record's sequence.</summary>
    private async Task<ulong> WriteRecordsAsync(List<MetaRecord> records)
    {
        long total = records.Sum(r => (long)WalFormat.EncodedLength(r.Payload.Length));
        long padded = DeviceIo.AlignUp(total, _blockSize);
        if (padded - total is > 0 and < WalFormat.HeaderSize)
            padded += _blockSize;
        long wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
        if (Used + wrap + padded >= _walLength)
        {
            await WriteCheckpointAsync().ConfigureAwait(false);
            wrap = _tail + padded > _walLength ? _walLength - _tail : 0;
            if (wrap + padded >= _walLength)
                throw new InvalidRequestException($"a metadata batch of {padded} bytes does not fit the {_walLength}-byte log");
        }
        byte[]? wrapPad = null;
        if (wrap > 0)
        {
            wrapPad = new byte[wrap];
            WalFormat.Encode(wrapPad, _seed, _nextSeq++, WalFormat.PadType, 0, default, (int)wrap);
        }
        var buf = new byte[padded];
        ulong first = _nextSeq;
        int pos = 0;
        foreach (var r in records)
        {
            int len = WalFormat.EncodedLength(r.Payload.Length);
            WalFormat.Encode(buf.AsSpan(pos), _seed, _nextSeq++, (ushort)r.Type, r.Flags, r.Payload, len);
            pos += len;
        }
        if (pos < padded)
            WalFormat.Encode(buf.AsSpan(pos), _seed, _nextSeq++, WalFormat.PadType, 0, default, (int)(padded - pos));
        long at = wrap > 0 ? 0 : _tail;
        long wrapAt = _tail;
        await Task.WhenAll(_pool.Shards.Select(async s =>
        {
            if (wrapPad != null)
                await DeviceIo.WriteAsync(s.Device, s.WalStart + wrapAt, wrapPad).ConfigureAwait(false);
            await DeviceIo.WriteAsync(s.Device, s.WalStart + at, buf).ConfigureAwait(false);
        })).ConfigureAwait(false);
        await FlushAllAsync().ConfigureAwait(false);
        _tail = (at + padded) % _walLength;
        return first;
    }

    private Task FlushAllAsync() =>
        Task.WhenAll(_pool.Shards.Select(s => s.FlushAsync()));

    /// <summary>
    /// Serializes the state into every shard's inactive slot, flushes, then points
    /// each shard header at it (new generation) and flushes. Only then does the log
    /// head move, so a crash at any step replays from a checkpoint that exists.
    /// </summary>
    public async Task WriteCheckpointAsync()
    {
        var state = _pool.Meta;
        byte[] payload;
        string label;
        long chunkBytes;
        Store.ShardHeaderLayout layout;
        lock (state.Sync)
        {
            payload = PoolStateCodec.Serialize(state);
            chunkBytes = PoolStateCodec.ChunkBytes(state);
            label = state.Props["label"];
            layout = _pool.DurableLayout();
        }
        ulong seq = _nextSeq - 1;
        var ckpt = Checkpoint.Encode(_pool.Id, seq, _tail, payload, _blockSize);
        if (ckpt.Length > _pool.Shards[0].Header.CheckpointLength)
            throw new NoSpaceException($"no space left in pool '{label}': metadata of {ckpt.Length} bytes outgrew the {_pool.Shards[0].Header.CheckpointLength}-byte checkpoint area");
        await Task.WhenAll(_pool.Shards.Select(s =>
        {
            uint slot = s.Header.ActiveCheckpoint == 0 ? 1u : 0u;
            return DeviceIo.WriteAsync(s.Device, s.Base + s.Header.CheckpointOffset(slot), ckpt).AsTask();
        })).ConfigureAwait(false);
        await FlushAllAsync().ConfigureAwait(false);
        await Task.WhenAll(_pool.Shards.Select(async s =>
        {
            var h = s.Header with
            {
                ActiveCheckpoint = s.Header.ActiveCheckpoint == 0 ? 1u : 0u,
                CheckpointSeq = seq,
                WalHead = _tail,
                WalEpoch = _epoch,
                Label = label,
                // Headers follow the log: the layout the state is at, plus bit 62 while a job may
                // have written what older software cannot read (so it refuses before replaying).
                LayoutVersion = layout.Version,
                Compat = layout.Compat,
                RoCompat = layout.RoCompat,
                Incompat = layout.Incompat,
            };
            await s.WriteHeaderAsync(h).ConfigureAwait(false);
        })).ConfigureAwait(false);
        _head = _tail;
        MetadataEstimate = payload.Length - chunkBytes;
    }
}
