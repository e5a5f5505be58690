/*
 * test_faults.c - the fault injector: every mode, its filters, its counters,
 * and that an injected failure really kept the data off the file.
 */
#include <errno.h>

#include "util.h"

enum { BS = 4096 };

struct fx {
    const char *path;
    sio_device *dev;
    sio_qpair *qp;
    uint8_t *buf;
};

static struct fx fx_open(const char *faults)
{
    struct fx f;
    f.path = t_path("faulty");
    t_make_file(f.path, 4 << 20);
    f.dev = t_open("file:%s%s%s", f.path, *faults ? "?" : "", faults);
    f.qp = t_qpair(f.dev, 16);
    f.buf = t_dma(f.dev, 1 << 20);
    return f;
}

static void fx_close(struct fx *f)
{
    CHECK_OK(sio_qpair_destroy(f->qp));
    CHECK_OK(sio_dma_free(f->dev, f->buf));
    CHECK_OK(sio_device_close(f->dev));
}

static sio_fault_stats stats(sio_device *dev)
{
    sio_fault_stats s;
    memset(&s, 0xff, sizeof s);
    CHECK_OK(sio_device_fault_stats(dev, &s));
    return s;
}

/* Writes len bytes of pattern seed at off; returns the completion. */
static sio_completion write_pattern(struct fx *f, uint64_t off, uint32_t len, uint32_t seed)
{
    t_fill(f->buf, len, seed);
    return t_io(f->qp, SIO_OP_WRITE, off, f->buf, len, 0);
}

static bool file_has(struct fx *f, uint64_t off, uint32_t len, uint32_t seed)
{
    uint8_t *b = malloc(len);
    t_read_file(f->path, off, b, len);
    bool ok = t_is_fill(b, len, seed);
    free(b);
    return ok;
}

static bool file_zero(struct fx *f, uint64_t off, uint32_t len)
{
    uint8_t *b = malloc(len);
    t_read_file(f->path, off, b, len);
    bool ok = t_is_zero(b, len);
    free(b);
    return ok;
}

TEST(fault_fail_io_fails_nth_command_once)
{
    struct fx f = fx_open("fail_io=3");
    for (uint32_t i = 1; i <= 6; i++) {
        sio_completion c = write_pattern(&f, i * 65536ull, 8192, i);
        if (i == 3) {
            CHECK_EQ(c.status, -EIO);
            CHECK_EQ(c.bytes, 0);
            CHECK(file_zero(&f, i * 65536ull, 8192)); /* not executed */
        } else {
            CHECK_EQ(c.status, 0);
            CHECK(file_has(&f, i * 65536ull, 8192, i));
        }
    }
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 6);
    CHECK_EQ(s.ios_failed, 1);
    CHECK_EQ(s.flushes_failed, 0);
    CHECK_EQ(s.writes_torn, 0);
    fx_close(&f);
}

TEST(fault_fail_io_inside_a_batch)
{
    struct fx f = fx_open("fail_io=2");
    sio_cmd cmds[4];
    sio_completion comps[4];
    for (uint32_t i = 0; i < 4; i++) {
        t_fill(f.buf + i * BS, BS, 50 + i);
        cmds[i] = t_cmd(i, SIO_OP_WRITE, i * (uint64_t)BS, f.buf + i * BS, BS);
    }
    t_batch(f.qp, cmds, 4, comps);
    for (uint32_t i = 0; i < 4; i++) {
        CHECK_EQ(comps[i].status, i == 1 ? -EIO : 0);
        CHECK(i == 1 ? file_zero(&f, i * (uint64_t)BS, BS) : file_has(&f, i * (uint64_t)BS, BS, 50 + i));
    }
    fx_close(&f);
}

TEST(fault_fail_every)
{
    struct fx f = fx_open("fail_every=2");
    /* Reads, writes, trims and write_zeroes all count by default; flushes do not. */
    uint8_t ops[7] = {SIO_OP_WRITE, SIO_OP_READ, SIO_OP_FLUSH, SIO_OP_TRIM, SIO_OP_WRITE_ZEROES, SIO_OP_WRITE,
                      SIO_OP_READ};
    int32_t want[7] = {0, -EIO, 0, 0, -EIO, 0, -EIO};
    for (int i = 0; i < 7; i++) {
        bool data = ops[i] == SIO_OP_READ || ops[i] == SIO_OP_WRITE;
        sio_completion c = t_io(f.qp, ops[i], 0, data ? f.buf : NULL, ops[i] == SIO_OP_FLUSH ? 0 : BS, 0);
        if (c.status != want[i])
            t_fail(__FILE__, __LINE__, "command %d (op %u): status %d, expected %d", i, ops[i], c.status, want[i]);
    }
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 6);
    CHECK_EQ(s.ios_failed, 3);
    fx_close(&f);
}

