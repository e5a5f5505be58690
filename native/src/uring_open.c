/*
 * uring_open.c - opening a file or block device for the io_uring backend.
 *
 * The device's capacity is the file's (or block device's) size, so no
 * command inside the range can hit EOF.  Existing files are never resized:
 * size= is the least size they must have, and create=1 makes a sparse file
 * of exactly size= when the path is missing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "error.h"
#include "uring.h"

enum {
    DEFAULT_QUEUE_DEPTH = 128,
    DEFAULT_BLOCK = 4096,
    DEFAULT_OPTIMAL_IO = 128 * 1024,
    BUFFERED_ALIGNMENT = 8,
};

struct file_options {
    bool create;
    bool has_size;
    uint64_t size;
    bool direct;
    bool cached_writes;
    bool has_cached_writes;
    uint32_t qd;
    bool sqpoll;
    uint32_t block;
    bool ro;
    bool lock;
};

static int32_t bad_value(const struct sio_uri *uri, const struct sio_uri_opt *o, const char *expect)
{
    return sio_fail(-EINVAL, "bad value '%s' for option '%s' in '%s': expected %s", o->value, o->key, uri->text,
                    expect);
}

static int32_t parse_options(struct sio_uri *uri, struct file_options *fo)
{
    *fo = (struct file_options){.direct = true, .qd = DEFAULT_QUEUE_DEPTH, .block = DEFAULT_BLOCK, .lock = true};
    for (uint32_t i = 0; i < uri->nopts; i++) {
        struct sio_uri_opt *o = &uri->opts[i];
        if (o->used)
            continue;
        uint64_t v;
        if (strcmp(o->key, "create") == 0) {
            if (sio_parse_bool(o->value, &fo->create) != 0)
                return bad_value(uri, o, "0 or 1");
        } else if (strcmp(o->key, "size") == 0) {
            if (sio_parse_size(o->value, &fo->size) != 0 || fo->size == 0 || fo->size > (uint64_t)INT64_MAX)
                return bad_value(uri, o, "a size in bytes (K/M/G/T suffix allowed)");
            fo->has_size = true;
        } else if (strcmp(o->key, "direct") == 0) {
            if (sio_parse_bool(o->value, &fo->direct) != 0)
                return bad_value(uri, o, "0 or 1");
        } else if (strcmp(o->key, "cached_writes") == 0) {
            if (sio_parse_bool(o->value, &fo->cached_writes) != 0)
                return bad_value(uri, o, "0 or 1");
            fo->has_cached_writes = true;
        } else if (strcmp(o->key, "qd") == 0) {
            if (sio_parse_u64(o->value, &v) != 0 || v == 0 || v > SIO_MAX_QUEUE_DEPTH)
                return bad_value(uri, o, "a queue depth in 1..4096");
            fo->qd = (uint32_t)v;
        } else if (strcmp(o->key, "sqpoll") == 0) {
            if (sio_parse_bool(o->value, &fo->sqpoll) != 0)
                return bad_value(uri, o, "0 or 1");
        } else if (strcmp(o->key, "block") == 0) {
            if (sio_parse_u64(o->value, &v) != 0 || (v != 512 && v != 4096))
                return bad_value(uri, o, "512 or 4096");
            fo->block = (uint32_t)v;
        } else if (strcmp(o->key, "ro") == 0) {
            if (sio_parse_bool(o->value, &fo->ro) != 0)
                return bad_value(uri, o, "0 or 1");
        } else if (strcmp(o->key, "lock") == 0) {
            if (sio_parse_bool(o->value, &fo->lock) != 0)
                return bad_value(uri, o, "0 or 1");
        } else {
            return sio_fail(-EINVAL, "unknown option '%s' in '%s'", o->key, uri->text);
        }
        o->used = true;
    }
    if (fo->ro && fo->create)
        return sio_fail(-EINVAL, "ro=1 and create=1 contradict each other in '%s'", uri->text);
    if (fo->direct && fo->has_cached_writes && fo->cached_writes)
        return sio_fail(-EINVAL, "cached_writes=1 needs the page cache (direct=0) in '%s'", uri->text);
    /* Buffered files copy writes into the page cache on the caller's thread unless cached_writes=0. */
    if (!fo->has_cached_writes)
        fo->cached_writes = !fo->direct;
    if (fo->has_size && fo->size % fo->block != 0)
        return sio_fail(-EINVAL, "size=%" PRIu64 " is not a multiple of the block size %u in '%s'", fo->size,
                        fo->block, uri->text);
    return 0;
}

