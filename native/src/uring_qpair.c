/*
 * uring_qpair.c - io_uring queue pairs: submit, poll, wait, regions.
 *
 * poll only peeks the completion ring, so it makes no system call when
 * nothing is ready (it enters the kernel only to push re-issued SQEs).
 * The SQ ring has depth entries and every slot holds at most one SQE at a
 * time, so getting an SQE cannot fail while a slot is free.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "uring.h"

enum {
    /* SQPOLL kernel thread idles this long (ms) before sleeping. */
    SQPOLL_IDLE_MS = 10,
    /* Give up re-issuing a command after this many EINTR/EAGAIN in a row. */
    MAX_RETRIES = 1000,
};
/* The kernel refuses registered buffers over 1 GiB, so regions are cut into such pieces. */
static const uint64_t MAX_IOV_BYTES = 1ull << 30;
/* Timeouts over ~11 days mean "forever" (and keep the nanosecond deadline from overflowing). */
static const uint64_t FOREVER_US = 1000000000000ull;

static inline struct uring_qpair *to_q(sio_qpair *qp)
{
    return (struct uring_qpair *)qp;
}

int32_t uring_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out)
{
    struct uring_device *d = (struct uring_device *)dev;
    struct uring_qpair *q = calloc(1, sizeof *q);
    if (q == NULL)
        return sio_fail(-ENOMEM, "out of memory creating a queue pair of depth %u", depth);
    q->slots = calloc(depth, sizeof *q->slots);
    q->free_slots = calloc(depth, sizeof *q->free_slots);
    if (q->slots == NULL || q->free_slots == NULL) {
        free(q->slots);
        free(q->free_slots);
        free(q);
        return sio_fail(-ENOMEM, "out of memory creating a queue pair of depth %u", depth);
    }
    for (uint32_t i = 0; i < depth; i++)
        q->free_slots[i] = depth - 1 - i;
    q->nfree = depth;
    q->sqpoll = d->sqpoll;

    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    if (d->sqpoll) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = SQPOLL_IDLE_MS;
    }
    /* Keep submitting a batch past an SQE that fails inline (5.18+); dropped on older kernels. */
    p.flags |= IORING_SETUP_SUBMIT_ALL;
    /* Completions that need the submitter's task (task work) wait for its next kernel entry and
       raise IORING_SQ_TASKRUN, which poll checks, instead of an inter-processor interrupt into a
       poller spinning in user space on another CPU (5.19+; dropped on older kernels). */
    if (!d->sqpoll)
        p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    int rc = io_uring_queue_init_params(depth, &q->ring, &p);
    if (rc == -EINVAL) {
        p.flags &= ~(unsigned)(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
        rc = io_uring_queue_init_params(depth, &q->ring, &p);
    }
    if (rc == -EINVAL) {
        p.flags &= ~(unsigned)IORING_SETUP_SUBMIT_ALL;
        rc = io_uring_queue_init_params(depth, &q->ring, &p);
    }
    if (rc == 0) {
        rc = io_uring_register_files(&q->ring, &d->fd, 1);
        if (rc != 0)
            io_uring_queue_exit(&q->ring);
    }
    if (rc != 0) {
        free(q->slots);
        free(q->free_slots);
        free(q);
        return sio_fail(rc, "cannot set up an io_uring of %u entries%s: %s", depth, d->sqpoll ? " with SQPOLL" : "",
                        strerror(-rc));
    }
    *out = &q->head;
    return 0;
}

void uring_qpair_destroy(sio_qpair *qp)
{
    struct uring_qpair *q = to_q(qp);
    io_uring_queue_exit(&q->ring);
    free(q->iovs);
    free(q->slots);
    free(q->free_slots);
    free(q);
}

/* Registers regions[0..nregions) with the ring, replacing what was registered. */
static int32_t register_regions(struct uring_qpair *q, uint32_t nregions)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < nregions; i++)
        n += (uint32_t)((q->regions[i].length + MAX_IOV_BYTES - 1) / MAX_IOV_BYTES);
    struct iovec *iovs = calloc(n, sizeof *iovs);
    if (iovs == NULL)
        return -ENOMEM;
    uint32_t k = 0;
    for (uint32_t i = 0; i < nregions; i++) {
        for (uint64_t off = 0; off < q->regions[i].length; off += MAX_IOV_BYTES) {
            uint64_t left = q->regions[i].length - off;
            iovs[k].iov_base = q->regions[i].base + off;
            iovs[k].iov_len = left < MAX_IOV_BYTES ? left : MAX_IOV_BYTES;
            k++;
        }
    }
    if (q->niovs != 0)
        io_uring_unregister_buffers(&q->ring);
    free(q->iovs);
    q->iovs = NULL;
    q->niovs = 0;
    int rc = io_uring_register_buffers(&q->ring, iovs, n);
    if (rc != 0) {
        free(iovs);
        return rc;
    }
    q->iovs = iovs;
    q->niovs = n;
    return 0;
}

