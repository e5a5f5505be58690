/*
 * device.c - the device half of the ABI: open by URI, close, geometry and
 * the fault-injection controls.
 *
 * Open picks the backend from the URI scheme, takes the fault options out
 * of the option list (they mean the same on every backend) and lets the
 * backend interpret the rest.  Schemes of backends not compiled in fail
 * with -ENOTSUP so callers can tell "not available here" from a typo.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"

struct backend_entry {
    const char *scheme;
    const struct sio_backend_ops *ops;
};

static const struct backend_entry backends[] = {
    {"file", &sio_uring_backend},
#ifdef STRATA_HAVE_SPDK
    {"nvme-pcie", &sio_spdk_backend},
    {"nvme-tcp", &sio_spdk_backend},
#endif
};

#ifdef STRATA_HAVE_SPDK
#define EXPECTED_SCHEMES "file:PATH, nvme-tcp://HOST:PORT/SUBNQN or nvme-pcie://BDF"
#else
#define EXPECTED_SCHEMES "file:PATH"
#endif

/* Schemes that name a backend this build lacks. */
static const char *const absent_schemes[] = {
#ifndef STRATA_HAVE_SPDK
    "nvme-pcie",
    "nvme-tcp",
#endif
    NULL,
};

int32_t sio_abi_version(void)
{
    return SIO_ABI_VERSION;
}

static int32_t take_fault_options(struct sio_uri *uri, struct sio_fault_config *cfg)
{
    sio_fault_config_defaults(cfg);
    for (uint32_t i = 0; i < uri->nopts; i++) {
        struct sio_uri_opt *o = &uri->opts[i];
        if (!sio_faults_is_key(o->key))
            continue;
        int32_t rc = sio_fault_config_set(cfg, o->key, o->value, uri->text);
        if (rc != 0)
            return rc;
        o->used = true;
    }
    return sio_fault_config_check(cfg, uri->text);
}

int32_t sio_device_open(const char *uri_text, sio_device **out_dev)
{
    if (out_dev == NULL)
        return sio_fail(-EINVAL, "sio_device_open: out_dev is NULL");
    *out_dev = NULL;
    struct sio_uri uri;
    int32_t rc = sio_uri_parse(uri_text, &uri);
    if (rc != 0)
        return rc;

    const struct sio_backend_ops *ops = NULL;
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strcmp(uri.scheme, backends[i].scheme) == 0)
            ops = backends[i].ops;
    if (ops == NULL) {
        rc = sio_fail(-EINVAL, "unknown scheme '%s' in '%s' (expected %s)", uri.scheme, uri_text, EXPECTED_SCHEMES);
        for (size_t i = 0; absent_schemes[i] != NULL; i++)
            if (strcmp(uri.scheme, absent_schemes[i]) == 0)
                rc = sio_fail(-ENOTSUP, "scheme '%s' needs the SPDK backend, which this libstrata_io was built without",
                              uri.scheme);
        goto out;
    }

    struct sio_fault_config cfg;
    rc = take_fault_options(&uri, &cfg);
    if (rc != 0)
        goto out;

    sio_device *dev = NULL;
    rc = ops->open(&uri, &dev);
    if (rc != 0)
        goto out;
    dev->ops = ops;
    atomic_init(&dev->live_qpairs, 0);
    rc = sio_faults_init(&dev->faults);
    if (rc != 0) {
        ops->close(dev);
        goto out;
    }
    sio_faults_apply(&dev->faults, &cfg);
    *out_dev = dev;
out:
    sio_uri_free(&uri);
    return rc;
}

int32_t sio_device_close(sio_device *dev)
{
    if (dev == NULL)
        return sio_fail(-EINVAL, "sio_device_close: dev is NULL");
    unsigned live = atomic_load(&dev->live_qpairs);
    if (live != 0)
        return sio_fail(-EBUSY, "cannot close the device: %u queue pair%s still open", live, live == 1 ? " is" : "s are");
    sio_faults_destroy(&dev->faults);
    dev->ops->close(dev);
    return 0;
}

int32_t sio_device_geometry(sio_device *dev, sio_geometry *out_geometry)
{
    if (dev == NULL || out_geometry == NULL)
        return sio_fail(-EINVAL, "sio_device_geometry: %s is NULL", dev == NULL ? "dev" : "out_geometry");
    *out_geometry = dev->geo;
    out_geometry->flags &= ~(uint32_t)SIO_DEV_F_FAULTS;
    if (sio_faults_enabled(&dev->faults))
        out_geometry->flags |= SIO_DEV_F_FAULTS;
    return 0;
}

/* The ABI's limit is the kernel's: one call never needs to split a vector. */
_Static_assert(SIO_MAX_IOVECS <= IOV_MAX, "SIO_MAX_IOVECS exceeds the kernel's IOV_MAX");
_Static_assert(sizeof(size_t) == sizeof(uint64_t), "sio_iovec.length maps onto iov_len");

/*
 * The cached calls: the READ/WRITE rules for the whole transfer (block
 * aligned, inside the device, at most max_transfer), then the backend's
 * page-cache path where the device offers it (flag) and no faults are
 * configured (those are decided per command on the queue pair path).
 * iov is scratch the backend may advance over short transfers.
 */
