/*
 * test_io.c - data paths: round trips in every mode, batches, flush, FUA,
 * trim and write_zeroes, registered regions, polling and waiting.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

enum { DEV_SIZE = 4 << 20 };

static uint32_t seed_from_env(void)
{
    const char *s = getenv("STRATA_TEST_SEED");
    uint32_t seed = s ? (uint32_t)strtoul(s, NULL, 0) : (uint32_t)time(NULL);
    printf("seed %u (STRATA_TEST_SEED reproduces)\n", seed);
    return seed;
}

static uint32_t rnd(uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

/*
 * Writes random extents, checks each by reading it back through the device
 * and directly from the file, for the device opened with the given options.
 */
static void random_roundtrips(const char *name, const char *opts, uint32_t granule)
{
    uint32_t state = seed_from_env() | 1;
    const char *p = t_path(name);
    sio_device *dev = t_open("file:%s?create=1&size=4M%s", p, opts);
    sio_qpair *qp = t_qpair(dev, 32);
    enum { MAXLEN = 256 * 1024 };
    uint8_t *w = t_dma(dev, MAXLEN + 4096), *r = t_dma(dev, MAXLEN + 4096), *f = malloc(MAXLEN);
    for (int i = 0; i < 60; i++) {
        uint32_t len = (1 + rnd(&state) % (MAXLEN / granule)) * granule;
        uint64_t off = (uint64_t)(rnd(&state) % ((DEV_SIZE - len) / granule + 1)) * granule;
        /* Buffered devices accept any buffer address; direct ones need the alignment. */
        uint32_t shift = granule == 1 ? rnd(&state) % 64 : 0;
        t_fill(w + shift, len, (uint32_t)i);
        sio_completion c = t_io(qp, SIO_OP_WRITE, off, w + shift, len, 0);
        CHECK_EQ(c.status, 0);
        CHECK_EQ(c.bytes, len);
        memset(r, 0, MAXLEN + 4096);
        c = t_io(qp, SIO_OP_READ, off, r + shift, len, 0);
        CHECK_EQ(c.status, 0);
        CHECK_EQ(c.bytes, len);
        if (!t_is_fill(r + shift, len, (uint32_t)i))
            t_fail(__FILE__, __LINE__, "round trip %d: %u bytes at %" PRIu64 " differ", i, len, off);
        t_read_file(p, off, f, len);
        CHECK(t_is_fill(f, len, (uint32_t)i));
    }
    uint32_t n = 1;
    CHECK_OK(sio_qpair_inflight(qp, &n));
    CHECK_EQ(n, 0);
    CHECK_OK(sio_qpair_destroy(qp));
    free(f);
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
}

TEST(roundtrip_direct)
{
    random_roundtrips("direct", "", 4096);
}

TEST(roundtrip_direct_512)
{
    random_roundtrips("direct512", "&block=512", 512);
}

TEST(roundtrip_buffered_unaligned)
{
    random_roundtrips("buffered", "&direct=0", 1);
}

TEST(roundtrip_sqpoll)
{
    random_roundtrips("sqpoll", "&sqpoll=1", 4096);
}

TEST(roundtrip_sqpoll_buffered)
{
    random_roundtrips("sqpollbuf", "&sqpoll=1&direct=0", 1);
}

TEST(roundtrip_max_transfer)
{
    sio_device *dev = t_open("file:%s?create=1&size=80M", t_path("big"));
    sio_qpair *qp = t_qpair(dev, 2);
    uint8_t *w = t_dma(dev, SIO_MAX_TRANSFER + 4096), *r = t_dma(dev, SIO_MAX_TRANSFER);
    t_fill(w, SIO_MAX_TRANSFER, 3);
    sio_completion c = t_io(qp, SIO_OP_WRITE, 4096, w, SIO_MAX_TRANSFER, 0);
    CHECK_EQ(c.status, 0);
    CHECK_EQ(c.bytes, SIO_MAX_TRANSFER);
    c = t_io(qp, SIO_OP_READ, 4096, r, SIO_MAX_TRANSFER, 0);
    CHECK_EQ(c.bytes, SIO_MAX_TRANSFER);
    CHECK(memcmp(w, r, SIO_MAX_TRANSFER) == 0);
    sio_cmd too_big = t_cmd(0, SIO_OP_WRITE, 0, w, SIO_MAX_TRANSFER + 4096);
    CHECK_RC(sio_qpair_submit(qp, &too_big, 1), -EINVAL);
    CHECK_DETAIL("over max_transfer");
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
}

