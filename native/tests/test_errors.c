/*
 * test_errors.c - submit-time validation: every refusal is all or nothing
 * and its detail names the offending command.
 */
#include <errno.h>
#include <unistd.h>

#include "util.h"

struct fixture {
    const char *path;
    sio_device *dev;
    sio_qpair *qp;
    uint8_t *buf;
};

static struct fixture setup(const char *opts, uint32_t depth)
{
    struct fixture f;
    f.path = t_path("e");
    t_make_file(f.path, 1 << 20);
    f.dev = t_open("file:%s?size=1M%s", f.path, opts);
    f.qp = t_qpair(f.dev, depth);
    f.buf = t_dma(f.dev, 1 << 17);
    return f;
}

static void teardown(struct fixture *f)
{
    CHECK_OK(sio_qpair_destroy(f->qp));
    CHECK_OK(sio_dma_free(f->dev, f->buf));
    CHECK_OK(sio_device_close(f->dev));
}

/* Submits [good write, good write, bad] and checks the refusal left no trace. */
static void refused(struct fixture *f, sio_cmd bad, int32_t expected, const char *detail)
{
    t_fill(f->buf, 8192, 9);
    sio_cmd cmds[3] = {t_cmd(0, SIO_OP_WRITE, 0, f->buf, 4096), t_cmd(1, SIO_OP_WRITE, 4096, f->buf + 4096, 4096),
                       bad};
    cmds[2].tag = 2;
    int32_t rc = sio_qpair_submit(f->qp, cmds, 3);
    if (rc != expected)
        t_fail(__FILE__, __LINE__, "submit returned %d, expected %d (want detail '%s'); detail: %s", rc, expected,
               detail, t_detail());
    CHECK_DETAIL("command 2");
    CHECK_DETAIL(detail);
    uint32_t n = 1;
    CHECK_OK(sio_qpair_inflight(f->qp, &n));
    CHECK_EQ(n, 0);
    uint8_t back[8192];
    t_read_file(f->path, 0, back, sizeof back);
    CHECK(t_is_zero(back, sizeof back)); /* the good writes were not started either */
}

TEST(submit_misaligned_on_direct_device)
{
    struct fixture f = setup("", 8);
    refused(&f, t_cmd(2, SIO_OP_READ, 0, f.buf + 512, 4096), -EINVAL, "not aligned to 4096");
    refused(&f, t_cmd(2, SIO_OP_READ, 512, f.buf, 4096), -EINVAL, "not a multiple of the block size");
    refused(&f, t_cmd(2, SIO_OP_WRITE, 0, f.buf, 1000), -EINVAL, "not a multiple of the block size");
    refused(&f, t_cmd(2, SIO_OP_TRIM, 100, NULL, 4096), -EINVAL, "not a multiple of the block size");
    refused(&f, t_cmd(2, SIO_OP_WRITE_ZEROES, 0, NULL, 4095), -EINVAL, "not a multiple of the block size");
    teardown(&f);
}

TEST(submit_malformed_commands)
{
    struct fixture f = setup("", 8);
    refused(&f, t_cmd(2, 9, 0, f.buf, 4096), -EINVAL, "unknown opcode 9");
    refused(&f, t_cmd(2, SIO_OP_READ, 0, f.buf, 0), -EINVAL, "zero length");
    refused(&f, t_cmd(2, SIO_OP_TRIM, 0, NULL, 0), -EINVAL, "zero length");
    refused(&f, t_cmd(2, SIO_OP_WRITE, 0, NULL, 4096), -EINVAL, "buf is NULL");
    sio_cmd c = t_cmd(2, SIO_OP_READ, 0, f.buf, 4096);
    c.flags = 0x80;
    refused(&f, c, -EINVAL, "unknown flags");
    c.flags = 0;
    c.reserved = 1;
    refused(&f, c, -EINVAL, "reserved");
    refused(&f, t_cmd(2, SIO_OP_READ, 0, f.buf, SIO_MAX_TRANSFER + 4096), -EINVAL, "over max_transfer");
    CHECK_RC(sio_qpair_submit(f.qp, NULL, 1), -EINVAL);
    CHECK_RC(sio_qpair_submit(NULL, &c, 1), -EINVAL);
    CHECK_OK(sio_qpair_submit(f.qp, NULL, 0)); /* an empty batch is a no-op */
    teardown(&f);
}

TEST(submit_past_the_end)
{
    struct fixture f = setup("", 8);
    refused(&f, t_cmd(2, SIO_OP_READ, 1 << 20, f.buf, 4096), -ERANGE, "past the device end 1048576");
    refused(&f, t_cmd(2, SIO_OP_WRITE, (1 << 20) - 4096, f.buf, 8192), -ERANGE, "past the device end");
    refused(&f, t_cmd(2, SIO_OP_TRIM, UINT64_MAX - 4095, NULL, 8192), -ERANGE, "past the device end");
    refused(&f, t_cmd(2, SIO_OP_WRITE_ZEROES, 1ull << 40, NULL, 4096), -ERANGE, "past the device end");
    /* The very last block is fine. */
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, (1 << 20) - 4096, f.buf, 4096, 0).bytes, 4096);
    teardown(&f);
}

