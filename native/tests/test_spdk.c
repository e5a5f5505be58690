/*
 * test_spdk.c - the SPDK backend against a real NVMe-oF target: built only
 * with STRATA_HAVE_SPDK.  Cases that need a target skip (77) unless
 * STRATA_TEST_NVME_URI names one (nvme-tcp://127.0.0.1:4420/nqn...); the
 * environment options come from STRATA_TEST_SPDK_ENV (default: no
 * hugepages, 512 MB, no PCI scan), as the engine's spdk: section would.
 * The target's namespace is scratch space: these cases overwrite it.
 */
#include <errno.h>
#include <pthread.h>

#include "util.h"

static const char *const DEFAULT_TEST_ENV = "hugepages=0&mem_size_mb=512&pci=0";

static const char *env_options(void)
{
    const char *e = getenv("STRATA_TEST_SPDK_ENV");
    return e != NULL && *e != '\0' ? e : DEFAULT_TEST_ENV;
}

/* The target's URI, with the environment configured; skips when none is named. */
static const char *target(void)
{
    const char *u = getenv("STRATA_TEST_NVME_URI");
    if (u == NULL || *u == '\0')
        t_skip("set STRATA_TEST_NVME_URI to an NVMe-oF target (docs/spdk.md)");
    CHECK_OK(sio_env_configure(env_options()));
    return u;
}

/* The target URI with extra options appended. */
static const char *with_opts(const char *uri, const char *opts)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s%c%s", uri, strchr(uri, '?') ? '&' : '?', opts);
    return buf;
}

static sio_geometry geometry(sio_device *dev)
{
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    return g;
}

TEST(spdk_uri_malformed_rejected)
{
    /* Parsing comes before the environment starts: no target needed. */
    t_open_fails(-EINVAL, "nvme-tcp:127.0.0.1:4420/nqn.x");
    CHECK_DETAIL("expected nvme-tcp://HOST:PORT/SUBNQN");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420/");
    CHECK_DETAIL("names no subsystem");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420");
    CHECK_DETAIL("names no subsystem");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:99999/nqn.x");
    CHECK_DETAIL("bad port");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:/nqn.x");
    CHECK_DETAIL("bad port");
    t_open_fails(-EINVAL, "nvme-tcp://[::1/nqn.x");
    CHECK_DETAIL("IPv6");
    t_open_fails(-EINVAL, "nvme-tcp://:4420/nqn.x");
    CHECK_DETAIL("bad host");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420/nqn.x?ns=0");
    CHECK_DETAIL("'ns'");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420/nqn.x?qd=5000");
    CHECK_DETAIL("'qd'");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420/nqn.x?trim=sometimes");
    CHECK_DETAIL("auto, deallocate or zeroes");
    t_open_fails(-EINVAL, "nvme-tcp://127.0.0.1:4420/nqn.x?colour=blue");
    CHECK_DETAIL("unknown option 'colour'");
    t_open_fails(-EINVAL, "nvme-pcie://zz:01");
    CHECK_DETAIL("bad PCI address");
    t_open_fails(-EINVAL, "nvme-pcie:0000:01:00.0");
    CHECK_DETAIL("expected nvme-pcie://");
}