TEST(batch_of_mixed_commands)
{
    sio_device *dev = t_open("file:%s?create=1&size=4M", t_path("mix"));
    sio_qpair *qp = t_qpair(dev, 16);
    enum { B = 8192 };
    uint8_t *buf = t_dma(dev, 16 * B);
    for (uint32_t i = 0; i < 8; i++)
        t_fill(buf + i * B, B, 100 + i);
    sio_cmd cmds[12];
    sio_completion comps[12];
    for (uint32_t i = 0; i < 8; i++)
        cmds[i] = t_cmd(i, SIO_OP_WRITE, (uint64_t)i * 65536, buf + i * B, B);
    cmds[2].flags = SIO_CMD_F_FUA;
    cmds[8] = t_cmd(8, SIO_OP_FLUSH, 0, NULL, 0);
    cmds[9] = t_cmd(9, SIO_OP_TRIM, 1 << 20, NULL, 65536);
    cmds[10] = t_cmd(10, SIO_OP_WRITE_ZEROES, 2 << 20, NULL, 65536);
    cmds[11] = t_cmd(11, SIO_OP_READ, 3 << 20, buf + 8 * B, B);
    CHECK_OK(sio_qpair_submit(qp, cmds, 12));
    uint32_t inflight = 0;
    CHECK_OK(sio_qpair_inflight(qp, &inflight));
    CHECK_EQ(inflight, 12);
    t_reap(qp, 12, comps);
    for (uint32_t i = 0; i < 12; i++) {
        CHECK_EQ(comps[i].tag, i);
        CHECK_EQ(comps[i].status, 0);
        CHECK_EQ(comps[i].bytes, i < 8 || i == 11 ? B : 0);
    }
    CHECK_OK(sio_qpair_inflight(qp, &inflight));
    CHECK_EQ(inflight, 0);
    /* Read every write back in one batch. */
    for (uint32_t i = 0; i < 8; i++)
        cmds[i] = t_cmd(i, SIO_OP_READ, (uint64_t)i * 65536, buf + (8 + i) * B, B);
    t_batch(qp, cmds, 8, comps);
    for (uint32_t i = 0; i < 8; i++)
        CHECK(t_is_fill(buf + (8 + i) * B, B, 100 + i));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_device_close(dev));
}

static void trim_and_zeroes(const char *opts)
{
    const char *p = t_path("tz");
    sio_device *dev = t_open("file:%s?create=1&size=1M%s", p, opts);
    sio_qpair *qp = t_qpair(dev, 4);
    enum { L = 65536 };
    uint8_t *w = t_dma(dev, L), *r = t_dma(dev, L), f[L];
    for (uint8_t op = SIO_OP_TRIM; op <= SIO_OP_WRITE_ZEROES; op++) {
        for (uint8_t flags = 0; flags <= SIO_CMD_F_FUA; flags++) {
            t_fill(w, L, op * 10u + flags);
            CHECK_EQ(t_io(qp, SIO_OP_WRITE, 0, w, L, 0).status, 0);
            sio_completion c = t_io(qp, op, 16384, NULL, 32768, flags);
            CHECK_EQ(c.status, 0);
            CHECK_EQ(c.bytes, 0);
            CHECK_EQ(t_io(qp, SIO_OP_READ, 0, r, L, 0).bytes, L);
            CHECK(memcmp(r, w, 16384) == 0);
            CHECK(t_is_zero(r + 16384, 32768));
            CHECK(memcmp(r + 49152, w + 49152, 16384) == 0);
            t_read_file(p, 0, f, L);
            CHECK(memcmp(f, r, L) == 0);
        }
    }
    CHECK_EQ(t_file_size(p), 1 << 20); /* KEEP_SIZE */
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
}

TEST(trim_and_write_zeroes_read_back_zeroes)
{
    trim_and_zeroes("");
}

TEST(trim_and_write_zeroes_buffered)
{
    trim_and_zeroes("&direct=0");
}

/* tmpfs has PUNCH_HOLE but not ZERO_RANGE: WRITE_ZEROES must fall back and still zero. */
TEST(write_zeroes_falls_back_to_punch_hole)
{
    struct statfs sfs;
    if (statfs("/dev/shm", &sfs) != 0 || sfs.f_type != TMPFS_MAGIC)
        t_skip("no tmpfs at /dev/shm");
    char dir[] = "/dev/shm/strata-io-test.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[64];
    snprintf(p, sizeof p, "%s/z", dir);
    sio_device *dev = t_open("file:%s?create=1&size=1M&direct=0", p);
    sio_qpair *qp = t_qpair(dev, 4);
    uint8_t *w = t_dma(dev, 65536), *r = t_dma(dev, 65536);
    for (uint8_t op = SIO_OP_TRIM; op <= SIO_OP_WRITE_ZEROES; op++) {
        t_fill(w, 65536, op);
        CHECK_EQ(t_io(qp, SIO_OP_WRITE, 0, w, 65536, 0).status, 0);
        CHECK_EQ(t_io(qp, op, 4096, NULL, 8192, SIO_CMD_F_FUA).status, 0);
        CHECK_EQ(t_io(qp, SIO_OP_READ, 0, r, 65536, 0).bytes, 65536);
        CHECK(memcmp(r, w, 4096) == 0);
        CHECK(t_is_zero(r + 4096, 8192));
        CHECK(memcmp(r + 12288, w + 12288, 65536 - 12288) == 0);
    }
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
    CHECK_EQ(unlink(p), 0);
    CHECK_EQ(rmdir(dir), 0);
}

