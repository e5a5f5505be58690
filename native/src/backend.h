/*
 * backend.h - the seam between the flat ABI and each I/O backend.
 *
 * The public functions (device.c, qpair.c, dma.c) own everything common to
 * all backends: argument checks, command validation, queue-depth and
 * in-flight accounting, fault decisions and error details.  A backend only
 * opens its device, moves commands and reaps completions.  io_uring
 * (file:) is always built; the SPDK backend (nvme-pcie:, nvme-tcp:) is a
 * second table compiled in when pkg-config finds spdk_nvme and
 * spdk_env_dpdk (STRATA_HAVE_SPDK), registered in device.c.
 */
#ifndef SIO_BACKEND_H
#define SIO_BACKEND_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "faults.h"
#include "strata_io.h"
#include "uri.h"

struct sio_backend_ops;

/* Common head of every backend's device; backends embed it first. */
struct sio_device {
    const struct sio_backend_ops *ops;
    /* Filled by the backend's open, immutable afterwards (FAULTS is added on query). */
    sio_geometry geo;
    atomic_uint live_qpairs;
    struct sio_faults faults;
};

/* Common head of every backend's queue pair; backends embed it first. */
struct sio_qpair {
    sio_device *dev;
    uint32_t depth;
    /* Submitted and not yet reaped; only the owning thread touches it. */
    uint32_t inflight;
    /* Scratch for one batch's fault decisions, depth entries. */
    struct sio_fault_action *actions;
};

struct sio_backend_ops {
    const char *name;
    /*
     * Opens the device: consumes the options not marked used (reporting any
     * it does not know with -EINVAL), allocates the backend device with its
     * head zeroed and fills head.geo.  Records a detail on failure.
     */
    int32_t (*open)(struct sio_uri *uri, sio_device **out);
    void (*close)(sio_device *dev);
    int32_t (*dma_alloc)(sio_device *dev, uint64_t size, uint32_t align, void **out);
    void (*dma_free)(sio_device *dev, void *buf);
    /* Allocates the backend queue pair with its head zeroed; depth is already checked. */
    int32_t (*qpair_create)(sio_device *dev, uint32_t depth, sio_qpair **out);
    /* Frees a queue pair with nothing in flight. */
    void (*qpair_destroy)(sio_qpair *qp);
    /* NULL when the backend needs no registration (-ENOTSUP to the caller). */
    int32_t (*register_region)(sio_qpair *qp, void *base, uint64_t length);
    /*
     * Starts a validated batch that fits the free slots; acts[i] is the
     * fault action of cmds[i].  Must not fail once commands are accepted.
     */
    int32_t (*submit)(sio_qpair *qp, const sio_cmd *cmds, const struct sio_fault_action *acts, uint32_t count);
    int32_t (*poll)(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count);
    int32_t (*wait)(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count);
    /*
     * NULL without a page cache; else 0 or -EAGAIN (sio_device_read_cached and
     * the rest), arguments checked: iovcnt >= 1 segments of length bytes in all,
     * none empty. The backend may change iov (it is the caller's scratch).
     */
    int32_t (*rw_cached)(sio_device *dev, struct iovec *iov, uint32_t iovcnt, uint64_t length, uint64_t offset,
                         bool write);
};

extern const struct sio_backend_ops sio_uring_backend;
#ifdef STRATA_HAVE_SPDK
extern const struct sio_backend_ops sio_spdk_backend;
#endif

/* "read", "write", "flush", "trim", "write_zeroes" (or "?"), for details. */
const char *sio_op_name(uint8_t op);

/* Default DMA memory (posix_memalign, zeroed) for backends without special memory. */
int32_t sio_dma_heap_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out);
void sio_dma_heap_free(sio_device *dev, void *buf);

#endif /* SIO_BACKEND_H */
