/*
 * strata_io.h - the one flat C ABI of libstrata_io.
 *
 * libstrata_io gives the managed engine polled queue pairs over a block
 * device, whatever the backend (io_uring on a file or block device today,
 * SPDK's user-space NVMe driver where SPDK is installed).  Rules of the ABI:
 *   - every function returns int32_t: 0 on success or a negative errno;
 *     results come back through out-pointers;
 *   - handles are opaque pointers; a queue pair is used by one thread only;
 *   - EINTR and short transfers are retried inside the shim;
 *   - no callback ever crosses into the caller on the I/O path.
 * The C# mirror (interop/Strata.Interop/Generated/StrataIo.g.cs) is
 * generated from this file: change the ABI here, bump SIO_ABI_VERSION, and
 * regenerate. A shipped struct field never moves.
 */
#ifndef STRATA_IO_H
#define STRATA_IO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SIO_API __attribute__((visibility("default")))
#else
#define SIO_API
#endif

/** Version constants of the ABI. */
enum sio_abi {
    /** ABI version this header describes; the managed side refuses a library reporting another. */
    SIO_ABI_VERSION = 4,
};

/** Limits of the ABI. */
enum sio_limits {
    /** Largest queue depth a queue pair accepts. */
    SIO_MAX_QUEUE_DEPTH = 4096,
    /** Largest single command transfer in bytes (64 MiB). */
    SIO_MAX_TRANSFER = 67108864,
    /** Most buffer regions one queue pair can register. */
    SIO_MAX_REGISTERED_REGIONS = 64,
    /** Size of the per-thread error detail text, including the terminating NUL. */
    SIO_ERROR_DETAIL_MAX = 256,
    /** Most descriptors one sio_fd_send passes (the kernel's SCM_MAX_FD is 253). */
    SIO_MAX_PASSED_FDS = 250,
    /** Most segments one vectored call takes (the kernel's IOV_MAX). */
    SIO_MAX_IOVECS = 1024,
};

/** Command opcodes. */
enum sio_opcode {
    /** Read length bytes at offset into buf. */
    SIO_OP_READ = 0,
    /** Write length bytes from buf at offset. */
    SIO_OP_WRITE = 1,
    /** Make every completed write durable (offset, length and buf ignored). */
    SIO_OP_FLUSH = 2,
    /** Deallocate a range; it reads back as zeroes afterwards (buf ignored). */
    SIO_OP_TRIM = 3,
    /** Write zeroes to a range without a data buffer (buf ignored). */
    SIO_OP_WRITE_ZEROES = 4,
};

/** Command flags. */
enum sio_cmd_flags {
    SIO_CMD_F_NONE = 0,
    /** Force unit access: the write is durable when it completes. */
    SIO_CMD_F_FUA = 1,
};

/** Device flags reported in sio_geometry.flags. */
enum sio_device_flags {
    /** The device was opened for direct I/O: buffers, offsets and lengths must be block aligned. */
    SIO_DEV_F_DIRECT = 1,
    /** Queue pairs use a kernel submission-polling thread. */
    SIO_DEV_F_SQPOLL = 2,
    /** TRIM is supported and zeroes the range. */
    SIO_DEV_F_TRIM = 4,
    /** The device has a volatile write cache: FLUSH is needed for durability. */
    SIO_DEV_F_VOLATILE_CACHE = 8,
    /** Fault injection is configured on this device. */
    SIO_DEV_F_FAULTS = 16,
    /** The device was opened read-only. */
    SIO_DEV_F_READ_ONLY = 32,
    /**
     * A completion with an error status records a detail (sio_error_detail on
     * the polling thread, for example the NVMe status) and is the last one of
     * the batch its poll or wait returned.
     */
    SIO_DEV_F_COMPLETION_DETAIL = 64,
    /**
     * Reads may be served from the page cache on the calling thread
     * (sio_device_read_cached): a file or block device opened without O_DIRECT.
     */
    SIO_DEV_F_CACHED_READ = 128,
    /**
     * Writes without FUA may be copied into the page cache on the calling thread
     * (sio_device_write_cached): opened without O_DIRECT and with cached_writes
     * (the default then).
     */
    SIO_DEV_F_CACHED_WRITE = 256,
};

/** Backend kinds reported in sio_geometry.backend. */
enum sio_backend_kind {
    SIO_BACKEND_URING = 1,
    SIO_BACKEND_SPDK = 2,
};

/** An opened device (opaque). */
typedef struct sio_device sio_device;