TEST(submit_over_depth_and_free_slots)
{
    struct fixture f = setup("", 4);
    sio_cmd cmds[5];
    for (uint32_t i = 0; i < 5; i++)
        cmds[i] = t_cmd(i, SIO_OP_READ, i * 4096ull, f.buf + i * 4096, 4096);
    CHECK_RC(sio_qpair_submit(f.qp, cmds, 5), -E2BIG);
    CHECK_DETAIL("batch of 5 commands is over the queue depth 4");
    CHECK_OK(sio_qpair_submit(f.qp, cmds, 3));
    /* Completed but unreaped commands still hold their slots. */
    CHECK_RC(sio_qpair_submit(f.qp, cmds + 3, 2), -EAGAIN);
    CHECK_DETAIL("only 1 of 4 slots free");
    CHECK_OK(sio_qpair_submit(f.qp, cmds + 3, 1));
    sio_completion comps[4];
    t_reap(f.qp, 4, comps);
    CHECK_OK(sio_qpair_submit(f.qp, cmds, 4));
    t_reap(f.qp, 4, comps);
    /* A malformed batch is reported as such even when it would not fit. */
    CHECK_OK(sio_qpair_submit(f.qp, cmds, 4));
    sio_cmd bad = t_cmd(0, SIO_OP_READ, 0, f.buf, 0);
    CHECK_RC(sio_qpair_submit(f.qp, &bad, 1), -EINVAL);
    t_reap(f.qp, 4, comps);
    teardown(&f);
}

TEST(read_only_device)
{
    struct fixture f = setup("&ro=1", 8);
    sio_cmd batch[2] = {t_cmd(0, SIO_OP_READ, 0, f.buf, 4096), t_cmd(1, SIO_OP_WRITE, 0, f.buf, 4096)};
    CHECK_RC(sio_qpair_submit(f.qp, batch, 2), -EROFS);
    CHECK_DETAIL("command 1 (write): the device is read-only");
    uint32_t n = 1;
    CHECK_OK(sio_qpair_inflight(f.qp, &n));
    CHECK_EQ(n, 0);
    sio_cmd c = t_cmd(0, SIO_OP_TRIM, 0, NULL, 4096);
    CHECK_RC(sio_qpair_submit(f.qp, &c, 1), -EROFS);
    CHECK_DETAIL("command 0 (trim): the device is read-only");
    c.opcode = SIO_OP_WRITE_ZEROES;
    CHECK_RC(sio_qpair_submit(f.qp, &c, 1), -EROFS);
    /* Reads and flushes work. */
    t_write_file(f.path, 4096, "hello", 5);
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, 4096, f.buf, 4096, 0).bytes, 4096);
    CHECK(memcmp(f.buf, "hello", 5) == 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    teardown(&f);
}

TEST(buffered_device_accepts_unaligned)
{
    struct fixture f = setup("&direct=0", 8);
    t_fill(f.buf, 1000, 5);
    sio_completion c = t_io(f.qp, SIO_OP_WRITE, 777, f.buf + 3, 1000, 0);
    CHECK_EQ(c.status, 0);
    CHECK_EQ(c.bytes, 1000);
    uint8_t back[1000];
    t_read_file(f.path, 777, back, sizeof back);
    CHECK(memcmp(back, f.buf + 3, 1000) == 0);
    /* Range still applies. */
    sio_cmd bad = t_cmd(0, SIO_OP_READ, (1 << 20) - 10, f.buf, 11);
    CHECK_RC(sio_qpair_submit(f.qp, &bad, 1), -ERANGE);
    teardown(&f);
}

/*
 * A file truncated under an open device: a read straddling the new end first
 * comes back short (re-issued inside the shim for the rest), then hits EOF,
 * which inside the device's range is an I/O error, not a silent short read.
 */
TEST(read_of_shrunk_file_is_eio)
{
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = t_path(direct ? "shrunk-d" : "shrunk-b");
        t_make_file(p, 1 << 20);
        sio_device *dev = t_open("file:%s?direct=%d", p, direct);
        sio_qpair *qp = t_qpair(dev, 4);
        uint8_t *buf = t_dma(dev, 16384);
        CHECK_EQ(truncate(p, 8192), 0);
        sio_completion c = t_io(qp, SIO_OP_READ, 4096, buf, 16384, 0);
        CHECK_EQ(c.status, -EIO);
        CHECK_EQ(c.bytes, 4096);
        c = t_io(qp, SIO_OP_READ, 65536, buf, 4096, 0);
        CHECK_EQ(c.status, -EIO);
        CHECK_EQ(c.bytes, 0);
        CHECK_EQ(t_io(qp, SIO_OP_READ, 0, buf, 8192, 0).status, 0);
        CHECK_OK(sio_qpair_destroy(qp));
        CHECK_OK(sio_dma_free(dev, buf));
        CHECK_OK(sio_device_close(dev));
    }
}