TEST(flush_and_fua)
{
    const char *p = t_path("fl");
    sio_device *dev = t_open("file:%s?create=1&size=1M", p);
    sio_qpair *qp = t_qpair(dev, 4);
    uint8_t *w = t_dma(dev, 8192), f[8192];
    t_fill(w, 8192, 42);
    sio_completion c = t_io(qp, SIO_OP_WRITE, 8192, w, 8192, SIO_CMD_F_FUA);
    CHECK_EQ(c.status, 0);
    CHECK_EQ(c.bytes, 8192);
    t_read_file(p, 8192, f, 8192);
    CHECK(t_is_fill(f, 8192, 42));
    /* Flush ignores offset, length and buf. */
    sio_cmd fl = t_cmd(0, SIO_OP_FLUSH, 12345, (void *)1, 7);
    sio_completion fc;
    t_batch(qp, &fl, 1, &fc);
    CHECK_EQ(fc.status, 0);
    CHECK_EQ(fc.bytes, 0);
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_device_close(dev));
}

TEST(registered_regions)
{
    sio_device *dev = t_open("file:%s?create=1&size=4M", t_path("reg"));
    sio_qpair *qp = t_qpair(dev, 8);
    uint8_t *region = t_dma(dev, 1 << 20), *outside = t_dma(dev, 65536);
    CHECK_OK(sio_qpair_register_region(qp, region, 1 << 20));
    /* Buffers inside the region, at its edges, and outside it all work. */
    t_fill(region, 65536, 1);
    t_fill(region + (1 << 20) - 65536, 65536, 2);
    t_fill(outside, 65536, 3);
    sio_cmd cmds[3] = {
        t_cmd(0, SIO_OP_WRITE, 0, region, 65536),
        t_cmd(1, SIO_OP_WRITE, 65536, region + (1 << 20) - 65536, 65536),
        t_cmd(2, SIO_OP_WRITE, 131072, outside, 65536),
    };
    sio_completion comps[3];
    t_batch(qp, cmds, 3, comps);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(comps[i].bytes, 65536);
    memset(region, 0, 1 << 20);
    memset(outside, 0, 65536);
    cmds[0] = t_cmd(0, SIO_OP_READ, 0, region + 4096, 65536);
    cmds[1] = t_cmd(1, SIO_OP_READ, 65536, region + (1 << 20) - 65536, 65536);
    cmds[2] = t_cmd(2, SIO_OP_READ, 131072, outside, 65536);
    t_batch(qp, cmds, 3, comps);
    CHECK(t_is_fill(region + 4096, 65536, 1));
    CHECK(t_is_fill(region + (1 << 20) - 65536, 65536, 2));
    CHECK(t_is_fill(outside, 65536, 3));

    /* A second region adds to the first; registration needs an idle queue pair. */
    CHECK_OK(sio_qpair_register_region(qp, outside, 65536));
    CHECK_OK(sio_qpair_submit(qp, cmds, 1));
    CHECK_RC(sio_qpair_register_region(qp, outside, 65536), -EBUSY);
    CHECK_DETAIL("1 command in flight");
    t_reap(qp, 1, comps);
    CHECK_RC(sio_qpair_register_region(qp, NULL, 4096), -EINVAL);
    CHECK_RC(sio_qpair_register_region(qp, region, 0), -EINVAL);
    CHECK_RC(sio_qpair_register_region(NULL, region, 4096), -EINVAL);
    CHECK_RC(sio_qpair_register_region(qp, (void *)(UINTPTR_MAX - 100), 4096), -EINVAL);
    for (int i = 2; i < SIO_MAX_REGISTERED_REGIONS; i++)
        CHECK_OK(sio_qpair_register_region(qp, region + i * 4096, 4096));
    CHECK_RC(sio_qpair_register_region(qp, region, 4096), -E2BIG);
    CHECK_DETAIL("64 registered regions");
    /* Still usable after the refusal. */
    CHECK_EQ(t_io(qp, SIO_OP_READ, 0, region + 8192, 4096, 0).bytes, 4096);
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, region));
    CHECK_OK(sio_dma_free(dev, outside));
    CHECK_OK(sio_device_close(dev));
}