/** A submission/completion queue pair bound to one polling thread (opaque). */
typedef struct sio_qpair sio_qpair;

/** Geometry and capabilities of an opened device. */
typedef struct sio_geometry {
    /** Size in bytes of the smallest addressable block. */
    uint32_t logical_block_size;
    /** Preferred transfer size in bytes. */
    uint32_t optimal_io_size;
    /** Capacity in logical blocks. */
    uint64_t block_count;
    /** Required alignment in bytes of data buffers. */
    uint32_t buffer_alignment;
    /** Default queue depth of new queue pairs (the URI's qd option). */
    uint32_t queue_depth;
    /** Largest single transfer in bytes. */
    uint32_t max_transfer;
    /** SIO_DEV_F_* bits. */
    uint32_t flags;
    /** SIO_BACKEND_* value. */
    uint32_t backend;
    /** Reserved, zero. */
    uint32_t reserved;
} sio_geometry;

/** One command of a submission batch. */
typedef struct sio_cmd {
    /** Caller's tag, returned unchanged in the completion. */
    uint64_t tag;
    /** Byte offset on the device. */
    uint64_t offset;
    /** Data buffer (READ and WRITE), from sio_dma_alloc when the device is direct. */
    void *buf;
    /** Length in bytes. */
    uint32_t length;
    /** SIO_OP_* value. */
    uint8_t opcode;
    /** SIO_CMD_F_* bits. */
    uint8_t flags;
    /** Reserved, zero. */
    uint16_t reserved;
} sio_cmd;

/** One completion. */
typedef struct sio_completion {
    /** The tag of the completed command. */
    uint64_t tag;
    /** 0 or a negative errno. */
    int32_t status;
    /** Bytes transferred (READ and WRITE), else 0. */
    uint32_t bytes;
} sio_completion;

/** One segment of a vectored transfer (sio_device_readv_cached, sio_device_writev_cached). */
typedef struct sio_iovec {
    /** First byte of the segment. */
    void *base;
    /** Length in bytes, at least 1; need not be block aligned. */
    uint64_t length;
} sio_iovec;

/** Counters of the device's fault injector. */
typedef struct sio_fault_stats {
    /** Commands that the injector looked at (those matching its filters). */
    uint64_t ios_seen;
    /** Commands failed with EIO by fail_io, fail_every or fail_after. */
    uint64_t ios_failed;
    /** Flushes failed with EIO by fail_flush. */
    uint64_t flushes_failed;
    /** Writes torn by tear_write. */
    uint64_t writes_torn;
} sio_fault_stats;

/** Returns the ABI version of the loaded library (SIO_ABI_VERSION it was built with). */
SIO_API int32_t sio_abi_version(void);

/**
 * Copies the calling thread's last error detail (a one-line reason, for
 * example "unknown option 'foo'") into buf; empty when there is none.
 */
SIO_API int32_t sio_error_detail(char *buf, uint32_t buf_len);

/**
 * Sets the options of the process-wide SPDK environment ("key=value&...",
 * empty for the defaults): hugepages=0|1 (default 1), mem_size_mb=N (memory
 * reserved for DMA buffers and queues, 0 for SPDK's default), iova_mode=va|pa
 * (default: DPDK's choice; hugepages=0 needs va), core_mask=HEX (default 0x1),
 * shm_id=N (-1, the default, keeps the process private), pci=0|1 (scan the
 * PCI bus, default 1; 0 for NVMe-oF only).  The environment starts when the
 * first nvme-* device opens; before that a call replaces the options, after
 * it a call with the same options succeeds and any other fails with -EBUSY.
 * Malformed options fail with -EINVAL in every build; a library built
 * without SPDK then fails with -ENOTSUP.  options NULL changes nothing and
 * only reports whether SPDK is built in (0, else -ENOTSUP).
 */
SIO_API int32_t sio_env_configure(const char *options);

