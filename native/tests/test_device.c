/*
 * test_device.c - opening devices: URI forms, options, size rules, geometry,
 * block devices, close rules and the error detail.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static char uri_buf[1024];
static const char *uri(const char *fmt, const char *path)
{
    snprintf(uri_buf, sizeof uri_buf, fmt, path);
    return uri_buf;
}

TEST(abi_version)
{
    CHECK_EQ(sio_abi_version(), SIO_ABI_VERSION);
    CHECK_EQ(SIO_ABI_VERSION, 4);
}

static void *detail_in_fresh_thread(void *arg)
{
    char *out = arg;
    out[0] = 'x';
    if (sio_error_detail(out, SIO_ERROR_DETAIL_MAX) != 0)
        out[0] = '!';
    return NULL;
}

TEST(error_detail_per_thread_and_truncated)
{
    /* A thread that never failed has an empty detail, whatever other threads did. */
    t_open_fails(-EINVAL, "bogus:/x");
    char other[SIO_ERROR_DETAIL_MAX];
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, detail_in_fresh_thread, other), 0);
    pthread_join(th, NULL);
    CHECK_EQ(strlen(other), 0);
    CHECK_DETAIL("unknown scheme 'bogus'");

    char small[8];
    CHECK_OK(sio_error_detail(small, sizeof small));
    CHECK(strcmp(small, "unknown") == 0);
    char one[1] = {'x'};
    CHECK_OK(sio_error_detail(one, 1));
    CHECK_EQ(one[0], '\0');
    CHECK_RC(sio_error_detail(NULL, 16), -EINVAL);
    CHECK_RC(sio_error_detail(small, 0), -EINVAL);
    /* Success does not clear it; the next failure replaces it. */
    sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("d"));
    CHECK_DETAIL("unknown scheme 'bogus'");
    CHECK_OK(sio_device_close(dev));
    t_open_fails(-ENOENT, uri("file:%s", t_path("missing")));
    CHECK_DETAIL("no such file");
}

TEST(open_missing_file)
{
    const char *p = t_path("nope");
    t_open_fails(-ENOENT, uri("file:%s", p));
    CHECK_DETAIL("no such file");
    CHECK_DETAIL(p);
    /* create=1 without size= cannot create. */
    t_open_fails(-EINVAL, uri("file:%s?create=1", p));
    CHECK_DETAIL("without size=");
    CHECK(access(p, F_OK) != 0);
}

TEST(open_bad_scheme_and_malformed_uri)
{
    t_open_fails(-EINVAL, "http://example.com/x");
    CHECK_DETAIL("unknown scheme 'http'");
    t_open_fails(-EINVAL, "/tmp/no-scheme");
    CHECK_DETAIL("malformed device URI");
    t_open_fails(-EINVAL, ":x");
    t_open_fails(-EINVAL, "fi le:/x");
    CHECK_DETAIL("malformed scheme");
    t_open_fails(-EINVAL, "file:");
    CHECK_DETAIL("empty path");
    t_open_fails(-EINVAL, "file://host/x");
    CHECK_DETAIL("names a host");
    sio_device *dev = (sio_device *)1;
    CHECK_RC(sio_device_open(NULL, &dev), -EINVAL);
    CHECK(dev == NULL);
    CHECK_RC(sio_device_open("file:/x", NULL), -EINVAL);
}

TEST(open_spdk_scheme_not_built)
{
#ifdef STRATA_HAVE_SPDK
    t_skip("this build has the SPDK backend (test_spdk.c covers nvme URIs)");
#endif
    t_open_fails(-ENOTSUP, "nvme-pcie://0000:01:00.0");
    CHECK_DETAIL("SPDK");
    t_open_fails(-ENOTSUP, "nvme-tcp://127.0.0.1:4420/nqn.2016-06.io.spdk:cnode1");
}

TEST(open_unknown_option)
{
    const char *p = t_path("f");
    t_make_file(p, 65536);
    char u[600];
    snprintf(u, sizeof u, "file:%s?foo=1", p);
    t_open_fails(-EINVAL, u);
    char want[700];
    snprintf(want, sizeof want, "unknown option 'foo' in '%s'", u);
    CHECK(strcmp(t_detail(), want) == 0);
    snprintf(u, sizeof u, "file:%s?fail_bogus=1", p);
    t_open_fails(-EINVAL, u);
    CHECK_DETAIL("unknown option 'fail_bogus'");
}