/*
 * White-box proof that registered regions are really used: after the region's
 * pages are swapped for fresh ones (MAP_FIXED), a READ_FIXED still lands in the
 * old pinned pages, so the new mapping stays zero, while a plain read fills it.
 */
TEST(registered_region_is_used_for_io)
{
    const char *p = t_path("fixed");
    t_make_file(p, 1 << 20);
    uint8_t data[4096];
    t_fill(data, sizeof data, 11);
    t_write_file(p, 0, data, sizeof data);
    sio_device *dev = t_open("file:%s", p);
    enum { LEN = 65536 };
    uint8_t *a = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED);
    sio_qpair *qp = t_qpair(dev, 4);
    CHECK_OK(sio_qpair_register_region(qp, a, LEN));
    CHECK(mmap(a, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == a);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 0, a, 4096, 0).bytes, 4096);
    CHECK(t_is_zero(a, 4096));
    CHECK_OK(sio_qpair_destroy(qp));
    qp = t_qpair(dev, 4); /* nothing registered */
    CHECK_EQ(t_io(qp, SIO_OP_READ, 0, a, 4096, 0).bytes, 4096);
    CHECK(t_is_fill(a, 4096, 11));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_EQ(munmap(a, LEN), 0);
    CHECK_OK(sio_device_close(dev));
}

TEST(poll_and_wait)
{
    sio_device *dev = t_open("file:%s?create=1&size=1M", t_path("pw"));
    sio_qpair *qp = t_qpair(dev, 16);
    sio_completion out[16];
    uint32_t n = 99;
    CHECK_OK(sio_qpair_poll(qp, out, 16, &n));
    CHECK_EQ(n, 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK_OK(sio_qpair_wait(qp, out, 16, 30000, &n));
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK_EQ(n, 0);
    long long us = (b.tv_sec - a.tv_sec) * 1000000LL + (b.tv_nsec - a.tv_nsec) / 1000;
    CHECK(us >= 25000 && us < 2000000);
    CHECK_OK(sio_qpair_wait(qp, out, 16, 0, &n));
    CHECK_EQ(n, 0);

    /* Completions come out at most max at a time. */
    uint8_t *buf = t_dma(dev, 16 * 4096);
    sio_cmd cmds[10];
    for (uint32_t i = 0; i < 10; i++)
        cmds[i] = t_cmd(i, SIO_OP_READ, i * 4096ull, buf + i * 4096, 4096);
    CHECK_OK(sio_qpair_submit(qp, cmds, 10));
    uint32_t got = 0, inflight = 0;
    while (got < 10) {
        CHECK_OK(sio_qpair_wait(qp, out, 3, 1000000, &n));
        CHECK(n >= 1 && n <= 3);
        got += n;
        CHECK_OK(sio_qpair_inflight(qp, &inflight));
        CHECK_EQ(inflight, 10 - got);
    }
    CHECK_OK(sio_qpair_poll(qp, out, 16, &n));
    CHECK_EQ(n, 0);
    CHECK_OK(sio_qpair_poll(qp, NULL, 0, &n));
    CHECK_RC(sio_qpair_poll(qp, NULL, 4, &n), -EINVAL);
    CHECK_RC(sio_qpair_poll(qp, out, 4, NULL), -EINVAL);
    CHECK_RC(sio_qpair_poll(NULL, out, 4, &n), -EINVAL);
    CHECK_RC(sio_qpair_wait(NULL, out, 4, 0, &n), -EINVAL);
    CHECK_RC(sio_qpair_wait(qp, out, 4, 0, NULL), -EINVAL);
    CHECK_RC(sio_qpair_inflight(NULL, &n), -EINVAL);
    CHECK_RC(sio_qpair_inflight(qp, NULL), -EINVAL);

    /* Busy polling (no waiting) also reaps everything, reads the device completes by interrupt
       included: the blocks are written first (a hole's read completes at submission). Such a
       completion waits as task work until the poller enters the kernel (COOP_TASKRUN), which poll
       does when the ring raises IORING_SQ_TASKRUN. (Without that, the next interrupt's return to
       user space runs it, milliseconds later: perf device measures the difference, not this test.) */
    sio_cmd writes[10];
    for (uint32_t i = 0; i < 10; i++)
        writes[i] = t_cmd(100 + i, SIO_OP_WRITE, i * 4096ull, buf + i * 4096, 4096);
    CHECK_OK(sio_qpair_submit(qp, writes, 10));
    for (got = 0; got < 10; got += n)
        CHECK_OK(sio_qpair_wait(qp, out, 16, 1000000, &n));
    sio_cmd flush = t_cmd(200, SIO_OP_FLUSH, 0, NULL, 0);
    CHECK_OK(sio_qpair_submit(qp, &flush, 1));
    for (got = 0; got < 1; got += n)
        CHECK_OK(sio_qpair_wait(qp, out, 16, 1000000, &n));
    CHECK_OK(sio_qpair_submit(qp, cmds, 10));
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (got = 0; got < 10; got += n) {
        CHECK_OK(sio_qpair_poll(qp, out, 16, &n));
        clock_gettime(CLOCK_MONOTONIC, &b);
        CHECK((b.tv_sec - a.tv_sec) < 10); /* bounded: ten seconds of polling at most */
    }
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_device_close(dev));
}