/**
 * Opens a device by URI: file:PATH[?opt=value&...], nvme-tcp://HOST:PORT/SUBNQN[?opt=value&...] or
 * nvme-pcie://DDDD:BB:DD.F[?opt=value&...] (the nvme schemes only where built with SPDK, else -ENOTSUP).
 * NVMe options: ns=N (namespace id, default 1), qd=N (default queue depth, default 128), ro=0|1,
 * trim=auto|deallocate|zeroes (TRIM deallocates where deallocated blocks read back zeroes, else
 * writes zeroes; deallocate vouches for the device), write_zeroes=0|1 (0 writes a zeroed buffer
 * instead of the Write Zeroes command).
 * File options:
 * create=1 (create when missing), size=BYTES (with K/M/G/T suffix: the size
 * to create at, or the least size an existing file must have), direct=0|1
 * (O_DIRECT, default 1), qd=N (default queue depth, 1..4096, default 128),
 * sqpoll=0|1, block=512|4096 (logical block size, default 4096), ro=0|1,
 * lock=0|1 (an advisory lock, exclusive or shared with ro=1, default 1;
 * -EBUSY when another opener holds it), cached_writes=0|1 (with direct=0:
 * writes without FUA may go through sio_device_write_cached, default 1;
 * cached_writes=1 with direct=1 is -EINVAL).
 * Fault options: see sio_device_set_faults.
 */
SIO_API int32_t sio_device_open(const char *uri, sio_device **out_dev);

/** Closes a device; every queue pair must have been destroyed first (else -EBUSY). */
SIO_API int32_t sio_device_close(sio_device *dev);

/** Reports the device's geometry and capabilities. */
SIO_API int32_t sio_device_geometry(sio_device *dev, sio_geometry *out_geometry);

/**
 * Replaces the device's fault-injection configuration (spec as in the URI,
 * without '?': "fail_io=N&fail_every=N&fail_after=N&fail_flush=N|all&
 * tear_write=N&tear_bytes=B&tear_ok=1&
 * fail_ops=read,write,flush,trim,zeroes&fail_range=START-END"); an empty
 * spec clears it and its counters. fail_io fails the Nth matching command
 * once, fail_every every Nth, fail_after every one after the Nth (a device
 * that stops working), fail_flush the Nth flush (or all), tear_write writes
 * only tear_bytes of the Nth matching write (default half, block aligned)
 * and completes it with -EIO, or with success when tear_ok=1.
 */
SIO_API int32_t sio_device_set_faults(sio_device *dev, const char *spec);

/** Reports the fault injector's counters. */
SIO_API int32_t sio_device_fault_stats(sio_device *dev, sio_fault_stats *out_stats);

/**
 * Reads length bytes at offset on the calling thread, only if they are all in
 * the page cache (preadv2 with RWF_NOWAIT): no queue pair, no polling thread,
 * nothing blocks. Returns 0 when buf holds them; -EAGAIN when they are not all
 * cached, the read would block, it failed, or fault injection is configured
 * (the caller then submits a READ through a queue pair, which reports errors
 * with their detail); -ENOTSUP when the device lacks SIO_DEV_F_CACHED_READ.
 * Offset and length follow the READ command's rules. Thread-safe.
 */
SIO_API int32_t sio_device_read_cached(sio_device *dev, void *buf, uint32_t length, uint64_t offset);

/**
 * Copies length bytes to offset through the page cache on the calling thread
 * (pwrite; no queue pair, no polling thread, no io_uring worker). The write is
 * not durable until a FLUSH, as any write without FUA. It may block while the
 * kernel throttles dirty pages. Returns 0 when written; -EAGAIN when the write
 * failed or fault injection is configured (the caller then submits a WRITE
 * through a queue pair, which reports errors with their detail); -ENOTSUP when
 * the device lacks SIO_DEV_F_CACHED_WRITE. Offset and length follow the WRITE
 * command's rules. Thread-safe.
 */
SIO_API int32_t sio_device_write_cached(sio_device *dev, const void *buf, uint32_t length, uint64_t offset);

/**
 * sio_device_read_cached into iovcnt segments (1..SIO_MAX_IOVECS) that lie
 * one after another on the device from offset, in one preadv2: a block
 * table and the data after it cost one syscall. A segment may have any
 * length of at least 1 byte; their total follows the READ command's rules.
 * All or nothing: 0 when every segment holds its bytes, else -EAGAIN (some
 * page not cached, the read would block, it failed, or fault injection is
 * configured; the segments' contents are then undefined), as with
 * sio_device_read_cached; -EINVAL for a bad count, a NULL or empty segment
 * or a total the READ command refuses; -ENOTSUP when the device lacks
 * SIO_DEV_F_CACHED_READ. Thread-safe.
 */
SIO_API int32_t sio_device_readv_cached(sio_device *dev, const sio_iovec *iov, uint32_t iovcnt, uint64_t offset);