int32_t uring_register_region(sio_qpair *qp, void *base, uint64_t length)
{
    struct uring_qpair *q = to_q(qp);
    if (q->nregions == SIO_MAX_REGISTERED_REGIONS)
        return sio_fail(-E2BIG, "the queue pair already has %u registered regions", q->nregions);
    q->regions[q->nregions] = (struct uring_region){.base = base, .length = length};
    int32_t rc = register_regions(q, q->nregions + 1);
    if (rc == 0) {
        q->nregions++;
        return 0;
    }
    if (q->nregions != 0)
        register_regions(q, q->nregions); /* put the previous set back */
    return sio_fail(rc, "cannot register %llu bytes at %p with io_uring: %s%s", (unsigned long long)length, base,
                    strerror(-rc), rc == -ENOMEM ? " (RLIMIT_MEMLOCK too low?)" : "");
}

/* Index of the registered piece holding [buf, buf+len), or -1. */
static int32_t find_fixed(const struct uring_qpair *q, const void *buf, uint32_t len)
{
    uintptr_t b = (uintptr_t)buf;
    for (uint32_t i = 0; i < q->niovs; i++) {
        uintptr_t base = (uintptr_t)q->iovs[i].iov_base;
        if (b >= base && b - base <= q->iovs[i].iov_len && len <= q->iovs[i].iov_len - (b - base))
            return (int32_t)i;
    }
    return -1;
}

static struct io_uring_sqe *next_sqe(struct uring_qpair *q)
{
    struct io_uring_sqe *sqe;
    while ((sqe = io_uring_get_sqe(&q->ring)) == NULL) {
        /* Unreachable while slots bound the SQEs; flush and retry rather than lose a command. */
        io_uring_submit(&q->ring);
        io_uring_sqring_wait(&q->ring);
    }
    return sqe;
}