static int32_t rw_cached(const char *fn, sio_device *dev, struct iovec *iov, uint32_t iovcnt, uint64_t length,
                         uint64_t offset, bool write)
{
    uint32_t block = dev->geo.logical_block_size;
    uint64_t capacity = dev->geo.block_count * (uint64_t)block;
    if (length == 0 || length % block != 0 || offset % block != 0 || length > dev->geo.max_transfer ||
        offset > capacity || length > capacity - offset)
        return sio_fail(-EINVAL, "%s: %" PRIu64 " bytes at offset %" PRIu64 " are not block aligned or not inside the device",
                        fn, length, offset);
    uint32_t flag = write ? SIO_DEV_F_CACHED_WRITE : SIO_DEV_F_CACHED_READ;
    if (dev->ops->rw_cached == NULL || (dev->geo.flags & flag) == 0)
        return -ENOTSUP;
    if (sio_faults_enabled(&dev->faults))
        return -EAGAIN;
    return dev->ops->rw_cached(dev, iov, iovcnt, length, offset, write);
}

static int32_t rw_cached_one(sio_device *dev, void *buf, uint32_t length, uint64_t offset, bool write)
{
    const char *fn = write ? "sio_device_write_cached" : "sio_device_read_cached";
    if (dev == NULL || buf == NULL)
        return sio_fail(-EINVAL, "%s: %s is NULL", fn, dev == NULL ? "dev" : "buf");
    struct iovec iov = {.iov_base = buf, .iov_len = length};
    return rw_cached(fn, dev, &iov, 1, length, offset, write);
}

/* Checks the segments and copies them into the kernel's iovec (scratch for the backend). */
static int32_t rw_cached_vec(sio_device *dev, const sio_iovec *iov, uint32_t iovcnt, uint64_t offset, bool write)
{
    const char *fn = write ? "sio_device_writev_cached" : "sio_device_readv_cached";
    if (dev == NULL || iov == NULL)
        return sio_fail(-EINVAL, "%s: %s is NULL", fn, dev == NULL ? "dev" : "iov");
    if (iovcnt == 0 || iovcnt > SIO_MAX_IOVECS)
        return sio_fail(-EINVAL, "%s: %u segments (1..%d)", fn, iovcnt, SIO_MAX_IOVECS);
    struct iovec kiov[SIO_MAX_IOVECS];
    uint64_t length = 0;
    for (uint32_t i = 0; i < iovcnt; i++) {
        /* Each segment at most max_transfer: the sum of 1024 of them cannot wrap. */
        if (iov[i].base == NULL || iov[i].length == 0 || iov[i].length > dev->geo.max_transfer)
            return sio_fail(-EINVAL, "%s: segment %u (%" PRIu64 " bytes) is %s", fn, i, iov[i].length,
                            iov[i].base == NULL ? "NULL" : iov[i].length == 0 ? "empty" : "over max_transfer");
        kiov[i].iov_base = iov[i].base;
        kiov[i].iov_len = (size_t)iov[i].length;
        length += iov[i].length;
    }
    return rw_cached(fn, dev, kiov, iovcnt, length, offset, write);
}

int32_t sio_device_read_cached(sio_device *dev, void *buf, uint32_t length, uint64_t offset)
{
    return rw_cached_one(dev, buf, length, offset, false);
}

int32_t sio_device_write_cached(sio_device *dev, const void *buf, uint32_t length, uint64_t offset)
{
    /* The backend only reads from buf on this path. */
    return rw_cached_one(dev, (void *)buf, length, offset, true);
}

int32_t sio_device_readv_cached(sio_device *dev, const sio_iovec *iov, uint32_t iovcnt, uint64_t offset)
{
    return rw_cached_vec(dev, iov, iovcnt, offset, false);
}

int32_t sio_device_writev_cached(sio_device *dev, const sio_iovec *iov, uint32_t iovcnt, uint64_t offset)
{
    return rw_cached_vec(dev, iov, iovcnt, offset, true);
}

int32_t sio_device_set_faults(sio_device *dev, const char *spec)
{
    if (dev == NULL)
        return sio_fail(-EINVAL, "sio_device_set_faults: dev is NULL");
    struct sio_fault_config cfg;
    sio_fault_config_defaults(&cfg);
    if (spec != NULL && *spec != '\0') {
        char *copy = strdup(spec);
        if (copy == NULL)
            return sio_fail(-ENOMEM, "out of memory parsing fault spec '%s'", spec);
        struct sio_uri_opt opts[SIO_URI_MAX_OPTS];
        uint32_t n = 0;
        int32_t rc = sio_options_split(copy, opts, SIO_URI_MAX_OPTS, &n, spec);
        for (uint32_t i = 0; rc == 0 && i < n; i++)
            rc = sio_fault_config_set(&cfg, opts[i].key, opts[i].value, spec);
        if (rc == 0)
            rc = sio_fault_config_check(&cfg, spec);
        free(copy);
        if (rc != 0)
            return rc;
    }
    sio_faults_apply(&dev->faults, &cfg);
    return 0;
}

int32_t sio_device_fault_stats(sio_device *dev, sio_fault_stats *out_stats)
{
    if (dev == NULL || out_stats == NULL)
        return sio_fail(-EINVAL, "sio_device_fault_stats: %s is NULL", dev == NULL ? "dev" : "out_stats");
    sio_faults_stats(&dev->faults, out_stats);
    return 0;
}