TEST(qpair_create_and_destroy)
{
    sio_device *dev = t_open("file:%s?create=1&size=1M&qd=8", t_path("qp"));
    sio_qpair *qp = t_qpair(dev, 0); /* the device's qd */
    uint8_t *buf = t_dma(dev, 9 * 4096);
    sio_cmd cmds[9];
    for (uint32_t i = 0; i < 9; i++)
        cmds[i] = t_cmd(i, SIO_OP_WRITE, i * 4096ull, buf + i * 4096, 4096);
    CHECK_RC(sio_qpair_submit(qp, cmds, 9), -E2BIG);
    CHECK_OK(sio_qpair_submit(qp, cmds, 8));
    CHECK_OK(sio_qpair_destroy(qp)); /* waits for the 8 in flight */

    qp = t_qpair(dev, SIO_MAX_QUEUE_DEPTH);
    CHECK_OK(sio_qpair_destroy(qp));
    sio_qpair *bad = (sio_qpair *)1;
    CHECK_RC(sio_qpair_create(dev, SIO_MAX_QUEUE_DEPTH + 1, &bad), -EINVAL);
    CHECK_DETAIL("over the limit");
    CHECK(bad == NULL);
    CHECK_RC(sio_qpair_create(NULL, 4, &bad), -EINVAL);
    CHECK_RC(sio_qpair_create(dev, 4, NULL), -EINVAL);
    CHECK_RC(sio_qpair_destroy(NULL), -EINVAL);
    /* Many queue pairs on one device. */
    sio_qpair *many[8];
    for (int i = 0; i < 8; i++)
        many[i] = t_qpair(dev, 4);
    for (int i = 0; i < 8; i++)
        CHECK_OK(sio_qpair_destroy(many[i]));
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_device_close(dev));
}

struct worker {
    sio_device *dev;
    uint32_t id;
};

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
    sio_qpair *qp = t_qpair(wk->dev, 8);
    uint8_t *w = t_dma(wk->dev, 8 * 4096), *r = t_dma(wk->dev, 8 * 4096);
    uint64_t base = wk->id * 256 * 1024ull;
    for (uint32_t round = 0; round < 20; round++) {
        sio_cmd cmds[8];
        sio_completion comps[8];
        for (uint32_t i = 0; i < 8; i++) {
            t_fill(w + i * 4096, 4096, wk->id * 1000 + round * 8 + i);
            cmds[i] = t_cmd(i, SIO_OP_WRITE, base + i * 8192ull, w + i * 4096, 4096);
        }
        t_batch(qp, cmds, 8, comps);
        for (uint32_t i = 0; i < 8; i++)
            cmds[i] = t_cmd(i, SIO_OP_READ, base + i * 8192ull, r + i * 4096, 4096);
        t_batch(qp, cmds, 8, comps);
        for (uint32_t i = 0; i < 8; i++)
            CHECK(t_is_fill(r + i * 4096, 4096, wk->id * 1000 + round * 8 + i));
    }
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(wk->dev, w));
    CHECK_OK(sio_dma_free(wk->dev, r));
    return NULL;
}

