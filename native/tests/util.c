/*
 * util.c - test fixtures: temp dir lifecycle, file I/O, device helpers.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tmpdir(void)
{
    if (tmpdir[0] != '\0')
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *t_path(const char *name)
{
    static char bufs[8][512];
    static int next;
    if (tmpdir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/strata-io-test.XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(tmpdir) == NULL)
            t_fail(__FILE__, __LINE__, "mkdtemp(%s): %s", tmpdir, strerror(errno));
        atexit(rm_tmpdir);
    }
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

void t_make_file(const char *path, uint64_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0)
        t_fail(__FILE__, __LINE__, "cannot make %s: %s", path, strerror(errno));
    close(fd);
}

uint64_t t_file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        t_fail(__FILE__, __LINE__, "stat %s: %s", path, strerror(errno));
    return (uint64_t)st.st_size;
}

void t_read_file(const char *path, uint64_t offset, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || pread(fd, buf, len, (off_t)offset) != (ssize_t)len)
        t_fail(__FILE__, __LINE__, "cannot read %s: %s", path, strerror(errno));
    close(fd);
}

void t_write_file(const char *path, uint64_t offset, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || pwrite(fd, buf, len, (off_t)offset) != (ssize_t)len)
        t_fail(__FILE__, __LINE__, "cannot write %s: %s", path, strerror(errno));
    close(fd);
}

sio_device *t_open(const char *fmt, ...)
{
    char uri[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(uri, sizeof uri, fmt, ap);
    va_end(ap);
    sio_device *dev = NULL;
    int32_t rc = sio_device_open(uri, &dev);
    if (rc != 0)
        t_fail(__FILE__, __LINE__, "open %s: %d (%s): %s", uri, rc, strerror(-rc), t_detail());
    return dev;
}

void t_open_fails(int32_t expected, const char *uri)
{
    sio_device *dev = (sio_device *)1;
    int32_t rc = sio_device_open(uri, &dev);
    if (rc != expected)
        t_fail(__FILE__, __LINE__, "open %s returned %d (%s), expected %d; detail: %s", uri, rc, strerror(-rc),
               expected, t_detail());
    if (dev != NULL)
        t_fail(__FILE__, __LINE__, "failed open left *out_dev set");
}

sio_qpair *t_qpair(sio_device *dev, uint32_t depth)
{
    sio_qpair *qp = NULL;
    CHECK_OK(sio_qpair_create(dev, depth, &qp));
    CHECK(qp != NULL);
    return qp;
}

void *t_dma(sio_device *dev, uint64_t size)
{
    void *p = NULL;
    CHECK_OK(sio_dma_alloc(dev, size, 0, &p));
    CHECK(p != NULL);
    return p;
}

void t_reap(sio_qpair *qp, uint32_t n, sio_completion *comps)
{
    uint32_t got = 0;
    bool *seen = calloc(n, sizeof *seen);
    sio_completion buf[64];
    int idle_rounds = 0;
    while (got < n) {
        uint32_t k = 0;
        CHECK_OK(sio_qpair_wait(qp, buf, 64, 100000, &k));
        idle_rounds = k == 0 ? idle_rounds + 1 : 0;
        if (idle_rounds > 100)
            t_fail(__FILE__, __LINE__, "only %u of %u completions after 10 s", got, n);
        for (uint32_t i = 0; i < k; i++) {
            uint64_t tag = buf[i].tag;
            if (tag >= n || seen[tag])
                t_fail(__FILE__, __LINE__, "unexpected completion tag %" PRIu64, tag);
            seen[tag] = true;
            comps[tag] = buf[i];
        }
        got += k;
    }
    free(seen);
}

void t_batch(sio_qpair *qp, const sio_cmd *cmds, uint32_t n, sio_completion *comps)
{
    CHECK_OK(sio_qpair_submit(qp, cmds, n));
    t_reap(qp, n, comps);
}

sio_completion t_io(sio_qpair *qp, uint8_t op, uint64_t offset, void *buf, uint32_t len, uint8_t flags)
{
    sio_cmd c = t_cmd(0, op, offset, buf, len);
    c.flags = flags;
    sio_completion comp;
    t_batch(qp, &c, 1, &comp);
    return comp;
}

static uint8_t pattern_byte(uint32_t seed, size_t i)
{
    uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u + (uint32_t)(i >> 12);
    x ^= x >> 13;
    return (uint8_t)(x | 1); /* never zero, so a pattern is never mistaken for zeroes */
}

void t_fill(void *buf, size_t len, uint32_t seed)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = pattern_byte(seed, i);
}

bool t_is_fill(const void *buf, size_t len, uint32_t seed)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_byte(seed, i))
            return false;
    return true;
}

bool t_is_byte(const void *buf, size_t len, uint8_t byte)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != byte)
            return false;
    return true;
}

bool t_is_zero(const void *buf, size_t len)
{
    return t_is_byte(buf, len, 0);
}