TEST(spdk_open_geometry_and_options)
{
    const char *uri = target();
    sio_device *dev = t_open("%s", uri);
    sio_geometry g = geometry(dev);
    CHECK_EQ(g.backend, SIO_BACKEND_SPDK);
    CHECK(g.logical_block_size == 512 || g.logical_block_size == 4096);
    CHECK(g.block_count > 0);
    CHECK_EQ(g.buffer_alignment, g.logical_block_size);
    CHECK_EQ(g.queue_depth, 128);
    CHECK(g.max_transfer >= g.logical_block_size && g.max_transfer % g.logical_block_size == 0);
    CHECK(g.max_transfer <= SIO_MAX_TRANSFER);
    uint32_t want = SIO_DEV_F_DIRECT | SIO_DEV_F_TRIM | SIO_DEV_F_COMPLETION_DETAIL;
    CHECK_EQ(g.flags & want, want);
    CHECK_EQ(g.flags & (SIO_DEV_F_READ_ONLY | SIO_DEV_F_FAULTS | SIO_DEV_F_SQPOLL), 0);
    /* A second device on the same subsystem shares the controller; both work. */
    sio_device *ro = t_open("%s", with_opts(uri, "qd=32&ro=1&fail_io=100"));
    sio_geometry g2 = geometry(ro);
    CHECK_EQ(g2.queue_depth, 32);
    CHECK_EQ(g2.block_count, g.block_count);
    CHECK(g2.flags & SIO_DEV_F_READ_ONLY);
    CHECK(g2.flags & SIO_DEV_F_FAULTS);
    sio_qpair *qp = t_qpair(ro, 0);
    void *buf = t_dma(ro, g.logical_block_size);
    sio_cmd c = t_cmd(0, SIO_OP_WRITE, 0, buf, g.logical_block_size);
    CHECK_RC(sio_qpair_submit(qp, &c, 1), -EROFS);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 0, buf, g.logical_block_size, 0).status, 0);
    CHECK_OK(sio_dma_free(ro, buf));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(ro));
    CHECK_OK(sio_device_close(dev));

    /* The environment is running now: the same options are fine, others need a new process. */
    CHECK_OK(sio_env_configure(env_options()));
    CHECK_RC(sio_env_configure("hugepages=1&mem_size_mb=64"), -EBUSY);
    CHECK_DETAIL("already runs with");
}

TEST(spdk_open_errors_name_the_target)
{
    const char *uri = target();
    if (strncmp(uri, "nvme-tcp://", 11) != 0)
        t_skip("the target is not nvme-tcp");
    char host[256] = "", nqn[256] = "";
    const char *p = uri + 11, *slash = strchr(p, '/');
    CHECK(slash != NULL);
    const char *colon = memchr(p, ':', (size_t)(slash - p));
    snprintf(host, sizeof host, "%.*s", (int)((colon ? colon : slash) - p), p);
    snprintf(nqn, sizeof nqn, "%.*s", (int)strcspn(slash + 1, "?"), slash + 1);
    char bad[600];
    snprintf(bad, sizeof bad, "nvme-tcp://%s:1/%s", host, nqn);
    t_open_fails(-ENXIO, bad);
    CHECK_DETAIL("cannot connect to nvme-tcp");
    CHECK_DETAIL(":1 ");
    t_open_fails(-ENXIO, with_opts(uri, "ns=4242"));
    CHECK_DETAIL("no active namespace 4242");
}

