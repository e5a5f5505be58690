namespace Strata.Engine.Nbd;

/// <summary>
/// The worker of large writes (<see cref="NbdServerOptions.ParallelPayloadBytes"/>): a thread of the
/// connection's own, started at its first large write and ended with the transmission. The receive
/// loop queues a write once its payload is in and reads (and decrypts) the next payload while the
/// worker writes this one (the page-cache copy, CRC32C) on the machine's other core; the worker
/// answers a write that completed on its thread itself when the socket is free. A thread of its own,
/// not the thread pool: a pool work item per write woke a second pool thread as well (the pool asks
/// for one more whenever it takes an item), and the write row's server CPU per MiB rose by a quarter.
/// </summary>
internal sealed partial class NbdConnection
{
    /// <summary>This transmission's worker; null until the first large write.</summary>
    private PayloadWorker? _worker;

    private sealed class PayloadWorker
    {
        private readonly NbdConnection _conn;
        private readonly object _lock = new();
        /// <summary>A ring of the queued requests: never more than the connection's request slots.</summary>
        private readonly NbdRequest?[] _queue;
        private int _head, _count;
        private bool _waiting, _ending;
        private readonly Thread _thread;

        public PayloadWorker(NbdConnection conn)
        {
            _conn = conn;
            _queue = new NbdRequest?[conn.Options.MaxInFlight];
            Done = new ReplyList(conn.Options.MaxInFlight);
            _thread = new Thread(Run) { IsBackground = true, Name = "NBD worker" };
            _thread.Start();
        }

        /// <summary>The worker thread's managed id (0 before it runs).</summary>
        public int ThreadId { get; private set; }

        /// <summary>Replies completed on the worker's thread, not yet sent (only that thread touches them).</summary>
        public ReplyList Done { get; }

        public void Queue(NbdRequest r)
        {
            lock (_lock)
            {
                _queue[(_head + _count) % _queue.Length] = r;
                _count++;
                if (_waiting)
                    Monitor.Pulse(_lock);
            }
        }

        /// <summary>The transmission is over (every request answered): the thread ends once its queue is empty.</summary>
        public void End()
        {
            lock (_lock)
            {
                _ending = true;
                if (_waiting)
                    Monitor.Pulse(_lock);
            }
        }

        private void Run()
        {
            ThreadId = Environment.CurrentManagedThreadId;
            while (true)
            {
                NbdRequest r;
                lock (_lock)
                {
                    while (_count == 0)
                    {
                        if (_ending)
                            return;
                        _waiting = true;
                        Monitor.Wait(_lock);
                        _waiting = false;
                    }
                    r = _queue[_head]!;
                    _queue[_head] = null;
                    _head = (_head + 1) % _queue.Length;
                    _count--;
                }
                try
                {
                    r.Start();
                    if (Done.Count > 0)
                    {
                        // A reply is 16 bytes (a record over TLS): the send completes at once unless the
                        // client stopped reading, when this thread may wait (it has nothing else to do).
                        var send = _conn.SendRepliesAsync(Done);
                        if (send.IsCompletedSuccessfully)
                            send.GetAwaiter().GetResult();
                        else
                            send.AsTask().GetAwaiter().GetResult();
                    }
                }
                catch (Exception e)
                {
                    _conn.OnUnexpectedError(e);
                }
            }
        }
    }
}
