/*
 * spdk_qpair.c - SPDK I/O queue pairs: submit, poll, wait.
 *
 * poll calls spdk_nvme_qpair_process_completions only when no finished slot
 * is waiting to be handed out.  Over TCP that call is also what sends the
 * commands submitted since the last one, so while the caller drains a burst
 * of completions (and resubmits from it) the new commands collect and go out
 * together, as they do in spdk_nvme_perf's loop.
 *
 * A failed completion records its NVMe status as the thread's error detail
 * and ends the batch poll returns (SIO_DEV_F_COMPLETION_DETAIL), so the
 * caller reads the detail that belongs to the last completion it got.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "nvme_status.h"
#include "spdk.h"

/* Timeouts over ~11 days mean "forever". */
static const uint64_t FOREVER_US = 1000000000000ull;
/* wait spins this long before it starts yielding the CPU between polls. */
static const uint64_t WAIT_SPIN_NS = 50000;

static inline struct spdk_qp *to_q(sio_qpair *qp)
{
    return (struct spdk_qp *)qp;
}

static inline struct spdk_device *dev_of(struct spdk_qp *q)
{
    return (struct spdk_device *)q->head.dev;
}

static void free_q(struct spdk_qp *q)
{
    free(q->slots);
    free(q->free_slots);
    free(q->done);
    free(q);
}

int32_t spdk_backend_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out)
{
    struct spdk_device *d = (struct spdk_device *)dev;
    struct spdk_qp *q = calloc(1, sizeof *q);
    if (q == NULL)
        return sio_fail(-ENOMEM, "out of memory creating a queue pair of depth %u", depth);
    q->slots = calloc(depth, sizeof *q->slots);
    q->free_slots = calloc(depth, sizeof *q->free_slots);
    q->done = calloc(depth, sizeof *q->done);
    if (q->slots == NULL || q->free_slots == NULL || q->done == NULL) {
        free_q(q);
        return sio_fail(-ENOMEM, "out of memory creating a queue pair of depth %u", depth);
    }
    for (uint32_t i = 0; i < depth; i++) {
        q->free_slots[i] = depth - 1 - i;
        q->slots[i].q = q;
    }
    q->nfree = depth;
    q->parked_head = q->parked_tail = SPDK_NO_SLOT;

    struct spdk_nvme_io_qpair_opts opts;
    spdk_nvme_ctrlr_get_default_io_qpair_opts(d->ctrlr, &opts, sizeof opts);
    /* The queue itself is as deep as the controller allows; commands beyond it wait in the
     * driver.  Requests: two per slot, and room for one command split to the limit, so a
     * parked command always fits once the queue drains. */
    uint32_t requests = depth * 2 + SIO_SPDK_MAX_SPLIT * 2 + 16;
    if (opts.io_queue_requests < requests)
        opts.io_queue_requests = requests;
    q->qpair = spdk_nvme_ctrlr_alloc_io_qpair(d->ctrlr, &opts, sizeof opts);
    if (q->qpair == NULL) {
        free_q(q);
        return sio_fail(-ENOMEM, "cannot create an NVMe I/O queue pair on %s (the controller's queue limit, or "
                                 "the environment's memory; SPDK's log is on stderr)",
                        d->where);
    }
    *out = &q->head;
    return 0;
}

void spdk_backend_qpair_destroy(sio_qpair *qp)
{
    struct spdk_qp *q = to_q(qp);
    /* Aborts whatever is still in flight; its callbacks run here, before the slots go. */
    spdk_nvme_ctrlr_free_io_qpair(q->qpair);
    free_q(q);
}

static void finish(struct spdk_qp *q, struct spdk_slot *s)
{
    uint32_t depth = q->head.depth;
    q->done[(q->done_head + q->done_count) % depth] = (uint32_t)(s - q->slots);
    q->done_count++;
}