TEST(fault_fail_after_fails_every_command_past_n)
{
    /* A device that stops working: reads and writes count together, flushes do not. */
    struct fx f = fx_open("fail_after=3");
    CHECK_EQ(write_pattern(&f, 0, BS, 1).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, 0, f.buf, BS, 0).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(write_pattern(&f, BS, BS, 2).status, 0); /* the 3rd match: the last to run */
    for (uint32_t i = 0; i < 5; i++) {
        sio_completion c = write_pattern(&f, (2 + i) * (uint64_t)BS, BS, 3 + i);
        CHECK_EQ(c.status, -EIO);
        CHECK_EQ(c.bytes, 0);
        CHECK(file_zero(&f, (2 + i) * (uint64_t)BS, BS)); /* not executed */
        CHECK_EQ(t_io(f.qp, SIO_OP_READ, 0, f.buf, BS, 0).status, -EIO);
    }
    CHECK(file_has(&f, 0, BS, 1));
    CHECK(file_has(&f, BS, BS, 2));
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 13);
    CHECK_EQ(s.ios_failed, 10);
    CHECK_EQ(s.flushes_failed, 0);

    /* Filtered by fail_ops: only reads stop working; fail_after=0 fails from the first. */
    CHECK_OK(sio_device_set_faults(f.dev, "fail_after=0&fail_ops=read"));
    CHECK_EQ(write_pattern(&f, 0, BS, 9).status, 0);
    CHECK(file_has(&f, 0, BS, 9));
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, 0, f.buf, BS, 0).status, -EIO);
    CHECK_EQ(stats(f.dev).ios_failed, 1);

    CHECK_RC(sio_device_set_faults(f.dev, "fail_after=lots"), -EINVAL);
    CHECK_DETAIL("bad value 'lots' for option 'fail_after' in 'fail_after=lots': expected a command count");
    fx_close(&f);
}

TEST(fault_fail_flush_nth)
{
    struct fx f = fx_open("fail_flush=2");
    CHECK_EQ(write_pattern(&f, 0, BS, 1).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(write_pattern(&f, BS, BS, 2).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, -EIO);
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(write_pattern(&f, 2 * BS, BS, 3).status, 0);
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.flushes_failed, 1);
    CHECK_EQ(s.ios_failed, 0);
    CHECK_EQ(s.ios_seen, 3); /* the writes; flushes are not in the default fail_ops */
    fx_close(&f);
}

TEST(fault_fail_flush_all)
{
    struct fx f = fx_open("");
    CHECK_OK(sio_device_set_faults(f.dev, "fail_flush=all"));
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(write_pattern(&f, 0, BS, 1).status, 0);
        sio_completion c = t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0);
        CHECK_EQ(c.status, -EIO);
        CHECK_EQ(c.bytes, 0);
    }
    CHECK_EQ(stats(f.dev).flushes_failed, 4);
    fx_close(&f);
}

TEST(fault_tear_write_default_half)
{
    struct fx f = fx_open("tear_write=2");
    uint8_t *old = malloc(16384);
    t_fill(old, 16384, 77);
    t_write_file(f.path, 65536, old, 16384);
    CHECK_EQ(write_pattern(&f, 0, 16384, 1).status, 0); /* write 1: whole */
    CHECK(file_has(&f, 0, 16384, 1));
    sio_completion c = write_pattern(&f, 65536, 16384, 2); /* write 2: torn */
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 8192);
    CHECK(file_has(&f, 65536, 8192, 2));
    uint8_t back[8192];
    t_read_file(f.path, 65536 + 8192, back, sizeof back);
    CHECK(memcmp(back, old + 8192, 8192) == 0); /* the tail kept the old data */
    CHECK_EQ(write_pattern(&f, 131072, 16384, 3).status, 0); /* write 3: whole again */
    CHECK(file_has(&f, 131072, 16384, 3));
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.writes_torn, 1);
    CHECK_EQ(s.ios_failed, 0);
    free(old);
    fx_close(&f);
}

TEST(fault_tear_write_ok_with_tear_bytes)
{
    struct fx f = fx_open("tear_write=1&tear_bytes=4K&tear_ok=1");
    sio_completion c = write_pattern(&f, 0, 16384, 5);
    CHECK_EQ(c.status, 0); /* the caller believes the whole write landed */
    CHECK_EQ(c.bytes, 16384);
    CHECK(file_has(&f, 0, 4096, 5));
    CHECK(file_zero(&f, 4096, 12288));
    CHECK_EQ(stats(f.dev).writes_torn, 1);
    fx_close(&f);
}

