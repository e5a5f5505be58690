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

/*
 * The cached calls: the READ/WRITE rules (block aligned, inside the device, at
 * most max_transfer), then the backend's page-cache path where the device
 * offers it (flag) and no faults are configured (those are decided per command
 * on the queue pair path).
 */
static int32_t rw_cached(sio_device *dev, void *buf, uint32_t length, uint64_t offset, bool write)
{
    const char *fn = write ? "sio_device_write_cached" : "sio_device_read_cached";
    if (dev == NULL || buf == NULL)
        return sio_fail(-EINVAL, "%s: %s is NULL", fn, dev == NULL ? "dev" : "buf");
    uint32_t block = dev->geo.logical_block_size;
    uint64_t capacity = dev->geo.block_count * (uint64_t)block;
    if (length == 0 || length % block != 0 || offset % block != 0 || length > dev->geo.max_transfer ||
        offset > capacity || length > capacity - offset)
        return sio_fail(-EINVAL, "%s: %u bytes at offset %" PRIu64 " are not block aligned or not inside the device", fn,
                        length, offset);
    uint32_t flag = write ? SIO_DEV_F_CACHED_WRITE : SIO_DEV_F_CACHED_READ;
    if (dev->ops->rw_cached == NULL || (dev->geo.flags & flag) == 0)
        return -ENOTSUP;
    if (sio_faults_enabled(&dev->faults))
        return -EAGAIN;
    return dev->ops->rw_cached(dev, buf, length, offset, write);
}

int32_t sio_device_read_cached(sio_device *dev, void *buf, uint32_t length, uint64_t offset)
{
    return rw_cached(dev, buf, length, offset, false);
}

int32_t sio_device_write_cached(sio_device *dev, const void *buf, uint32_t length, uint64_t offset)
{
    /* The backend only reads from buf on this path. */
    return rw_cached(dev, (void *)buf, length, offset, true);
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