static void park(struct spdk_qp *q, struct spdk_slot *s)
{
    uint32_t idx = (uint32_t)(s - q->slots);
    s->parked = true;
    s->next_parked = SPDK_NO_SLOT;
    if (q->parked_tail == SPDK_NO_SLOT)
        q->parked_head = idx;
    else
        q->slots[q->parked_tail].next_parked = idx;
    q->parked_tail = idx;
}

/* Records the first error of a slot, one the driver reported without an NVMe status. */
static void slot_error(struct spdk_slot *s, int32_t status)
{
    if (s->status == 0) {
        s->status = status;
        s->nvme_error = false;
    }
}

static void on_nvme_done(void *arg, const struct spdk_nvme_cpl *cpl);
static void advance(struct spdk_qp *q, struct spdk_slot *s);

/* Starts one NVMe command of the slot; -ENOMEM when the driver has no free request. */
static int submit_one(struct spdk_qp *q, struct spdk_slot *s)
{
    struct spdk_device *d = dev_of(q);
    struct spdk_nvme_ns *ns = d->ns;
    struct spdk_nvme_qpair *qp = q->qpair;
    uint32_t fua = (s->flags & SIO_CMD_F_FUA) ? SPDK_NVME_IO_FLAGS_FORCE_UNIT_ACCESS : 0;
    int rc;
    switch (s->stage) {
    case SSTAGE_RW:
        if (s->opcode == SIO_OP_READ)
            rc = spdk_nvme_ns_cmd_read(ns, qp, s->buf, s->lba, s->nblocks, on_nvme_done, s, 0);
        else
            rc = spdk_nvme_ns_cmd_write(ns, qp, s->buf, s->lba, s->nblocks, on_nvme_done, s, fua);
        if (rc == 0)
            s->lba = s->end;
        return rc;
    case SSTAGE_FLUSH:
        rc = spdk_nvme_ns_cmd_flush(ns, qp, on_nvme_done, s);
        if (rc == 0)
            s->lba = s->end;
        return rc;
    case SSTAGE_DEALLOC: {
        struct spdk_nvme_dsm_range range;
        memset(&range, 0, sizeof range);
        uint64_t n = s->end - s->lba;
        if (n > UINT32_MAX)
            n = UINT32_MAX;
        range.starting_lba = s->lba;
        range.length = (uint32_t)n;
        rc = spdk_nvme_ns_cmd_dataset_management(ns, qp, SPDK_NVME_DSM_ATTR_DEALLOCATE, &range, 1, on_nvme_done, s);
        if (rc == 0)
            s->lba += n;
        return rc;
    }
    case SSTAGE_ZERO: {
        uint64_t n = s->end - s->lba;
        if (d->write_zeroes) {
            if (n > d->max_zeroes_blocks)
                n = d->max_zeroes_blocks;
            rc = spdk_nvme_ns_cmd_write_zeroes(ns, qp, s->lba, (uint32_t)n, on_nvme_done, s, fua);
        } else {
            uint64_t per = d->head.geo.max_transfer / d->sector;
            if (n > per)
                n = per;
            rc = spdk_nvme_ns_cmd_write(ns, qp, d->zero_buf, s->lba, (uint32_t)n, on_nvme_done, s, fua);
        }
        if (rc == 0)
            s->lba += n;
        return rc;
    }
    default:
        s->lba = s->end;
        return 0;
    }
}

/*
 * Issues what is left of the slot's current stage.  A callback that fires
 * inside the driver's submit call (it may abort a command at once) only
 * counts down; this loop decides what comes next.
 */
static void issue(struct spdk_qp *q, struct spdk_slot *s)
{
    s->issuing = true;
    while (s->lba < s->end && s->status == 0) {
        s->outstanding++;
        int rc = submit_one(q, s);
        if (rc == 0)
            continue;
        s->outstanding--;
        if (rc == -ENOMEM) {
            park(q, s);
            s->issuing = false;
            return;
        }
        slot_error(s, rc == -ENXIO ? -EIO : rc);
        break;
    }
    s->issuing = false;
    if (s->outstanding == 0)
        advance(q, s);
}

