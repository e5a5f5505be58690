/*
 * qpair.c - the queue-pair half of the ABI, common to every backend.
 *
 * Submission is all or nothing: the whole batch is checked (depth, every
 * command, free slots) before the backend sees any of it, so a caller that
 * gets an error knows nothing was started.  Details are only built on those
 * error paths; the success path does no formatting and takes no lock
 * unless fault injection is on.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "backend.h"
#include "error.h"

enum { DRAIN_BATCH = 64 };
/* How long destroy waits per round while draining. */
static const uint64_t DRAIN_WAIT_US = 100000;

const char *sio_op_name(uint8_t op)
{
    switch (op) {
    case SIO_OP_READ: return "read";
    case SIO_OP_WRITE: return "write";
    case SIO_OP_FLUSH: return "flush";
    case SIO_OP_TRIM: return "trim";
    case SIO_OP_WRITE_ZEROES: return "write_zeroes";
    default: return "?";
    }
}

int32_t sio_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out_qpair)
{
    if (dev == NULL || out_qpair == NULL)
        return sio_fail(-EINVAL, "sio_qpair_create: %s is NULL", dev == NULL ? "dev" : "out_qpair");
    *out_qpair = NULL;
    if (depth == 0)
        depth = dev->geo.queue_depth;
    if (depth > SIO_MAX_QUEUE_DEPTH)
        return sio_fail(-EINVAL, "queue depth %u is over the limit %u", depth, (unsigned)SIO_MAX_QUEUE_DEPTH);
    struct sio_fault_action *actions = calloc(depth, sizeof *actions);
    if (actions == NULL)
        return sio_fail(-ENOMEM, "out of memory creating a queue pair of depth %u", depth);
    sio_qpair *qp = NULL;
    int32_t rc = dev->ops->qpair_create(dev, depth, &qp);
    if (rc != 0) {
        free(actions);
        return rc;
    }
    qp->dev = dev;
    qp->depth = depth;
    qp->inflight = 0;
    qp->actions = actions;
    atomic_fetch_add(&dev->live_qpairs, 1);
    *out_qpair = qp;
    return 0;
}

int32_t sio_qpair_destroy(sio_qpair *qp)
{
    if (qp == NULL)
        return sio_fail(-EINVAL, "sio_qpair_destroy: qpair is NULL");
    sio_completion scratch[DRAIN_BATCH];
    while (qp->inflight != 0) {
        uint32_t n = 0;
        if (qp->dev->ops->wait(qp, scratch, DRAIN_BATCH, DRAIN_WAIT_US, &n) != 0)
            break; /* the backend's teardown cancels what is left */
        qp->inflight -= n;
    }
    sio_device *dev = qp->dev;
    free(qp->actions);
    dev->ops->qpair_destroy(qp);
    atomic_fetch_sub(&dev->live_qpairs, 1);
    return 0;
}

int32_t sio_qpair_register_region(sio_qpair *qp, void *base, uint64_t length)
{
    if (qp == NULL || base == NULL)
        return sio_fail(-EINVAL, "sio_qpair_register_region: %s is NULL", qp == NULL ? "qpair" : "base");
    if (length == 0)
        return sio_fail(-EINVAL, "sio_qpair_register_region: length is 0");
    if ((uintptr_t)base + length < (uintptr_t)base)
        return sio_fail(-EINVAL, "sio_qpair_register_region: region wraps the address space");
    if (qp->dev->ops->register_region == NULL)
        return sio_fail(-ENOTSUP, "the %s backend does not use registered regions", qp->dev->ops->name);
    if (qp->inflight != 0)
        return sio_fail(-EBUSY, "cannot register a region with %u command%s in flight", qp->inflight,
                        qp->inflight == 1 ? "" : "s");
    return qp->dev->ops->register_region(qp, base, length);
}