/* file:/abs, file:rel and file:///abs all name a local path. */
static int32_t local_path(const struct sio_uri *uri, const char **out)
{
    const char *p = uri->path;
    if (p[0] == '/' && p[1] == '/') {
        if (p[2] != '/')
            return sio_fail(-EINVAL, "file URI '%s' names a host; use file:/path", uri->text);
        p += 2;
    }
    if (*p == '\0')
        return sio_fail(-EINVAL, "file URI '%s' has an empty path", uri->text);
    *out = p;
    return 0;
}

static int32_t open_fd(const char *path, const struct file_options *fo, int *out_fd, bool *created)
{
    int flags = O_CLOEXEC | (fo->ro ? O_RDONLY : O_RDWR) | (fo->direct ? O_DIRECT : 0);
    *created = false;
    int fd = open(path, flags);
    if (fd < 0 && errno == ENOENT && fo->create) {
        if (!fo->has_size)
            return sio_fail(-EINVAL, "cannot create '%s' without size=", path);
        fd = open(path, flags | O_CREAT | O_EXCL, 0600);
        if (fd >= 0)
            *created = true;
        else if (errno == EEXIST)
            fd = open(path, flags);
    }
    if (fd >= 0) {
        *out_fd = fd;
        return 0;
    }
    int err = errno;
    if (err == ENOENT)
        return sio_fail(-ENOENT, "no such file '%s' (create=1&size=N creates it)", path);
    if (err == EINVAL && fo->direct)
        return sio_fail(-EINVAL, "cannot open '%s' with O_DIRECT: %s (direct=0 opens it buffered)", path,
                        strerror(err));
    return sio_fail(-err, "cannot open '%s': %s", path, strerror(err));
}

/* Sysfs says "write back" when the disk has a volatile cache; assume it does when unsure. */
static bool blockdev_volatile_cache(dev_t rdev)
{
    char path[96], text[32] = "";
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/queue/write_cache", major(rdev), minor(rdev));
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return true;
    bool ok = fgets(text, sizeof text, f) != NULL;
    fclose(f);
    return !ok || strncmp(text, "write through", 13) != 0;
}

static int32_t probe_blockdev(int fd, const char *path, const struct stat *st, const struct file_options *fo,
                              struct uring_device *d, uint64_t *bytes)
{
    int sector = 0;
    unsigned int io_opt = 0;
    if (ioctl(fd, BLKGETSIZE64, bytes) != 0 || ioctl(fd, BLKSSZGET, &sector) != 0)
        return sio_fail(-errno, "cannot read the geometry of block device '%s': %s", path, strerror(errno));
    if (fo->block < (uint32_t)sector)
        return sio_fail(-EINVAL, "block=%u is smaller than the logical block size %d of '%s'", fo->block, sector,
                        path);
    if (ioctl(fd, BLKIOOPT, &io_opt) == 0 && io_opt >= fo->block && io_opt % fo->block == 0)
        d->head.geo.optimal_io_size = io_opt;
    if (!blockdev_volatile_cache(st->st_rdev))
        d->head.geo.flags &= ~(uint32_t)SIO_DEV_F_VOLATILE_CACHE;
    /* A partition need not end on a 4 KiB boundary: the tail is simply not addressable. */
    *bytes -= *bytes % fo->block;
    d->blockdev = true;
    return 0;
}