TEST(spdk_io_roundtrip_batches_and_fua)
{
    sio_device *dev = t_open("%s", target());
    sio_geometry g = geometry(dev);
    uint32_t bs = g.logical_block_size;
    sio_qpair *qp = t_qpair(dev, 64);
    /* Single commands: one block, a max_transfer, FUA, the last block of the namespace. */
    uint32_t big = g.max_transfer < (1u << 20) ? g.max_transfer : (1u << 20);
    uint8_t *w = t_dma(dev, big), *r = t_dma(dev, big);
    struct {
        uint64_t offset;
        uint32_t len;
        uint8_t flags;
    } cases[] = {
        {0, bs, 0},
        {(uint64_t)bs * 7, big, 0},
        {(uint64_t)bs * 3000, bs * 3, SIO_CMD_F_FUA},
        {(g.block_count - 1) * (uint64_t)bs, bs, 0},
    };
    for (uint32_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t_fill(w, cases[i].len, 100 + i);
        sio_completion c = t_io(qp, SIO_OP_WRITE, cases[i].offset, w, cases[i].len, cases[i].flags);
        CHECK_EQ(c.status, 0);
        CHECK_EQ(c.bytes, cases[i].len);
        memset(r, 0, cases[i].len);
        c = t_io(qp, SIO_OP_READ, cases[i].offset, r, cases[i].len, 0);
        CHECK_EQ(c.status, 0);
        CHECK_EQ(c.bytes, cases[i].len);
        CHECK(t_is_fill(r, cases[i].len, 100 + i));
    }
    /* Batches as deep as the queue pair: 64 writes, then 64 reads, all in flight together. */
    enum { N = 64 };
    uint8_t *wb = t_dma(dev, (uint64_t)N * bs), *rb = t_dma(dev, (uint64_t)N * bs);
    sio_cmd cmds[N];
    sio_completion comps[N];
    for (uint32_t i = 0; i < N; i++) {
        t_fill(wb + (size_t)i * bs, bs, 1000 + i);
        cmds[i] = t_cmd(i, SIO_OP_WRITE, (uint64_t)(4096 + i * 5) * bs, wb + (size_t)i * bs, bs);
    }
    t_batch(qp, cmds, N, comps);
    for (uint32_t i = 0; i < N; i++) {
        CHECK_EQ(comps[i].status, 0);
        cmds[i].opcode = SIO_OP_READ;
        cmds[i].buf = rb + (size_t)i * bs;
    }
    t_batch(qp, cmds, N, comps);
    for (uint32_t i = 0; i < N; i++) {
        CHECK_EQ(comps[i].status, 0);
        CHECK_EQ(comps[i].bytes, bs);
        CHECK(t_is_fill(rb + (size_t)i * bs, bs, 1000 + i));
    }
    /* Commands of max_transfer are split by the driver; 24 at once need more driver
     * requests than the queue pair has, so some wait (parked) and go out as others finish. */
    enum { BIG = 24 };
    uint32_t mt = g.max_transfer;
    uint8_t *bw = t_dma(dev, (uint64_t)BIG * mt), *br = t_dma(dev, (uint64_t)BIG * mt);
    sio_cmd big_cmds[BIG];
    sio_completion big_comps[BIG];
    uint64_t big_base = 32768 * (uint64_t)bs;
    if (big_base + (uint64_t)BIG * mt > g.block_count * (uint64_t)bs)
        t_skip("the namespace is too small for the max_transfer batch");
    for (uint32_t i = 0; i < BIG; i++) {
        t_fill(bw + (size_t)i * mt, mt, 7000 + i);
        big_cmds[i] = t_cmd(i, SIO_OP_WRITE, big_base + (uint64_t)i * mt, bw + (size_t)i * mt, mt);
    }
    t_batch(qp, big_cmds, BIG, big_comps);
    for (uint32_t i = 0; i < BIG; i++) {
        CHECK_EQ(big_comps[i].status, 0);
        CHECK_EQ(big_comps[i].bytes, mt);
        big_cmds[i].opcode = SIO_OP_READ;
        big_cmds[i].buf = br + (size_t)i * mt;
    }
    t_batch(qp, big_cmds, BIG, big_comps);
    for (uint32_t i = 0; i < BIG; i++)
        CHECK(big_comps[i].status == 0 && t_is_fill(br + (size_t)i * mt, mt, 7000 + i));
    CHECK_OK(sio_dma_free(dev, bw));
    CHECK_OK(sio_dma_free(dev, br));

    /* A full queue refuses more until polled. */
    CHECK_OK(sio_qpair_submit(qp, cmds, N));
    CHECK_RC(sio_qpair_submit(qp, cmds, 1), -EAGAIN);
    t_reap(qp, N, comps);
    uint32_t inflight = 1;
    CHECK_OK(sio_qpair_inflight(qp, &inflight));
    CHECK_EQ(inflight, 0);
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_dma_free(dev, wb));
    CHECK_OK(sio_dma_free(dev, rb));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(dev));
}