static int32_t check_cmd(const sio_device *dev, const sio_cmd *c, uint32_t i)
{
    const sio_geometry *g = &dev->geo;
    uint64_t bs = g->logical_block_size;
    uint64_t capacity = g->block_count * bs;
    bool direct = (g->flags & SIO_DEV_F_DIRECT) != 0;
    if (c->opcode > SIO_OP_WRITE_ZEROES)
        return sio_fail(-EINVAL, "command %u: unknown opcode %u", i, c->opcode);
    const char *name = sio_op_name(c->opcode);
    if ((c->flags & ~(unsigned)SIO_CMD_F_FUA) != 0 || c->reserved != 0)
        return sio_fail(-EINVAL, "command %u (%s): unknown flags 0x%x or nonzero reserved field", i, name, c->flags);
    if (c->opcode == SIO_OP_FLUSH)
        return 0;
    if (c->opcode != SIO_OP_READ && (g->flags & SIO_DEV_F_READ_ONLY))
        return sio_fail(-EROFS, "command %u (%s): the device is read-only", i, name);
    if (c->length == 0)
        return sio_fail(-EINVAL, "command %u (%s): zero length", i, name);
    if (c->opcode == SIO_OP_READ || c->opcode == SIO_OP_WRITE) {
        if (c->buf == NULL)
            return sio_fail(-EINVAL, "command %u (%s): buf is NULL", i, name);
        if (c->length > g->max_transfer)
            return sio_fail(-EINVAL, "command %u (%s): length %u is over max_transfer %u", i, name, c->length,
                            g->max_transfer);
        if (direct && (uintptr_t)c->buf % g->buffer_alignment != 0)
            return sio_fail(-EINVAL, "command %u (%s): buffer %p is not aligned to %u bytes (direct device)", i,
                            name, c->buf, g->buffer_alignment);
    }
    if (direct && (c->offset % bs != 0 || c->length % bs != 0))
        return sio_fail(-EINVAL,
                        "command %u (%s): offset %" PRIu64 " or length %u is not a multiple of the block size %u "
                        "(direct device)",
                        i, name, c->offset, c->length, g->logical_block_size);
    if (c->offset > capacity || c->length > capacity - c->offset)
        return sio_fail(-ERANGE, "command %u (%s): %u bytes at offset %" PRIu64 " end past the device end %" PRIu64,
                        i, name, c->length, c->offset, capacity);
    return 0;
}

int32_t sio_qpair_submit(sio_qpair *qp, const sio_cmd *cmds, uint32_t count)
{
    if (qp == NULL)
        return sio_fail(-EINVAL, "sio_qpair_submit: qpair is NULL");
    if (count == 0)
        return 0;
    if (cmds == NULL)
        return sio_fail(-EINVAL, "sio_qpair_submit: cmds is NULL");
    if (count > qp->depth)
        return sio_fail(-E2BIG, "batch of %u commands is over the queue depth %u", count, qp->depth);
    sio_device *dev = qp->dev;
    for (uint32_t i = 0; i < count; i++) {
        int32_t rc = check_cmd(dev, &cmds[i], i);
        if (rc != 0)
            return rc;
    }
    uint32_t free_slots = qp->depth - qp->inflight;
    if (count > free_slots)
        return sio_fail(-EAGAIN, "batch of %u commands, only %u of %u slots free (poll first)", count, free_slots,
                        qp->depth);
    struct sio_fault_action *acts = qp->actions;
    if (sio_faults_enabled(&dev->faults)) {
        sio_faults_decide(&dev->faults, &dev->geo, cmds, count, acts);
    } else {
        for (uint32_t i = 0; i < count; i++)
            acts[i].kind = SIO_FAULT_NONE;
    }
    int32_t rc = dev->ops->submit(qp, cmds, acts, count);
    if (rc != 0)
        return rc;
    qp->inflight += count;
    return 0;
}

int32_t sio_qpair_poll(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count)
{
    if (qp == NULL || out_count == NULL || (out == NULL && max != 0))
        return sio_fail(-EINVAL, "sio_qpair_poll: %s is NULL", qp == NULL ? "qpair" : out_count == NULL ? "out_count" : "out");
    *out_count = 0;
    if (max == 0 || qp->inflight == 0)
        return 0;
    uint32_t n = 0;
    int32_t rc = qp->dev->ops->poll(qp, out, max, &n);
    qp->inflight -= n;
    *out_count = n;
    return rc;
}

int32_t sio_qpair_wait(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count)
{
    if (qp == NULL || out_count == NULL || (out == NULL && max != 0))
        return sio_fail(-EINVAL, "sio_qpair_wait: %s is NULL", qp == NULL ? "qpair" : out_count == NULL ? "out_count" : "out");
    *out_count = 0;
    if (max == 0)
        return 0;
    uint32_t n = 0;
    int32_t rc = qp->dev->ops->wait(qp, out, max, timeout_us, &n);
    qp->inflight -= n;
    *out_count = n;
    return rc;
}

int32_t sio_qpair_inflight(sio_qpair *qp, uint32_t *out_count)
{
    if (qp == NULL || out_count == NULL)
        return sio_fail(-EINVAL, "sio_qpair_inflight: %s is NULL", qp == NULL ? "qpair" : "out_count");
    *out_count = qp->inflight;
    return 0;
}