/* Every command of the stage is done: start the next stage or finish the slot. */
static void advance(struct spdk_qp *q, struct spdk_slot *s)
{
    if (s->lba < s->end && s->status == 0) {
        issue(q, s);
        return;
    }
    if (s->status == 0 && s->then_flush) {
        s->then_flush = false;
        s->stage = SSTAGE_FLUSH;
        s->lba = 0;
        s->end = 1;
        issue(q, s);
        return;
    }
    if (s->status != 0)
        s->bytes = 0;
    else
        s->status = s->forced_status; /* a torn write reports the injected status */
    finish(q, s);
}

static void on_nvme_done(void *arg, const struct spdk_nvme_cpl *cpl)
{
    struct spdk_slot *s = arg;
    if (spdk_nvme_cpl_is_error(cpl) && s->status == 0) {
        s->status = sio_nvme_status_errno(cpl->status.sct, cpl->status.sc);
        s->sct = cpl->status.sct;
        s->sc = cpl->status.sc;
        s->nvme_error = true;
    }
    s->outstanding--;
    if (s->outstanding == 0 && !s->issuing && !s->parked)
        advance(s->q, s);
}

int32_t spdk_backend_submit(sio_qpair *qp, const sio_cmd *cmds, const struct sio_fault_action *acts, uint32_t count)
{
    struct spdk_qp *q = to_q(qp);
    struct spdk_device *d = dev_of(q);
    uint32_t shift = (uint32_t)__builtin_ctz(d->sector);
    for (uint32_t i = 0; i < count; i++) {
        const sio_cmd *c = &cmds[i];
        const struct sio_fault_action *a = &acts[i];
        uint32_t idx = q->free_slots[--q->nfree];
        struct spdk_slot *s = &q->slots[idx];
        *s = (struct spdk_slot){
            .tag = c->tag, .buf = c->buf, .lba = c->offset >> shift, .nblocks = c->length >> shift,
            .opcode = c->opcode, .flags = c->flags, .q = q, .next_parked = SPDK_NO_SLOT,
        };
        s->end = s->lba + s->nblocks;
        switch (c->opcode) {
        case SIO_OP_READ:
        case SIO_OP_WRITE:
            s->stage = SSTAGE_RW;
            s->bytes = c->length;
            break;
        case SIO_OP_FLUSH:
            s->stage = d->volatile_cache ? SSTAGE_FLUSH : SSTAGE_NOP;
            s->lba = 0;
            s->end = 1;
            break;
        case SIO_OP_TRIM:
            s->stage = d->dealloc_zeroes ? SSTAGE_DEALLOC : SSTAGE_ZERO;
            /* Deallocate has no FUA bit: a flush makes it durable. */
            s->then_flush = s->stage == SSTAGE_DEALLOC && (c->flags & SIO_CMD_F_FUA) && d->volatile_cache;
            break;
        default:
            s->stage = SSTAGE_ZERO;
            break;
        }
        s->injected = a->kind != SIO_FAULT_NONE;
        if (a->kind == SIO_FAULT_FAIL) {
            s->stage = SSTAGE_NOP;
            s->status = a->status;
            s->bytes = 0;
        } else if (a->kind == SIO_FAULT_TEAR) {
            /* Write only the first tear_bytes (block aligned by the injector), then report its status. */
            s->nblocks = a->tear_bytes >> shift;
            s->end = s->lba + s->nblocks;
            s->forced_status = a->status;
            s->bytes = a->status == 0 ? c->length : a->tear_bytes;
            if (s->nblocks == 0) {
                s->stage = SSTAGE_NOP;
                s->status = a->status;
                s->bytes = a->status == 0 ? c->length : 0;
            }
        }
        if (s->stage == SSTAGE_NOP)
            finish(q, s);
        else if (q->parked_head != SPDK_NO_SLOT)
            park(q, s); /* behind the commands already waiting for requests, in order */
        else
            issue(q, s);
    }
    return 0;
}