/**
 * sio_device_write_cached from iovcnt segments (1..SIO_MAX_IOVECS) that go
 * one after another on the device from offset, in one pwritev2. A segment
 * may have any length of at least 1 byte; their total follows the WRITE
 * command's rules. 0 when all is written, else -EAGAIN (the write failed or
 * fault injection is configured; the caller then writes the range through a
 * queue pair, which reports errors with their detail); -EINVAL for a bad
 * count, a NULL or empty segment or a total the WRITE command refuses;
 * -ENOTSUP when the device lacks SIO_DEV_F_CACHED_WRITE. Thread-safe.
 */
SIO_API int32_t sio_device_writev_cached(sio_device *dev, const sio_iovec *iov, uint32_t iovcnt, uint64_t offset);

/** Allocates a zeroed DMA-able buffer of size bytes aligned to at least align (power of two, 0 for the device's). */
SIO_API int32_t sio_dma_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out_buf);

/** Frees a buffer from sio_dma_alloc. */
SIO_API int32_t sio_dma_free(sio_device *dev, void *buf);

/** Creates a queue pair of the given depth (0 for the device's default); one per polling thread. */
SIO_API int32_t sio_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out_qpair);

/** Destroys a queue pair, waiting for the commands it still has in flight. */
SIO_API int32_t sio_qpair_destroy(sio_qpair *qpair);

/**
 * Registers a buffer region with the queue pair so commands whose buffers
 * lie inside it skip per-I/O page pinning.  Only with no command in flight
 * (else -EBUSY); -ENOTSUP where the backend does not need it.
 */
SIO_API int32_t sio_qpair_register_region(sio_qpair *qpair, void *base, uint64_t length);

/**
 * Submits a batch of commands, all or none: -EAGAIN when fewer than count
 * slots are free, -E2BIG when count exceeds the queue depth, -EINVAL for a
 * malformed command (unknown opcode, zero length, a buffer, offset or length
 * not aligned on a direct device, a transfer over max_transfer), -ERANGE for
 * a command past the device's end, -EROFS for a write to a read-only device;
 * on any of these nothing is submitted and sio_error_detail names the
 * command's index and the reason.  Errors the device reports (EIO) come back
 * in the command's completion.
 */
SIO_API int32_t sio_qpair_submit(sio_qpair *qpair, const sio_cmd *cmds, uint32_t count);

/** Reaps up to max completions into out without blocking; *out_count says how many. */
SIO_API int32_t sio_qpair_poll(sio_qpair *qpair, sio_completion *out, uint32_t max, uint32_t *out_count);

/**
 * Like sio_qpair_poll but waits up to timeout_us microseconds for at least
 * one completion when none is ready; *out_count is 0 on timeout.
 */
SIO_API int32_t sio_qpair_wait(sio_qpair *qpair, sio_completion *out, uint32_t max, uint64_t timeout_us,
                               uint32_t *out_count);

/** Reports the number of commands submitted and not yet reaped. */
SIO_API int32_t sio_qpair_inflight(sio_qpair *qpair, uint32_t *out_count);

/**
 * Sends length bytes (at least 1) on a connected Unix stream socket, with
 * fd_count descriptors (0..SIO_MAX_PASSED_FDS) attached to the first byte
 * (SCM_RIGHTS): the receiver gets them with the read that takes that byte.
 * Retries EINTR and short sends (the descriptors go once). -EINVAL for a bad
 * count or length, else the negative errno of sendmsg (-EPIPE: the peer is
 * gone; -EAGAIN: the socket's send timeout passed).  The caller still owns
 * the descriptors (the receiver gets duplicates).
 */
SIO_API int32_t sio_fd_send(int32_t sock, const void *data, uint32_t length, const int32_t *fds, uint32_t fd_count);

/**
 * Receives exactly length bytes from a connected Unix stream socket, and the
 * descriptors that came with them (close-on-exec) into fds, *out_fd_count of
 * them. Retries EINTR and short reads. -EPIPE when the peer closed before
 * length bytes came, -EMSGSIZE when more than max_fds descriptors came (all
 * received ones are closed), -EAGAIN when the socket's receive timeout passed,
 * else the negative errno of recvmsg.
 */
SIO_API int32_t sio_fd_recv(int32_t sock, void *data, uint32_t length, int32_t *fds, uint32_t max_fds,
                            uint32_t *out_fd_count);

/**
 * Marks a descriptor handed to another process as shared: clears its
 * close-on-exec flag, which is how the .NET runtime tells a socket that may
 * live on in another process (it then closes such a socket without shutting
 * the connection down).  -EBADF for a closed descriptor.
 */
SIO_API int32_t sio_fd_set_shared(int32_t fd);

#ifdef __cplusplus
}
#endif

#endif /* STRATA_IO_H */