TEST(queue_pairs_on_threads)
{
    sio_device *dev = t_open("file:%s?create=1&size=4M", t_path("thr"));
    pthread_t th[4];
    struct worker wk[4];
    for (uint32_t i = 0; i < 4; i++) {
        wk[i] = (struct worker){dev, i};
        CHECK_EQ(pthread_create(&th[i], NULL, worker_main, &wk[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_OK(sio_device_close(dev));
}

/*
 * A cached read (plain or vectored) after pages were dropped: -EAGAIN, never a part. The kernel drops only
 * whole folios (a large one spanning a dropped page keeps it), and RWF_NOWAIT may start readahead that
 * finishes in time for the same call: on this VM 8 runs in 100 read everything. The whole read, every byte
 * right, is as good; a part would leave r's zeroes.
 */
static void check_whole_or_again(int32_t rc, const uint8_t *r, size_t len, uint32_t seed)
{
    if (rc == 0)
        CHECK(t_is_fill(r, len, seed));
    else
        CHECK_EQ(rc, -EAGAIN);
}

/*
 * sio_device_read_cached: a buffered device serves a read the page cache holds
 * whole on the caller's thread; pages not cached, injected faults and direct
 * devices leave it to a queue pair.
 */
TEST(read_cached)
{
    const char *p = t_path("cached");
    sio_device *dev = t_open("file:%s?create=1&size=4M&direct=0", p);
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK((g.flags & SIO_DEV_F_CACHED_READ) != 0);
    sio_qpair *qp = t_qpair(dev, 4);
    uint8_t *w = t_dma(dev, 65536), *r = t_dma(dev, 65536);
    t_fill(w, 65536, 7);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, 131072, w, 65536, 0).status, 0);
    memset(r, 0, 65536);
    CHECK_EQ(sio_device_read_cached(dev, r, 65536, 131072), 0);
    CHECK(t_is_fill(r, 65536, 7));
    /* Not block aligned, past the end, or empty: refused like a READ command. */
    CHECK_EQ(sio_device_read_cached(dev, r, 4096, 131072 + 512), -EINVAL);
    CHECK_EQ(sio_device_read_cached(dev, r, 8192, (4 << 20) - 4096), -EINVAL);
    CHECK_EQ(sio_device_read_cached(dev, r, 0, 0), -EINVAL);
    /* Written back and dropped from the page cache: not served here. */
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
    memset(r, 0, 65536);
    check_whole_or_again(sio_device_read_cached(dev, r, 65536, 131072), r, 65536, 7);
    /* The queue pair reads it (and caches it again). */
    memset(r, 0, 65536);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 131072, r, 65536, 0).status, 0);
    CHECK(t_is_fill(r, 65536, 7));
    CHECK_EQ(sio_device_read_cached(dev, r, 65536, 131072), 0);
    /* With faults configured every read takes the queue pair, where faults are decided. */
    CHECK_OK(sio_device_set_faults(dev, "fail_io=1&fail_ops=read"));
    CHECK_EQ(sio_device_read_cached(dev, r, 4096, 131072), -EAGAIN);
    CHECK(t_io(qp, SIO_OP_READ, 131072, r, 4096, 0).status < 0);
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));

    sio_device *direct = t_open("file:%s?create=1&size=4M", t_path("cached-direct"));
    CHECK_OK(sio_device_geometry(direct, &g));
    CHECK_EQ(g.flags & SIO_DEV_F_CACHED_READ, 0);
    uint8_t *d = t_dma(direct, 4096);
    CHECK_EQ(sio_device_read_cached(direct, d, 4096, 0), -ENOTSUP);
    CHECK_OK(sio_dma_free(direct, d));
    CHECK_OK(sio_device_close(direct));
}

/*
 * sio_device_write_cached: a buffered device copies a write into the page cache
 * on the caller's thread (the queue pair, the file and a FLUSH see it);
 * cached_writes=0, direct and read-only devices do not offer it, and with
 * faults configured writes take the queue pair.
 */