/* Gives parked slots another try now that completions may have freed driver requests. */
static void retry_parked(struct spdk_qp *q)
{
    uint32_t idx = q->parked_head;
    q->parked_head = q->parked_tail = SPDK_NO_SLOT;
    while (idx != SPDK_NO_SLOT) {
        struct spdk_slot *s = &q->slots[idx];
        idx = s->next_parked;
        s->parked = false;
        if (q->parked_head != SPDK_NO_SLOT) {
            park(q, s); /* one ahead ran short again: keep the order */
            continue;
        }
        if (s->outstanding == 0 && (s->lba >= s->end || s->status != 0))
            advance(q, s);
        else
            issue(q, s);
    }
}

/* The error path only: the detail the caller reads for this completion (the caller knows the command). */
static void record_detail(struct spdk_qp *q, const struct spdk_slot *s)
{
    struct spdk_device *d = dev_of(q);
    if (s->nvme_error)
        sio_fail(s->status, "NVMe status 0x%x/0x%02x (%s: %s) from %s ns %u", s->sct, s->sc, sio_nvme_sct_name(s->sct),
                 sio_nvme_status_name(s->sct, s->sc), d->where, d->nsid);
    else if (s->injected)
        sio_fail(s->status, "injected fault on %s ns %u", d->where, d->nsid);
    else if (q->failed)
        sio_fail(s->status, "the NVMe queue pair to %s is disconnected (the target went away); reopen the device",
                 d->where);
    else
        sio_fail(s->status, "the NVMe driver refused the %s command on %s ns %u: %s", sio_op_name(s->opcode), d->where,
                 d->nsid, strerror(-s->status));
}

/* Hands out finished slots, up to max, stopping after the first failed one. */
static uint32_t reap(struct spdk_qp *q, sio_completion *out, uint32_t max)
{
    uint32_t n = 0;
    uint32_t depth = q->head.depth;
    while (n < max && q->done_count != 0) {
        uint32_t idx = q->done[q->done_head];
        q->done_head = (q->done_head + 1) % depth;
        q->done_count--;
        struct spdk_slot *s = &q->slots[idx];
        out[n].tag = s->tag;
        out[n].status = s->status;
        out[n].bytes = s->bytes;
        n++;
        q->free_slots[q->nfree++] = idx;
        if (s->status != 0) {
            record_detail(q, s);
            break;
        }
    }
    return n;
}

int32_t spdk_backend_poll(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count)
{
    struct spdk_qp *q = to_q(qp);
    if (q->done_count == 0) {
        if (q->parked_head != SPDK_NO_SLOT)
            retry_parked(q);
        int32_t rc = spdk_nvme_qpair_process_completions(q->qpair, 0);
        if (rc < 0 && !q->failed) {
            /* Transport lost or controller failed: disconnecting aborts what is in flight
             * through the callbacks, so nothing waits forever; new commands fail with EIO. */
            q->failed = true;
            spdk_nvme_ctrlr_disconnect_io_qpair(q->qpair);
        }
        if (q->parked_head != SPDK_NO_SLOT)
            retry_parked(q);
    }
    *out_count = reap(q, out, max);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int32_t spdk_backend_wait(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count)
{
    bool forever = timeout_us >= FOREVER_US;
    uint64_t start = now_ns();
    uint64_t deadline = forever ? UINT64_MAX : start + timeout_us * 1000;
    for (;;) {
        spdk_backend_poll(qp, out, max, out_count);
        if (*out_count != 0 || timeout_us == 0)
            return 0;
        if (to_q(qp)->failed)
            return sio_fail(-EIO, "the NVMe queue pair to %s is disconnected", dev_of(to_q(qp))->where);
        uint64_t now = now_ns();
        if (now >= deadline)
            return 0;
        /* Polled mode has nothing to sleep on: spin briefly, then give the CPU away between polls. */
        if (now - start > WAIT_SPIN_NS) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 10000};
            nanosleep(&ts, NULL);
        }
    }
}