TEST(open_bad_option_values)
{
    const char *p = t_path("f");
    t_make_file(p, 1 << 20);
    static const struct {
        const char *query;
        const char *detail;
    } cases[] = {
        {"qd=0", "option 'qd'"},
        {"qd=4097", "option 'qd'"},
        {"qd=12x", "option 'qd'"},
        {"qd=-1", "option 'qd'"},
        {"block=1024", "option 'block'"},
        {"block=", "option 'block'"},
        {"direct=2", "option 'direct'"},
        {"direct=yes", "option 'direct'"},
        {"sqpoll=true", "option 'sqpoll'"},
        {"ro=01", "option 'ro'"},
        {"create=x", "option 'create'"},
        {"size=12Q", "option 'size'"},
        {"size=K", "option 'size'"},
        {"size=0", "option 'size'"},
        {"size=99999999999999999999", "option 'size'"},
        {"size=20000000T", "option 'size'"},
        {"size=4097", "not a multiple of the block size"},
        {"fail_io=x", "option 'fail_io'"},
        {"fail_every=1.5", "option 'fail_every'"},
        {"fail_flush=some", "option 'fail_flush'"},
        {"tear_write=-2", "option 'tear_write'"},
        {"tear_bytes=1X", "option 'tear_bytes'"},
        {"tear_ok=2", "option 'tear_ok'"},
        {"fail_ops=read,bogus", "option 'fail_ops'"},
        {"fail_ops=", "option 'fail_ops'"},
        {"fail_ops=read,", "option 'fail_ops'"},
        {"fail_range=8K-4K", "option 'fail_range'"},
        {"fail_range=4K", "option 'fail_range'"},
        {"fail_range=-4K", "option 'fail_range'"},
        {"fail_ops=read&tear_write=1", "tear_write needs 'write'"},
        {"qd=1&qd=2", "duplicate option 'qd'"},
        {"qd=1&&ro=1", "empty option"},
        {"qd", "option 'qd' has no value"},
        {"=1", "empty name"},
        {"ro=1&create=1", "contradict"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char u[700];
        snprintf(u, sizeof u, "file:%s?%s", p, cases[i].query);
        t_open_fails(-EINVAL, u);
        if (strstr(t_detail(), cases[i].detail) == NULL)
            t_fail(__FILE__, __LINE__, "%s: detail '%s' lacks '%s'", u, t_detail(), cases[i].detail);
    }
}

TEST(open_create_sparse_file)
{
    const char *p = t_path("new");
    sio_device *dev = t_open("file:%s?create=1&size=1M", p);
    CHECK_EQ(t_file_size(p), 1 << 20);
    struct stat st;
    CHECK_EQ(stat(p, &st), 0);
    CHECK(st.st_blocks * 512 < (1 << 20)); /* sparse */
    CHECK_EQ(st.st_mode & 0777, 0600);
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.block_count, 256);
    CHECK_OK(sio_device_close(dev));
    /* Reopening with create=1 keeps an existing file; a larger existing file keeps its size. */
    t_make_file(p, 2 << 20);
    dev = t_open("file:%s?create=1&size=1M", p);
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.block_count, 512);
    CHECK_EQ(t_file_size(p), 2 << 20);
    CHECK_OK(sio_device_close(dev));
}

TEST(open_size_rules)
{
    const char *p = t_path("small");
    t_make_file(p, 4096);
    t_open_fails(-ENOSPC, uri("file:%s?size=1M", p));
    char want[600];
    snprintf(want, sizeof want, "'%s' is 4096 bytes, smaller than the requested 1048576", p);
    CHECK_DETAIL(want);
    t_open_fails(-ENOSPC, uri("file:%s?create=1&size=1M", p));

    t_make_file(p, 4096 * 3 + 512);
    t_open_fails(-EINVAL, uri("file:%s", p));
    CHECK_DETAIL("not a multiple of the block size 4096");
    sio_device *dev = t_open("file:%s?block=512", p); /* fine with 512-byte blocks */
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.logical_block_size, 512);
    CHECK_EQ(g.block_count, 25);
    CHECK_EQ(g.buffer_alignment, 512);
    CHECK_OK(sio_device_close(dev));

    t_make_file(p, 100);
    t_open_fails(-EINVAL, uri("file:%s?direct=0", p));
    CHECK_DETAIL("smaller than one block");
    t_make_file(p, 0);
    t_open_fails(-EINVAL, uri("file:%s", p));
    CHECK_DETAIL("smaller than one block");
}