TEST(write_cached)
{
    const char *p = t_path("wcached");
    sio_device *dev = t_open("file:%s?create=1&size=4M&direct=0", p);
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK((g.flags & SIO_DEV_F_CACHED_WRITE) != 0);
    sio_qpair *qp = t_qpair(dev, 4);
    uint8_t *w = malloc(65536), *r = t_dma(dev, 65536), *f = malloc(65536);
    t_fill(w, 65536, 11);
    CHECK_EQ(sio_device_write_cached(dev, w, 65536, 262144), 0);
    memset(r, 0, 65536);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 262144, r, 65536, 0).status, 0);
    CHECK(t_is_fill(r, 65536, 11));
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    t_read_file(p, 262144, f, 65536);
    CHECK(t_is_fill(f, 65536, 11));
    CHECK_EQ(sio_device_write_cached(dev, w, 4096, 512), -EINVAL);
    CHECK_EQ(sio_device_write_cached(dev, w, 8192, (4 << 20) - 4096), -EINVAL);
    CHECK_OK(sio_device_set_faults(dev, "fail_io=1&fail_ops=write"));
    CHECK_EQ(sio_device_write_cached(dev, w, 4096, 0), -EAGAIN);
    CHECK(t_io(qp, SIO_OP_WRITE, 0, r, 4096, 0).status < 0);
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
    free(w);
    free(f);

    uint8_t buf[4096] = {0};
    sio_device *off = t_open("file:%s?direct=0&cached_writes=0", p);
    CHECK_OK(sio_device_geometry(off, &g));
    CHECK_EQ(g.flags & SIO_DEV_F_CACHED_WRITE, 0);
    CHECK((g.flags & SIO_DEV_F_CACHED_READ) != 0);
    CHECK_EQ(sio_device_write_cached(off, buf, 4096, 0), -ENOTSUP);
    CHECK_OK(sio_device_close(off));
    sio_device *ro = t_open("file:%s?direct=0&ro=1", p);
    CHECK_OK(sio_device_geometry(ro, &g));
    CHECK_EQ(g.flags & SIO_DEV_F_CACHED_WRITE, 0);
    CHECK_EQ(sio_device_write_cached(ro, buf, 4096, 0), -ENOTSUP);
    CHECK_OK(sio_device_close(ro));
    sio_device *direct = t_open("file:%s", p);
    CHECK_OK(sio_device_geometry(direct, &g));
    CHECK_EQ(g.flags & (SIO_DEV_F_CACHED_WRITE | SIO_DEV_F_CACHED_READ), 0);
    CHECK_OK(sio_device_close(direct));
    char uri[512];
    snprintf(uri, sizeof uri, "file:%s?cached_writes=1", p);
    t_open_fails(-EINVAL, uri);
}

/* Splits buf into segments of the given lengths (n of them) for the vectored calls. */
static void split(sio_iovec *iov, uint8_t *buf, const uint64_t *lengths, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        iov[i].base = buf;
        iov[i].length = lengths[i];
        buf += lengths[i];
    }
}

/* Drops the file's pages in [offset, offset + length) from the page cache (they must be clean). */
static void drop_cached(const char *path, uint64_t offset, uint64_t length)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_EQ(posix_fadvise(fd, (off_t)offset, (off_t)length, POSIX_FADV_DONTNEED), 0);
    close(fd);
}

/*
 * sio_device_readv_cached: segments of any length whose total is block
 * aligned are filled in order from the page cache in one call; a range not
 * all cached (whole or in part), faults, bad arguments and direct devices
 * are refused as by sio_device_read_cached, never with part of the bytes.
 */
TEST(readv_cached)
{
    const char *p = t_path("vcached");
    sio_device *dev = t_open("file:%s?create=1&size=4M&direct=0", p);
    sio_qpair *qp = t_qpair(dev, 4);
    enum { LEN = 12288, OFF = 131072 };
    uint8_t *w = t_dma(dev, LEN), *r = malloc(LEN);
    t_fill(w, LEN, 21);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, OFF, w, LEN, 0).status, 0);

    sio_iovec iov[3];
    memset(r, 0, LEN);
    split(iov, r, (const uint64_t[]){100, LEN - 100}, 2);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), 0);
    CHECK(t_is_fill(r, LEN, 21));
    memset(r, 0, LEN);
    split(iov, r, (const uint64_t[]){4001, 5, LEN - 4006}, 3);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 3, OFF), 0);
    CHECK(t_is_fill(r, LEN, 21));
    /* SIO_MAX_IOVECS segments of 12 bytes each. */
    sio_iovec *many = malloc((SIO_MAX_IOVECS + 1) * sizeof *many);
    for (uint32_t i = 0; i <= SIO_MAX_IOVECS; i++)
        many[i] = (sio_iovec){.base = r + (i % SIO_MAX_IOVECS) * 12, .length = 12};
    memset(r, 0, LEN);
    CHECK_EQ(sio_device_readv_cached(dev, many, SIO_MAX_IOVECS, OFF), 0);
    CHECK(t_is_fill(r, LEN, 21));

    /* Bad counts, segments and totals: refused as a READ command would be. */
    CHECK_EQ(sio_device_readv_cached(dev, many, SIO_MAX_IOVECS + 1, OFF), -EINVAL);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 0, OFF), -EINVAL);
    CHECK_EQ(sio_device_readv_cached(dev, NULL, 1, OFF), -EINVAL);
    CHECK_EQ(sio_device_readv_cached(NULL, iov, 1, OFF), -EINVAL);
    split(iov, r, (const uint64_t[]){100, 4000}, 2);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), -EINVAL);
    split(iov, r, (const uint64_t[]){100, 3996}, 2);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF + 512), -EINVAL);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, (4 << 20)), -EINVAL);
    split(iov, r, (const uint64_t[]){0, 4096}, 2);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), -EINVAL);
    iov[0] = (sio_iovec){.base = NULL, .length = 96};
    iov[1] = (sio_iovec){.base = r, .length = 4000};
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), -EINVAL);

    /* Written back, then the last page dropped: a short read, which is -EAGAIN, not a part. */
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    drop_cached(p, OFF + LEN - 4096, 4096);
    CHECK_EQ(sio_device_read_cached(dev, r, 4096, OFF), 0);
    split(iov, r, (const uint64_t[]){100, LEN - 100}, 2);
    memset(r, 0, LEN);
    check_whole_or_again(sio_device_readv_cached(dev, iov, 2, OFF), r, LEN, 21);
    /* None of it cached: -EAGAIN (or whole, as above); the queue pair reads it, and then the vector is served. */
    drop_cached(p, 0, 0);
    memset(r, 0, LEN);
    check_whole_or_again(sio_device_readv_cached(dev, iov, 2, OFF), r, LEN, 21);
    CHECK_EQ(t_io(qp, SIO_OP_READ, OFF, w, LEN, 0).status, 0);
    memset(r, 0, LEN);
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), 0);
    CHECK(t_is_fill(r, LEN, 21));
    /* With faults configured every read takes the queue pair. */
    CHECK_OK(sio_device_set_faults(dev, "fail_io=1&fail_ops=read"));
    CHECK_EQ(sio_device_readv_cached(dev, iov, 2, OFF), -EAGAIN);
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_device_close(dev));

    sio_device *direct = t_open("file:%s?create=1&size=4M", t_path("vcached-direct"));
    split(iov, r, (const uint64_t[]){100, 3996}, 2);
    CHECK_EQ(sio_device_readv_cached(direct, iov, 2, 0), -ENOTSUP);
    CHECK_OK(sio_device_close(direct));
    free(many);
    free(r);
}

