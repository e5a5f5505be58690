/*
 * uring.h - private state of the io_uring backend (file: URIs).
 *
 * One io_uring per queue pair, the device fd registered in it as fixed
 * file 0.  Each command owns a slot (user_data = slot index) that lives
 * until its completion is reaped, so short transfers, EINTR/EAGAIN and the
 * TRIM/WRITE_ZEROES fallbacks are driven by re-issuing the same slot.
 */
#ifndef SIO_URING_H
#define SIO_URING_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "backend.h"

struct uring_device {
    struct sio_device head;
    int fd;
    bool sqpoll;
    bool blockdev;
};

/* What a slot's next (or current) SQE does. */
enum uring_stage {
    /* Complete with forced_status/forced_bytes without touching the device (injected faults). */
    STAGE_NOP,
    STAGE_RW,
    STAGE_FSYNC,
    STAGE_PUNCH,
    STAGE_ZERO,
};

struct uring_slot {
    uint64_t tag;
    uint64_t offset;
    char *buf;
    uint32_t length;
    /* Bytes to move before completing: length, or the tear length. */
    uint32_t limit;
    uint32_t done;
    int32_t forced_status;
    uint32_t forced_bytes;
    /* Registered buffer index for READ_FIXED/WRITE_FIXED, or -1. */
    int32_t buf_index;
    uint8_t opcode;
    uint8_t flags;
    uint8_t stage;
    uint8_t fault;
    bool fallback_tried;
    /* EINTR/EAGAIN re-issues in a row. */
    uint16_t retries;
};

struct uring_region {
    char *base;
    uint64_t length;
};

struct uring_qpair {
    struct sio_qpair head;
    struct io_uring ring;
    bool sqpoll;
    struct uring_slot *slots;
    uint32_t *free_slots;
    uint32_t nfree;
    /* SQEs prepared by poll (re-issues) and not yet submitted. */
    uint32_t unsubmitted;
    struct uring_region regions[SIO_MAX_REGISTERED_REGIONS];
    uint32_t nregions;
    /* The kernel's view of the regions: each cut into pieces of at most 1 GiB. */
    struct iovec *iovs;
    uint32_t niovs;
};

int32_t uring_open(struct sio_uri *uri, sio_device **out);
void uring_close(sio_device *dev);
int32_t uring_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out);
void uring_qpair_destroy(sio_qpair *qp);
int32_t uring_register_region(sio_qpair *qp, void *base, uint64_t length);
int32_t uring_submit(sio_qpair *qp, const sio_cmd *cmds, const struct sio_fault_action *acts, uint32_t count);
int32_t uring_poll(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count);
int32_t uring_wait(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count);

#endif /* SIO_URING_H */