static int32_t check_file_size(const char *path, uint64_t bytes, const struct file_options *fo)
{
    if (bytes < fo->block)
        return sio_fail(-EINVAL, "'%s' is %" PRIu64 " bytes, smaller than one block (%u)", path, bytes, fo->block);
    if (bytes % fo->block != 0)
        return sio_fail(-EINVAL, "'%s' is %" PRIu64 " bytes, not a multiple of the block size %u", path, bytes,
                        fo->block);
    return 0;
}

/* O_DIRECT on a file needs the filesystem's alignment; refuse a block size under it up front. */
static int32_t check_dio_alignment(int fd, const char *path, const struct file_options *fo)
{
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (fo->direct && statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
        stx.stx_dio_offset_align > fo->block)
        return sio_fail(-EINVAL, "block=%u is smaller than the direct I/O alignment %u of '%s'", fo->block,
                        stx.stx_dio_offset_align, path);
#else
    (void)fd;
    (void)path;
    (void)fo;
#endif
    return 0;
}

static int32_t setup(struct uring_device *d, int fd, const char *path, const struct file_options *fo, bool created)
{
    sio_geometry *g = &d->head.geo;
    g->logical_block_size = fo->block;
    g->optimal_io_size = DEFAULT_OPTIMAL_IO;
    g->buffer_alignment = fo->direct ? fo->block : BUFFERED_ALIGNMENT;
    g->queue_depth = fo->qd;
    g->max_transfer = SIO_MAX_TRANSFER;
    g->flags = SIO_DEV_F_TRIM | SIO_DEV_F_VOLATILE_CACHE | (fo->direct ? SIO_DEV_F_DIRECT : 0) |
               (fo->sqpoll ? SIO_DEV_F_SQPOLL : 0) | (fo->ro ? SIO_DEV_F_READ_ONLY : 0) |
               (fo->direct ? 0 : SIO_DEV_F_CACHED_READ) | (fo->cached_writes && !fo->ro ? SIO_DEV_F_CACHED_WRITE : 0);
    g->backend = SIO_BACKEND_URING;

    struct stat st;
    if (fstat(fd, &st) != 0)
        return sio_fail(-errno, "cannot stat '%s': %s", path, strerror(errno));
    uint64_t bytes;
    int32_t rc = 0;
    if (S_ISBLK(st.st_mode)) {
        rc = probe_blockdev(fd, path, &st, fo, d, &bytes);
        if (rc == 0 && bytes < fo->block)
            rc = sio_fail(-EINVAL, "'%s' is smaller than one block (%u)", path, fo->block);
    } else if (S_ISREG(st.st_mode)) {
        if (created && ftruncate(fd, (off_t)fo->size) != 0)
            return sio_fail(-errno, "cannot size '%s' to %" PRIu64 " bytes: %s", path, fo->size, strerror(errno));
        bytes = created ? fo->size : (uint64_t)st.st_size;
    } else {
        return sio_fail(-EINVAL, "'%s' is neither a regular file nor a block device", path);
    }
    if (rc != 0)
        return rc;
    if (fo->has_size && bytes < fo->size)
        return sio_fail(-ENOSPC, "'%s' is %" PRIu64 " bytes, smaller than the requested %" PRIu64, path, bytes,
                        fo->size);
    if (S_ISREG(st.st_mode)) {
        rc = check_file_size(path, bytes, fo);
        if (rc == 0)
            rc = check_dio_alignment(fd, path, fo);
        if (rc != 0)
            return rc;
    }
    g->block_count = bytes / fo->block;
    return 0;
}

/*
 * Two engines writing one target destroy it: take an exclusive advisory lock
 * (shared for ro=1) so a second opener fails at once instead.  lock=0 skips
 * it, for tools that inspect a device they know is idle.
 */