TEST(open_not_a_file)
{
    const char *d = t_path("dir");
    CHECK_EQ(mkdir(d, 0700), 0);
    sio_device *dev = NULL;
    int32_t rc = sio_device_open(uri("file:%s", d), &dev);
    CHECK(rc == -EISDIR || rc == -EINVAL);
    CHECK(dev == NULL);
    CHECK_DETAIL(d);
    t_open_fails(-EINVAL, uri("file:%s?ro=1&direct=0", d));
    CHECK_DETAIL("neither a regular file nor a block device");
}

TEST(geometry_defaults)
{
    const char *p = t_path("g");
    sio_device *dev = t_open("file:%s?create=1&size=8M", p);
    sio_geometry g;
    memset(&g, 0xff, sizeof g);
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.logical_block_size, 4096);
    CHECK_EQ(g.block_count, 2048);
    CHECK_EQ(g.optimal_io_size, 131072);
    CHECK_EQ(g.buffer_alignment, 4096);
    CHECK_EQ(g.queue_depth, 128);
    CHECK_EQ(g.max_transfer, SIO_MAX_TRANSFER);
    CHECK_EQ(g.flags, SIO_DEV_F_DIRECT | SIO_DEV_F_TRIM | SIO_DEV_F_VOLATILE_CACHE);
    CHECK_EQ(g.backend, SIO_BACKEND_URING);
    CHECK_EQ(g.reserved, 0);
    CHECK_RC(sio_device_geometry(NULL, &g), -EINVAL);
    CHECK_RC(sio_device_geometry(dev, NULL), -EINVAL);
    CHECK_OK(sio_device_close(dev));
}

TEST(geometry_options)
{
    const char *p = t_path("g");
    t_make_file(p, 1 << 20);
    sio_device *dev = t_open("file:%s?direct=0&qd=16&block=512&sqpoll=1&fail_io=5", p);
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.logical_block_size, 512);
    CHECK_EQ(g.block_count, 2048);
    CHECK_EQ(g.buffer_alignment, 8);
    CHECK_EQ(g.queue_depth, 16);
    CHECK_EQ(g.flags, SIO_DEV_F_SQPOLL | SIO_DEV_F_TRIM | SIO_DEV_F_VOLATILE_CACHE | SIO_DEV_F_FAULTS |
                          SIO_DEV_F_CACHED_READ | SIO_DEV_F_CACHED_WRITE);
    CHECK_OK(sio_device_close(dev));

    dev = t_open("file://%s?ro=1&size=1M", p); /* file:///abs form */
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.flags, SIO_DEV_F_DIRECT | SIO_DEV_F_TRIM | SIO_DEV_F_VOLATILE_CACHE | SIO_DEV_F_READ_ONLY);
    CHECK_OK(sio_device_close(dev));

    /* Relative paths are relative to the working directory. */
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK_EQ(chdir(t_path("")), 0);
    dev = t_open("file:g?qd=1");
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.queue_depth, 1);
    CHECK_OK(sio_device_close(dev));
    CHECK_EQ(chdir(cwd), 0);
}

/* Attaches a backing file to a free loop device; skips when the machine has none. */
static int attach_loop(const char *backing, char *dev_path, size_t len)
{
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0)
        t_skip("no /dev/loop-control");
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    close(ctl);
    if (n < 0)
        t_skip("no free loop device");
    snprintf(dev_path, len, "/dev/loop%d", n);
    int lfd = open(dev_path, O_RDWR | O_CLOEXEC);
    int bfd = open(backing, O_RDWR | O_CLOEXEC);
    if (lfd < 0 || bfd < 0)
        t_skip("cannot open the loop device");
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (uint32_t)bfd;
    cfg.block_size = 512;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    int rc = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    close(bfd);
    if (rc != 0) {
        close(lfd);
        t_skip("LOOP_CONFIGURE failed");
    }
    return lfd; /* closing it detaches the device (autoclear) */
}