TEST(fault_tear_write_block_rounding)
{
    /* One block: half rounds down to nothing, so nothing reaches the file. */
    struct fx f = fx_open("tear_write=1");
    sio_completion c = write_pattern(&f, 0, BS, 1);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 0);
    CHECK(file_zero(&f, 0, BS));
    /* Three blocks: half (6 KiB) rounds down to one block. */
    CHECK_OK(sio_device_set_faults(f.dev, "tear_write=1"));
    c = write_pattern(&f, 0, 3 * BS, 2);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, BS);
    CHECK(file_has(&f, 0, BS, 2));
    CHECK(file_zero(&f, BS, 2 * BS));
    /* An explicit tear_bytes is rounded down to the block on a direct device. */
    CHECK_OK(sio_device_set_faults(f.dev, "tear_write=1&tear_bytes=6000&tear_ok=1"));
    c = write_pattern(&f, 65536, 3 * BS, 3);
    CHECK_EQ(c.status, 0);
    CHECK_EQ(c.bytes, 3 * BS);
    CHECK(file_has(&f, 65536, BS, 3));
    CHECK(file_zero(&f, 65536 + BS, 2 * BS));
    fx_close(&f);
}

TEST(fault_tear_write_buffered_bytes)
{
    struct fx f = fx_open("direct=0&tear_write=1&tear_bytes=100");
    sio_completion c = write_pattern(&f, 10, 1000, 4);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 100);
    CHECK(file_has(&f, 10, 100, 4));
    CHECK(file_zero(&f, 110, 900));
    fx_close(&f);
}

TEST(fault_fail_ops_filter)
{
    struct fx f = fx_open("fail_ops=read&fail_io=1");
    CHECK_EQ(write_pattern(&f, 0, BS, 1).status, 0); /* writes are not looked at */
    CHECK_EQ(t_io(f.qp, SIO_OP_TRIM, BS, NULL, BS, 0).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, 0, f.buf, BS, 0).status, -EIO);
    CHECK_EQ(t_io(f.qp, SIO_OP_READ, 0, f.buf, BS, 0).status, 0);
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 2);
    CHECK_EQ(s.ios_failed, 1);

    /* flush in fail_ops makes fail_io count flushes too. */
    CHECK_OK(sio_device_set_faults(f.dev, "fail_ops=flush,trim&fail_io=2"));
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(write_pattern(&f, 0, BS, 2).status, 0);
    CHECK_EQ(t_io(f.qp, SIO_OP_TRIM, 0, NULL, BS, 0).status, -EIO);
    CHECK(file_has(&f, 0, BS, 2)); /* the failed trim did not run */
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 3);
    CHECK_EQ(s.ios_failed, 1);

    CHECK_OK(sio_device_set_faults(f.dev, "fail_ops=zeroes&fail_every=1"));
    CHECK_EQ(t_io(f.qp, SIO_OP_WRITE_ZEROES, 0, NULL, BS, 0).status, -EIO);
    CHECK(file_has(&f, 0, BS, 2));
    fx_close(&f);
}

TEST(fault_fail_range_filter)
{
    struct fx f = fx_open("fail_range=64K-128K&fail_every=1");
    CHECK_EQ(write_pattern(&f, 0, BS, 1).status, 0);
    CHECK_EQ(write_pattern(&f, 60 * 1024, 8192, 2).status, -EIO); /* overlaps the start */
    CHECK_EQ(write_pattern(&f, 64 * 1024, BS, 3).status, -EIO);
    CHECK_EQ(write_pattern(&f, 124 * 1024, BS, 4).status, -EIO); /* last block inside */
    CHECK_EQ(write_pattern(&f, 128 * 1024, BS, 5).status, 0);     /* END is exclusive */
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK(file_zero(&f, 60 * 1024, 68 * 1024));
    CHECK(file_has(&f, 128 * 1024, BS, 5));
    CHECK_EQ(stats(f.dev).ios_seen, 3);

    /* The range also picks which write is torn. */
    CHECK_OK(sio_device_set_faults(f.dev, "fail_range=1M-2M&tear_write=1&tear_bytes=4K"));
    CHECK_EQ(write_pattern(&f, 0, 16384, 6).status, 0);
    sio_completion c = write_pattern(&f, 1 << 20, 16384, 7);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 4096);
    CHECK(file_has(&f, 0, 16384, 6));
    CHECK(file_has(&f, 1 << 20, 4096, 7));
    CHECK(file_zero(&f, (1 << 20) + 4096, 12288));
    fx_close(&f);
}