/* TRIM, WRITE_ZEROES (one NVMe command and split over many) and FLUSH read back as zeroes. */
static void trim_and_zeroes(const char *uri)
{
    sio_device *dev = t_open("%s", uri);
    sio_geometry g = geometry(dev);
    uint32_t bs = g.logical_block_size;
    sio_qpair *qp = t_qpair(dev, 16);
    uint8_t *buf = t_dma(dev, 32 * (uint64_t)bs), *back = t_dma(dev, 32 * (uint64_t)bs);
    uint64_t base = 256 * (uint64_t)bs;
    t_fill(buf, 32 * (size_t)bs, 7);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, base, buf, 32 * bs, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_TRIM, base + 4 * (uint64_t)bs, NULL, 8 * bs, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE_ZEROES, base + 16 * (uint64_t)bs, NULL, 4 * bs, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_TRIM, base + 24 * (uint64_t)bs, NULL, 2 * bs, SIO_CMD_F_FUA).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_READ, base, back, 32 * bs, 0).status, 0);
    memset(buf + 4 * (size_t)bs, 0, 8 * (size_t)bs);
    memset(buf + 16 * (size_t)bs, 0, 4 * (size_t)bs);
    memset(buf + 24 * (size_t)bs, 0, 2 * (size_t)bs);
    CHECK(memcmp(buf, back, 32 * (size_t)bs) == 0);

    /* Write zeroes over more blocks than one NVMe command carries (65536): the shim splits it. */
    uint64_t nblocks = 65536 + 8;
    uint64_t start = 1024;
    if ((start + nblocks + 1) > g.block_count)
        t_skip("the namespace is too small for the split write-zeroes check");
    if ((nblocks * bs) > UINT32_MAX)
        nblocks = UINT32_MAX / bs;
    uint64_t first = start * bs, last = (start + nblocks - 1) * bs, after = (start + nblocks) * bs;
    t_fill(buf, bs, 11);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, first, buf, bs, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, last, buf, bs, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, after, buf, bs, 0).status, 0);
    sio_completion c = t_io(qp, SIO_OP_WRITE_ZEROES, first, NULL, (uint32_t)(nblocks * bs), SIO_CMD_F_FUA);
    CHECK_EQ(c.status, 0);
    CHECK_EQ(c.bytes, 0);
    CHECK_EQ(t_io(qp, SIO_OP_READ, first, back, bs, 0).status, 0);
    CHECK(t_is_zero(back, bs));
    CHECK_EQ(t_io(qp, SIO_OP_READ, last, back, bs, 0).status, 0);
    CHECK(t_is_zero(back, bs));
    CHECK_EQ(t_io(qp, SIO_OP_READ, after, back, bs, 0).status, 0);
    CHECK(t_is_fill(back, bs, 11));
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_dma_free(dev, back));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(dev));
}

TEST(spdk_trim_write_zeroes_flush_read_back_zeroes)
{
    /* The namespace's own choice: an SPDK target reports no deallocated read value, so TRIM
     * becomes Write Zeroes there. */
    trim_and_zeroes(target());
}

TEST(spdk_trim_deallocate_and_emulated_write_zeroes)
{
    /* Dataset management for TRIM (an SPDK Malloc namespace zeroes what it deallocates) and
     * writes of a zeroed buffer instead of Write Zeroes: the other two paths. */
    trim_and_zeroes(with_opts(target(), "trim=deallocate&write_zeroes=0"));
}