static int32_t lock_fd(int fd, const char *path, const struct file_options *fo)
{
    if (!fo->lock)
        return 0;
    if (flock(fd, (fo->ro ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0)
        return 0;
    if (errno == EWOULDBLOCK)
        return sio_fail(-EBUSY, "'%s' is in use: another opener holds its lock (lock=0 skips the check)", path);
    return sio_fail(-errno, "cannot lock '%s': %s", path, strerror(errno));
}

int32_t uring_open(struct sio_uri *uri, sio_device **out)
{
    struct file_options fo;
    const char *path = NULL;
    int32_t rc = parse_options(uri, &fo);
    if (rc == 0)
        rc = local_path(uri, &path);
    if (rc != 0)
        return rc;
    struct uring_device *d = calloc(1, sizeof *d);
    if (d == NULL)
        return sio_fail(-ENOMEM, "out of memory opening '%s'", uri->text);
    bool created = false;
    rc = open_fd(path, &fo, &d->fd, &created);
    if (rc != 0) {
        free(d);
        return rc;
    }
    rc = lock_fd(d->fd, path, &fo);
    if (rc == 0)
        rc = setup(d, d->fd, path, &fo, created);
    if (rc != 0) {
        close(d->fd);
        if (created)
            unlink(path);
        free(d);
        return rc;
    }
    d->sqpoll = fo.sqpoll;
    *out = &d->head;
    return 0;
}

void uring_close(sio_device *dev)
{
    struct uring_device *d = (struct uring_device *)dev;
    /* A destroyed ring drops its registered-file reference asynchronously, so the
     * open file description (and a lock on it) can outlive close(): unlock first. */
    flock(d->fd, LOCK_UN);
    close(d->fd);
    free(d);
}

/*
 * I/O through the page cache on the caller's thread (sio_device_read_cached,
 * sio_device_write_cached). A read is preadv2 with RWF_NOWAIT: io_uring makes
 * the same nonblocking attempt first but completes it through the ring, which
 * the polling thread reaps; here a cached read costs one syscall and no thread.
 * A write is a buffered pwritev2: ext4 cannot take a buffered write without
 * possibly blocking (RWF_NOWAIT is EOPNOTSUPP there), so io_uring hands every
 * such write to one of its worker threads, a wake-up and two context switches
 * per write, which halved 4 KiB write rates through NBD (docs/device.md).
 * Short transfers go on from where they stopped (the shim never reports a
 * part); anything else (not cached, EIO, EOF) is for the ring. A vector is
 * one syscall however many segments it has.
 */
static int32_t uring_rw_cached(sio_device *dev, struct iovec *iov, uint32_t iovcnt, uint64_t length, uint64_t offset,
                               bool write)
{
    struct uring_device *d = (struct uring_device *)dev;
    uint64_t done = 0;
    while (done < length) {
        ssize_t n = write ? pwritev2(d->fd, iov, (int)iovcnt, (off_t)(offset + done), 0)
                          : preadv2(d->fd, iov, (int)iovcnt, (off_t)(offset + done), RWF_NOWAIT);
        if (n > 0) {
            done += (uint64_t)n;
            /* Skip the segments that went and the part of the next one that did. */
            size_t skip = (size_t)n;
            while (iovcnt > 0 && skip >= iov->iov_len) {
                skip -= iov->iov_len;
                iov++;
                iovcnt--;
            }
            if (iovcnt > 0) {
                iov->iov_base = (char *)iov->iov_base + skip;
                iov->iov_len -= skip;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return -EAGAIN;
    }
    return 0;
}

const struct sio_backend_ops sio_uring_backend = {
    .name = "io_uring",
    .open = uring_open,
    .close = uring_close,
    .dma_alloc = sio_dma_heap_alloc,
    .dma_free = sio_dma_heap_free,
    .qpair_create = uring_qpair_create,
    .qpair_destroy = uring_qpair_destroy,
    .register_region = uring_register_region,
    .submit = uring_submit,
    .poll = uring_poll,
    .wait = uring_wait,
    .rw_cached = uring_rw_cached,
};