TEST(fault_set_faults_replace_and_clear)
{
    struct fx f = fx_open("");
    sio_geometry g;
    CHECK_OK(sio_device_geometry(f.dev, &g));
    CHECK(!(g.flags & SIO_DEV_F_FAULTS));
    sio_fault_stats s = stats(f.dev);
    CHECK_EQ(s.ios_seen + s.ios_failed + s.flushes_failed + s.writes_torn, 0);

    CHECK_OK(sio_device_set_faults(f.dev, "fail_every=1"));
    CHECK_OK(sio_device_geometry(f.dev, &g));
    CHECK(g.flags & SIO_DEV_F_FAULTS);
    CHECK_EQ(write_pattern(&f, 0, BS, 1).status, -EIO);

    /* A bad spec is refused and leaves the previous one in force. */
    CHECK_RC(sio_device_set_faults(f.dev, "fail_every=1&bogus=2"), -EINVAL);
    CHECK_DETAIL("unknown fault option 'bogus' in 'fail_every=1&bogus=2'");
    CHECK_RC(sio_device_set_faults(f.dev, "?fail_io=1"), -EINVAL);
    CHECK_RC(sio_device_set_faults(f.dev, "direct=0"), -EINVAL);
    CHECK_RC(sio_device_set_faults(f.dev, "fail_io=1&fail_io=2"), -EINVAL);
    CHECK_RC(sio_device_set_faults(f.dev, "tear_write=1&fail_ops=flush"), -EINVAL);
    CHECK_EQ(write_pattern(&f, 0, BS, 2).status, -EIO);
    CHECK_EQ(stats(f.dev).ios_failed, 2);

    /* Replacing resets the counters. */
    CHECK_OK(sio_device_set_faults(f.dev, "fail_io=2"));
    s = stats(f.dev);
    CHECK_EQ(s.ios_seen, 0);
    CHECK_EQ(s.ios_failed, 0);
    CHECK_EQ(write_pattern(&f, 0, BS, 3).status, 0);
    CHECK_EQ(write_pattern(&f, 0, BS, 4).status, -EIO);

    /* Clearing: empty and NULL specs. */
    CHECK_OK(sio_device_set_faults(f.dev, ""));
    CHECK_OK(sio_device_geometry(f.dev, &g));
    CHECK(!(g.flags & SIO_DEV_F_FAULTS));
    s = stats(f.dev);
    CHECK_EQ(s.ios_seen + s.ios_failed + s.flushes_failed + s.writes_torn, 0);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(write_pattern(&f, 0, BS, 5).status, 0);
    CHECK_EQ(stats(f.dev).ios_seen, 0); /* nothing is counted while disabled */
    CHECK_OK(sio_device_set_faults(f.dev, "fail_flush=all"));
    CHECK_OK(sio_device_set_faults(f.dev, NULL));
    CHECK_EQ(t_io(f.qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);

    CHECK_RC(sio_device_set_faults(NULL, ""), -EINVAL);
    CHECK_RC(sio_device_fault_stats(NULL, &s), -EINVAL);
    CHECK_RC(sio_device_fault_stats(f.dev, NULL), -EINVAL);
    fx_close(&f);
}

TEST(fault_counters_shared_by_queue_pairs)
{
    struct fx f = fx_open("fail_every=2");
    sio_qpair *other = t_qpair(f.dev, 4);
    for (uint32_t i = 1; i <= 6; i++) {
        sio_qpair *qp = i % 2 ? f.qp : other;
        sio_completion c = t_io(qp, SIO_OP_READ, 0, f.buf, BS, 0);
        CHECK_EQ(c.status, i % 2 ? 0 : -EIO);
    }
    CHECK_EQ(stats(f.dev).ios_failed, 3);
    CHECK_OK(sio_qpair_destroy(other));
    fx_close(&f);
}

TEST(fault_sqpoll_and_registered_region)
{
    /* Injected NOP completions and torn fixed-buffer writes work with SQPOLL too. */
    struct fx f = fx_open("sqpoll=1&fail_io=1&tear_write=1&tear_bytes=4K");
    CHECK_OK(sio_qpair_register_region(f.qp, f.buf, 1 << 20));
    CHECK_EQ(write_pattern(&f, 0, 8192, 1).status, -EIO);
    CHECK(file_zero(&f, 0, 8192));
    /* A write failed by fail_io is not tear-counted: the second write is the first torn candidate. */
    sio_completion c = write_pattern(&f, 0, 8192, 2);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 4096);
    CHECK(file_has(&f, 0, 4096, 2));
    CHECK(file_zero(&f, 4096, 4096));
    fx_close(&f);
}