TEST(spdk_injected_faults_complete_with_detail)
{
    sio_device *dev = t_open("%s", target());
    sio_geometry g = geometry(dev);
    uint32_t bs = g.logical_block_size;
    sio_qpair *qp = t_qpair(dev, 8);
    uint8_t *buf = t_dma(dev, 4 * (uint64_t)bs), *back = t_dma(dev, 4 * (uint64_t)bs);
    uint64_t off = 512 * (uint64_t)bs;

    CHECK_OK(sio_device_set_faults(dev, "fail_io=2&fail_ops=write"));
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, off, buf, bs, 0).status, 0);
    sio_completion c = t_io(qp, SIO_OP_WRITE, off + bs, buf, bs, 0);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, 0);
    CHECK_DETAIL("injected fault on nvme-");
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, off + 2 * (uint64_t)bs, buf, bs, 0).status, 0);

    /* A torn write lands its first block only and reports EIO. */
    CHECK_OK(sio_device_set_faults(dev, ""));
    t_fill(buf, 4 * (size_t)bs, 21);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, off, buf, 4 * bs, 0).status, 0);
    char spec[64];
    snprintf(spec, sizeof spec, "tear_write=1&tear_bytes=%u", bs);
    CHECK_OK(sio_device_set_faults(dev, spec));
    t_fill(buf, 4 * (size_t)bs, 22);
    c = t_io(qp, SIO_OP_WRITE, off, buf, 4 * bs, 0);
    CHECK_EQ(c.status, -EIO);
    CHECK_EQ(c.bytes, bs);
    CHECK_OK(sio_device_set_faults(dev, ""));
    CHECK_EQ(t_io(qp, SIO_OP_READ, off, back, 4 * bs, 0).status, 0);
    CHECK(memcmp(back, buf, bs) == 0);
    t_fill(buf, 4 * (size_t)bs, 21);
    CHECK(memcmp(back + bs, buf + bs, 3 * (size_t)bs) == 0);

    /* A failed completion ends its batch: the detail belongs to the last completion returned. */
    CHECK_OK(sio_device_set_faults(dev, "fail_io=2"));
    sio_cmd cmds[3] = {
        t_cmd(0, SIO_OP_READ, off, back, bs),
        t_cmd(1, SIO_OP_READ, off + bs, back + bs, bs),
        t_cmd(2, SIO_OP_READ, off + 2 * (uint64_t)bs, back + 2 * (size_t)bs, bs),
    };
    CHECK_OK(sio_qpair_submit(qp, cmds, 3));
    uint32_t got = 0, total = 0;
    sio_completion out[3];
    for (int spins = 0; total < 3 && spins < 100000; spins++) {
        CHECK_OK(sio_qpair_wait(qp, out, 3, 100000, &got));
        for (uint32_t i = 0; i + 1 < got; i++)
            CHECK_EQ(out[i].status, 0);
        if (got != 0 && out[got - 1].status != 0) {
            CHECK_EQ(out[got - 1].tag, 1);
            CHECK_DETAIL("injected fault");
        }
        total += got;
    }
    CHECK_EQ(total, 3);
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_dma_free(dev, back));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(dev));
}

struct worker {
    sio_device *dev;
    uint32_t id;
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    sio_geometry g;
    sio_device_geometry(w->dev, &g);
    uint32_t bs = g.logical_block_size;
    sio_qpair *qp = NULL;
    uint8_t *wb = NULL, *rb = NULL;
    if (sio_qpair_create(w->dev, 4, &qp) != 0 || sio_dma_alloc(w->dev, bs, 0, (void **)&wb) != 0 ||
        sio_dma_alloc(w->dev, bs, 0, (void **)&rb) != 0) {
        w->failures++;
        return NULL;
    }
    for (uint32_t round = 0; round < 200; round++) {
        uint64_t off = (uint64_t)(8192 + w->id * 256 + round % 256) * bs;
        t_fill(wb, bs, w->id * 1000 + round);
        sio_cmd c = t_cmd(0, SIO_OP_WRITE, off, wb, bs);
        sio_completion comp;
        uint32_t n = 0;
        if (sio_qpair_submit(qp, &c, 1) != 0)
            w->failures++;
        while (n == 0)
            sio_qpair_wait(qp, &comp, 1, 1000000, &n);
        c.opcode = SIO_OP_READ;
        c.buf = rb;
        n = 0;
        if (comp.status != 0 || sio_qpair_submit(qp, &c, 1) != 0)
            w->failures++;
        while (n == 0)
            sio_qpair_wait(qp, &comp, 1, 1000000, &n);
        if (comp.status != 0 || memcmp(wb, rb, bs) != 0)
            w->failures++;
    }
    sio_dma_free(w->dev, wb);
    sio_dma_free(w->dev, rb);
    sio_qpair_destroy(qp);
    return NULL;
}