TEST(block_device_roundtrip)
{
    const char *backing = t_path("loop-backing");
    t_make_file(backing, (4 << 20) + 512); /* tail under a 4 KiB block is not addressable */
    char dp[64];
    int lfd = attach_loop(backing, dp, sizeof dp);
    sio_device *dev = NULL;
    char u[128];
    snprintf(u, sizeof u, "file:%s?size=4M", dp);
    int32_t rc = sio_device_open(u, &dev);
    if (rc != 0) {
        close(lfd);
        t_fail(__FILE__, __LINE__, "open %s: %d %s", u, rc, t_detail());
    }
    sio_geometry g;
    CHECK_OK(sio_device_geometry(dev, &g));
    CHECK_EQ(g.logical_block_size, 4096);
    CHECK_EQ(g.block_count, 1024);
    CHECK(g.flags & SIO_DEV_F_DIRECT);
    sio_qpair *qp = t_qpair(dev, 8);
    uint8_t *w = t_dma(dev, 16384), *r = t_dma(dev, 16384);
    t_fill(w, 16384, 7);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE, 8192, w, 16384, SIO_CMD_F_FUA).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 8192, r, 16384, 0).bytes, 16384);
    CHECK(t_is_fill(r, 16384, 7));
    CHECK_EQ(t_io(qp, SIO_OP_FLUSH, 0, NULL, 0, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_TRIM, 8192, NULL, 4096, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_WRITE_ZEROES, 12288, NULL, 4096, 0).status, 0);
    CHECK_EQ(t_io(qp, SIO_OP_READ, 8192, r, 16384, 0).status, 0);
    CHECK(t_is_zero(r, 8192));
    CHECK(memcmp(r + 8192, w + 8192, 8192) == 0);
    CHECK_RC(sio_qpair_submit(qp, &(sio_cmd){.opcode = SIO_OP_READ, .offset = 4 << 20, .buf = r, .length = 4096}, 1),
             -ERANGE);
    CHECK_OK(sio_qpair_destroy(qp));
    close(lfd);
    /* The data went through the block device to the backing file. */
    uint8_t back[4096];
    t_read_file(backing, 16384, back, sizeof back);
    CHECK(memcmp(back, w + 8192, 4096) == 0);
    CHECK_OK(sio_dma_free(dev, w));
    CHECK_OK(sio_dma_free(dev, r));
    CHECK_OK(sio_device_close(dev));
}

TEST(open_twice_is_refused_while_locked)
{
    sio_device *a = t_open("file:%s?create=1&size=64K", t_path("locked"));
    t_open_fails(-EBUSY, uri("file:%s", t_path("locked")));
    CHECK_DETAIL("in use");
    t_open_fails(-EBUSY, uri("file:%s?ro=1", t_path("locked")));
    sio_device *b = t_open("file:%s?lock=0", t_path("locked"));
    CHECK_OK(sio_device_close(b));
    CHECK_OK(sio_device_close(a));
    /* Readers share; a writer waits for them all. */
    sio_device *r1 = t_open("file:%s?ro=1", t_path("locked"));
    sio_device *r2 = t_open("file:%s?ro=1", t_path("locked"));
    t_open_fails(-EBUSY, uri("file:%s", t_path("locked")));
    CHECK_OK(sio_device_close(r1));
    CHECK_OK(sio_device_close(r2));
    sio_device *w = t_open("file:%s", t_path("locked"));
    CHECK_OK(sio_device_close(w));
}

TEST(lock_released_at_close_even_after_qpair_io)
{
    /* The ring holds the file as a registered file; its teardown must not delay the unlock. */
    for (int i = 0; i < 20; i++) {
        sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("relock"));
        sio_qpair *qp = t_qpair(dev, 8);
        void *buf = t_dma(dev, 4096);
        sio_completion c = t_io(qp, SIO_OP_WRITE, 0, buf, 4096, 0);
        CHECK_EQ(c.status, 0);
        CHECK_OK(sio_dma_free(dev, buf));
        CHECK_OK(sio_qpair_destroy(qp));
        CHECK_OK(sio_device_close(dev));
    }
}

TEST(close_with_live_qpair)
{
    sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("c"));
    sio_qpair *a = t_qpair(dev, 4), *b = t_qpair(dev, 4);
    CHECK_RC(sio_device_close(dev), -EBUSY);
    CHECK_DETAIL("2 queue pairs are still open");
    CHECK_OK(sio_qpair_destroy(a));
    CHECK_RC(sio_device_close(dev), -EBUSY);
    CHECK_DETAIL("1 queue pair is still open");
    CHECK_OK(sio_qpair_destroy(b));
    CHECK_OK(sio_device_close(dev));
    CHECK_RC(sio_device_close(NULL), -EINVAL);
}