/*
 * sio_device_writev_cached: segments of any length whose total is block
 * aligned land one after another from offset (the queue pair and the file
 * see them); bad arguments are -EINVAL, faults -EAGAIN, devices without
 * cached writes -ENOTSUP.
 */
TEST(writev_cached)
{
    const char *p = t_path("wvcached");
    sio_device *dev = t_open("file:%s?create=1&size=4M&direct=0", p);
    sio_qpair *qp = t_qpair(dev, 4);
    enum { LEN = 12288, OFF = 262144 };
    uint8_t *w = malloc(LEN), *r = t_dma(dev, LEN), *f = malloc(LEN);
    sio_iovec iov[3];
    t_fill(w, LEN, 31);
    split(iov, w, (const uint64_t[]){1, 4999, LEN - 5000}, 3);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 3, OFF), 0);
    memset(r, 0, LEN);
    CHECK_EQ(t_io(qp, SIO_OP_READ, OFF, r, LEN, 0).status, 0);
    CHECK(t_is_fill(r, LEN, 31));
    t_fill(w, LEN, 32);
    split(iov, w, (const uint64_t[]){4100, LEN - 4100}, 2);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 2, OFF), 0);
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    t_read_file(p, OFF, f, LEN);
    CHECK(t_is_fill(f, LEN, 32));
    /* The neighbours are untouched. */
    t_read_file(p, OFF - 4096, f, 4096);
    CHECK(t_is_zero(f, 4096));
    t_read_file(p, OFF + LEN, f, 4096);
    CHECK(t_is_zero(f, 4096));

    split(iov, w, (const uint64_t[]){4100, 4000}, 2);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 2, OFF), -EINVAL);
    split(iov, w, (const uint64_t[]){4100, 4092}, 2);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 2, OFF + 512), -EINVAL);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 2, (4 << 20) - 4096), -EINVAL);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 0, OFF), -EINVAL);
    CHECK_EQ(sio_device_writev_cached(dev, iov, SIO_MAX_IOVECS + 1, OFF), -EINVAL);
    /* With faults configured nothing is written here. */
    CHECK_OK(sio_device_set_faults(dev, "fail_io=1&fail_ops=write"));
    t_fill(w, LEN, 33);
    split(iov, w, (const uint64_t[]){4100, 4092}, 2);
    CHECK_EQ(sio_device_writev_cached(dev, iov, 2, OFF), -EAGAIN);
    t_read_file(p, OFF, f, LEN);
    CHECK(t_is_fill(f, LEN, 32));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));

    const char *variants[] = {"direct=0&cached_writes=0", "direct=0&ro=1", "direct=1"};
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        sio_device *other = t_open("file:%s?%s", p, variants[i]);
        CHECK_EQ(sio_device_writev_cached(other, iov, 2, OFF), -ENOTSUP);
        CHECK_OK(sio_device_close(other));
    }
    free(w);
    free(f);
}