TEST(spdk_queue_pairs_on_their_own_threads)
{
    sio_device *dev = t_open("%s", target());
    enum { THREADS = 3 };
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (uint32_t i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.dev = dev, .id = i};
        CHECK_EQ(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (uint32_t i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(w[i].failures, 0);
    }
    CHECK_OK(sio_device_close(dev));
}

TEST(spdk_destroy_waits_for_inflight_then_reopen_sees_data)
{
    const char *uri = target();
    sio_device *dev = t_open("%s", uri);
    uint32_t bs = geometry(dev).logical_block_size;
    enum { N = 32 };
    sio_qpair *qp = t_qpair(dev, N);
    uint8_t *buf = t_dma(dev, (uint64_t)N * bs);
    sio_cmd cmds[N];
    for (uint32_t i = 0; i < N; i++) {
        t_fill(buf + (size_t)i * bs, bs, 500 + i);
        cmds[i] = t_cmd(i, SIO_OP_WRITE, (uint64_t)(16384 + i) * bs, buf + (size_t)i * bs, bs);
    }
    CHECK_OK(sio_qpair_submit(qp, cmds, N));
    CHECK_RC(sio_device_close(dev), -EBUSY);
    CHECK_OK(sio_qpair_destroy(qp)); /* drains the accepted writes */
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_device_close(dev));

    dev = t_open("%s", uri);
    qp = t_qpair(dev, N);
    buf = t_dma(dev, (uint64_t)N * bs);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 16384 * (uint64_t)bs, buf, N * bs, 0).status, 0);
    for (uint32_t i = 0; i < N; i++)
        CHECK(t_is_fill(buf + (size_t)i * bs, bs, 500 + i));
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(dev));
}

TEST(spdk_nvme_error_status_in_completion_detail)
{
    /* A namespace whose reads the target fails (an SPDK error bdev, docs/spdk.md): the NVMe
     * status comes back as the completion's errno and as the thread's detail. */
    const char *uri = getenv("STRATA_TEST_NVME_ERROR_URI");
    if (uri == NULL || *uri == '\0')
        t_skip("set STRATA_TEST_NVME_ERROR_URI to a namespace whose reads fail (docs/spdk.md)");
    CHECK_OK(sio_env_configure(env_options()));
    sio_device *dev = t_open("%s", uri);
    uint32_t bs = geometry(dev).logical_block_size;
    sio_qpair *qp = t_qpair(dev, 4);
    void *buf = t_dma(dev, bs);
    sio_completion c = t_io(qp, SIO_OP_READ, 0, buf, bs, 0);
    CHECK(c.status < 0);
    CHECK_EQ(c.bytes, 0);
    CHECK_DETAIL("NVMe status 0x");
    CHECK_DETAIL(" ns 1");
    CHECK_OK(sio_dma_free(dev, buf));
    CHECK_OK(sio_qpair_destroy(qp));
    CHECK_OK(sio_device_close(dev));
}

TEST(spdk_env_start_failure_is_reported_and_final)
{
    /* No target needed: the environment starts (and here fails) before any connection. DPDK
     * refuses a core mask naming a CPU this machine lacks. */
    CHECK_OK(sio_env_configure("hugepages=0&mem_size_mb=64&pci=0&core_mask=0x8000000000000000"));
    sio_device *dev = (sio_device *)1;
    int32_t rc = sio_device_open("nvme-tcp://127.0.0.1:9/nqn.2016-06.io.strata:none", &dev);
    CHECK(rc < 0);
    CHECK(dev == NULL);
    CHECK_DETAIL("the SPDK environment did not start with");
    CHECK_DETAIL("core_mask=0x8000000000000000");
    /* DPDK cannot be initialised twice in a process: every later open reports the same. */
    t_open_fails(rc, "nvme-tcp://127.0.0.1:9/nqn.2016-06.io.strata:none");
    CHECK_DETAIL("the SPDK environment did not start with");
    CHECK_RC(sio_env_configure("hugepages=0&mem_size_mb=64&pci=0"), -EBUSY);
}