static void issue(struct uring_qpair *q, uint32_t idx)
{
    struct uring_slot *s = &q->slots[idx];
    struct io_uring_sqe *sqe = next_sqe(q);
    char *p = s->buf + s->done;
    unsigned left = s->limit - s->done;
    uint64_t off = s->offset + s->done;
    switch (s->stage) {
    case STAGE_NOP:
        io_uring_prep_nop(sqe);
        break;
    case STAGE_RW:
        if (s->opcode == SIO_OP_READ) {
            if (s->buf_index >= 0)
                io_uring_prep_read_fixed(sqe, 0, p, left, off, s->buf_index);
            else
                io_uring_prep_read(sqe, 0, p, left, off);
        } else {
            if (s->buf_index >= 0)
                io_uring_prep_write_fixed(sqe, 0, p, left, off, s->buf_index);
            else
                io_uring_prep_write(sqe, 0, p, left, off);
            if (s->flags & SIO_CMD_F_FUA)
                sqe->rw_flags = RWF_DSYNC;
        }
        sqe->flags |= IOSQE_FIXED_FILE;
        break;
    case STAGE_FSYNC:
        io_uring_prep_fsync(sqe, 0, IORING_FSYNC_DATASYNC);
        sqe->flags |= IOSQE_FIXED_FILE;
        break;
    case STAGE_PUNCH:
    case STAGE_ZERO: {
        int mode = FALLOC_FL_KEEP_SIZE | (s->stage == STAGE_PUNCH ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
        io_uring_prep_fallocate(sqe, 0, mode, (off_t)s->offset, (off_t)s->length);
        sqe->flags |= IOSQE_FIXED_FILE;
        break;
    }
    }
    sqe->user_data = idx;
}

/* Hands prepared SQEs to the kernel; what it does not take now is retried on the next poll. */
static void flush_sq(struct uring_qpair *q)
{
    if (io_uring_sq_ready(&q->ring) != 0)
        io_uring_submit(&q->ring);
}

static uint8_t first_stage(uint8_t opcode)
{
    switch (opcode) {
    case SIO_OP_FLUSH: return STAGE_FSYNC;
    case SIO_OP_TRIM: return STAGE_PUNCH;
    case SIO_OP_WRITE_ZEROES: return STAGE_ZERO;
    default: return STAGE_RW;
    }
}

int32_t uring_submit(sio_qpair *qp, const sio_cmd *cmds, const struct sio_fault_action *acts, uint32_t count)
{
    struct uring_qpair *q = to_q(qp);
    for (uint32_t i = 0; i < count; i++) {
        const sio_cmd *c = &cmds[i];
        const struct sio_fault_action *a = &acts[i];
        uint32_t idx = q->free_slots[--q->nfree];
        struct uring_slot *s = &q->slots[idx];
        *s = (struct uring_slot){
            .tag = c->tag, .offset = c->offset, .buf = c->buf, .length = c->length, .limit = c->length,
            .opcode = c->opcode, .flags = c->flags, .stage = first_stage(c->opcode), .fault = a->kind,
            .buf_index = -1,
        };
        if (a->kind == SIO_FAULT_FAIL) {
            s->stage = STAGE_NOP;
            s->forced_status = a->status;
        } else if (a->kind == SIO_FAULT_TEAR) {
            s->limit = a->tear_bytes;
            s->forced_status = a->status;
            if (s->limit == 0) {
                s->stage = STAGE_NOP;
                s->forced_bytes = a->status == 0 ? s->length : 0;
            }
        }
        if (s->stage == STAGE_RW && q->niovs != 0)
            s->buf_index = find_fixed(q, s->buf, s->limit);
        issue(q, idx);
    }
    flush_sq(q);
    return 0;
}

/* Advances a slot on one CQE; returns 1 with *out filled when the command is done, 0 when re-issued. */
static uint32_t on_cqe(struct uring_qpair *q, uint32_t idx, int32_t res, sio_completion *out)
{
    struct uring_slot *s = &q->slots[idx];
    int32_t status = 0;
    uint32_t bytes = 0;
    if ((res == -EINTR || res == -EAGAIN) && s->stage != STAGE_NOP && s->retries++ < MAX_RETRIES)
        goto again;
    s->retries = 0;
    switch (s->stage) {
    case STAGE_NOP:
        status = s->forced_status;
        bytes = s->forced_bytes;
        break;
    case STAGE_RW:
        if (res <= 0) {
            /* 0 bytes inside the device's range means the file shrank under us. */
            status = res < 0 ? res : -EIO;
            bytes = s->done;
            break;
        }
        s->done += (uint32_t)res;
        if (s->done < s->limit)
            goto again;
        bytes = s->done;
        if (s->fault == SIO_FAULT_TEAR) {
            status = s->forced_status;
            bytes = status == 0 ? s->length : s->done;
        }
        break;
    case STAGE_FSYNC:
        status = res < 0 ? res : 0;
        break;
    case STAGE_PUNCH:
    case STAGE_ZERO:
        if (res == -EOPNOTSUPP && !s->fallback_tried) {
            /* Either mode leaves the range reading zeroes; use whichever the filesystem has. */
            s->fallback_tried = true;
            s->stage = s->stage == STAGE_PUNCH ? STAGE_ZERO : STAGE_PUNCH;
            goto again;
        }
        if (res < 0) {
            status = res;
            break;
        }
        if (s->flags & SIO_CMD_F_FUA) {
            s->stage = STAGE_FSYNC;
            goto again;
        }
        break;
    }
    out->tag = s->tag;
    out->status = status;
    out->bytes = bytes;
    q->free_slots[q->nfree++] = idx;
    return 1;
again:
    issue(q, idx);
    return 0;
}

static uint32_t reap(struct uring_qpair *q, sio_completion *out, uint32_t max)
{
    uint32_t n = 0, seen = 0;
    unsigned head;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&q->ring, head, cqe)
    {
        if (n == max)
            break;
        seen++;
        uint64_t idx = cqe->user_data;
        if (idx < q->head.depth)
            n += on_cqe(q, (uint32_t)idx, cqe->res, &out[n]);
    }
    if (seen != 0)
        io_uring_cq_advance(&q->ring, seen);
    return n;
}

int32_t uring_poll(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count)
{
    struct uring_qpair *q = to_q(qp);
    /* Completions waiting as task work (COOP_TASKRUN): one kernel entry posts them. */
    if (IO_URING_READ_ONCE(*q->ring.sq.kflags) & IORING_SQ_TASKRUN)
        io_uring_get_events(&q->ring);
    *out_count = reap(q, out, max);
    flush_sq(q);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int32_t uring_wait(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count)
{
    struct uring_qpair *q = to_q(qp);
    bool forever = timeout_us >= FOREVER_US;
    uint64_t deadline = forever ? 0 : now_ns() + timeout_us * 1000;
    for (;;) {
        uint32_t n = reap(q, out, max);
        flush_sq(q);
        if (n != 0 || timeout_us == 0) {
            *out_count = n;
            return 0;
        }
        uint64_t left = 1000000000ull; /* forever waits in 1 s rounds */
        if (!forever) {
            uint64_t now = now_ns();
            if (now >= deadline) {
                *out_count = 0;
                return 0;
            }
            left = deadline - now;
        }
        struct __kernel_timespec ts = {.tv_sec = (long long)(left / 1000000000ull),
                                       .tv_nsec = (long long)(left % 1000000000ull)};
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe_timeout(&q->ring, &cqe, &ts);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            *out_count = 0;
            return sio_fail(rc, "waiting for io_uring completions failed: %s", strerror(-rc));
        }
    }
}
