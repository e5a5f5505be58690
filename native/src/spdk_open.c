/*
 * spdk_open.c - opening NVMe namespaces through SPDK: nvme-tcp:// and
 * nvme-pcie:// URIs, controller attach and detach, geometry, DMA memory.
 *
 * spdk_nvme_connect hands back the same controller (reference counted) to a
 * second opener of the same address and host NQN, so two devices on one
 * subsystem share its admin queue and each detach drops one reference.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spdk/env.h>
#include <spdk/nvme.h>

#include "env.h"
#include "error.h"
#include "spdk.h"

enum {
    DEFAULT_QUEUE_DEPTH = 128,
    DEFAULT_OPTIMAL_IO = 128 * 1024,
    DEFAULT_TCP_PORT = 4420,
    /* Write zeroes carries a 16-bit, zero-based block count. */
    MAX_ZEROES_BLOCKS = 65536,
    DMA_MIN_ALIGN = 64,
};

enum trim_mode { TRIM_AUTO, TRIM_DEALLOCATE, TRIM_ZEROES };

struct nvme_options {
    uint32_t nsid;
    uint32_t qd;
    bool ro;
    uint8_t trim;
    bool write_zeroes;
};

static int32_t bad_value(const struct sio_uri *uri, const struct sio_uri_opt *o, const char *expect)
{
    return sio_fail(-EINVAL, "bad value '%s' for option '%s' in '%s': expected %s", o->value, o->key, uri->text,
                    expect);
}

static int32_t parse_options(struct sio_uri *uri, struct nvme_options *no)
{
    *no = (struct nvme_options){.nsid = 1, .qd = DEFAULT_QUEUE_DEPTH, .trim = TRIM_AUTO, .write_zeroes = true};
    for (uint32_t i = 0; i < uri->nopts; i++) {
        struct sio_uri_opt *o = &uri->opts[i];
        if (o->used)
            continue;
        uint64_t v;
        if (strcmp(o->key, "ns") == 0) {
            if (sio_parse_u64(o->value, &v) != 0 || v == 0 || v >= 0xffffffffu)
                return bad_value(uri, o, "a namespace id from 1");
            no->nsid = (uint32_t)v;
        } else if (strcmp(o->key, "qd") == 0) {
            if (sio_parse_u64(o->value, &v) != 0 || v == 0 || v > SIO_MAX_QUEUE_DEPTH)
                return bad_value(uri, o, "a queue depth in 1..4096");
            no->qd = (uint32_t)v;
        } else if (strcmp(o->key, "ro") == 0) {
            if (sio_parse_bool(o->value, &no->ro) != 0)
                return bad_value(uri, o, "0 or 1");
        } else if (strcmp(o->key, "trim") == 0) {
            if (strcmp(o->value, "auto") == 0)
                no->trim = TRIM_AUTO;
            else if (strcmp(o->value, "deallocate") == 0)
                no->trim = TRIM_DEALLOCATE;
            else if (strcmp(o->value, "zeroes") == 0)
                no->trim = TRIM_ZEROES;
            else
                return bad_value(uri, o, "auto, deallocate or zeroes");
        } else if (strcmp(o->key, "write_zeroes") == 0) {
            if (sio_parse_bool(o->value, &no->write_zeroes) != 0)
                return bad_value(uri, o, "0 or 1");
        } else {
            return sio_fail(-EINVAL, "unknown option '%s' in '%s' (nvme options: ns, qd, ro, trim, write_zeroes)",
                            o->key, uri->text);
        }
        o->used = true;
    }
    return 0;
}

static bool has_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')
            return true;
    return false;
}

/* "//HOST:PORT/SUBNQN" or "//[V6]:PORT/SUBNQN" into SPDK's "key:value ..." transport id text. */
static int32_t tcp_trid(const struct sio_uri *uri, char *out, size_t len, char *where, size_t where_len)
{
    const char *p = uri->path;
    if (strncmp(p, "//", 2) != 0)
        return sio_fail(-EINVAL, "malformed '%s': expected nvme-tcp://HOST:PORT/SUBNQN", uri->text);
    p += 2;
    const char *slash = strchr(p, '/');
    if (slash == NULL || slash[1] == '\0')
        return sio_fail(-EINVAL, "'%s' names no subsystem: expected nvme-tcp://HOST:PORT/SUBNQN", uri->text);
    const char *nqn = slash + 1;
    const char *host = p, *host_end, *port = NULL;
    const char *adrfam = "IPv4";
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(slash - host));
        if (host_end == NULL)
            return sio_fail(-EINVAL, "malformed IPv6 address in '%s': expected [ADDRESS]:PORT", uri->text);
        if (host_end[1] == ':')
            port = host_end + 2;
        else if (host_end + 1 != slash)
            return sio_fail(-EINVAL, "malformed address in '%s'", uri->text);
        adrfam = "IPv6";
    } else {
        const char *colon = memchr(p, ':', (size_t)(slash - p));
        host_end = colon != NULL ? colon : slash;
        if (colon != NULL)
            port = colon + 1;
    }
    size_t host_len = (size_t)(host_end - host);
    size_t port_len = port != NULL ? (size_t)(slash - port) : 0;
    size_t nqn_len = strlen(nqn);
    if (host_len == 0 || host_len > SPDK_NVMF_TRADDR_MAX_LEN || has_space(host, host_len))
        return sio_fail(-EINVAL, "bad host in '%s'", uri->text);
    char port_text[8];
    if (port == NULL) {
        snprintf(port_text, sizeof port_text, "%d", DEFAULT_TCP_PORT);
    } else {
        uint64_t v;
        char digits[8] = "";
        if (port_len == 0 || port_len >= sizeof digits)
            return sio_fail(-EINVAL, "bad port in '%s': expected 1..65535", uri->text);
        memcpy(digits, port, port_len);
        if (sio_parse_u64(digits, &v) != 0 || v == 0 || v > 65535)
            return sio_fail(-EINVAL, "bad port '%s' in '%s': expected 1..65535", digits, uri->text);
        snprintf(port_text, sizeof port_text, "%u", (unsigned)v);
    }
    if (nqn_len > SPDK_NVMF_NQN_MAX_LEN || has_space(nqn, nqn_len))
        return sio_fail(-EINVAL, "bad subsystem NQN in '%s' (at most %d characters, no spaces)", uri->text,
                        SPDK_NVMF_NQN_MAX_LEN);
    snprintf(out, len, "trtype:TCP adrfam:%s traddr:%.*s trsvcid:%s subnqn:%s", adrfam, (int)host_len, host,
             port_text, nqn);
    snprintf(where, where_len, "nvme-tcp %.*s:%s %s", (int)host_len, host, port_text, nqn);
    return 0;
}

static int32_t pcie_trid(const struct sio_uri *uri, char *out, size_t len, char *where, size_t where_len)
{
    const char *p = uri->path;
    if (strncmp(p, "//", 2) != 0)
        return sio_fail(-EINVAL, "malformed '%s': expected nvme-pcie://DDDD:BB:DD.F", uri->text);
    p += 2;
    struct spdk_pci_addr addr;
    if (*p == '\0' || has_space(p, strlen(p)) || spdk_pci_addr_parse(&addr, p) != 0)
        return sio_fail(-EINVAL, "bad PCI address '%s' in '%s': expected DDDD:BB:DD.F", p, uri->text);
    char bdf[32];
    spdk_pci_addr_fmt(bdf, sizeof bdf, &addr);
    snprintf(out, len, "trtype:PCIe traddr:%s", bdf);
    snprintf(where, where_len, "nvme-pcie %s", bdf);
    return 0;
}

static int32_t connect_ctrlr(struct spdk_device *d, const char *trid_text, bool pcie)
{
    struct spdk_nvme_transport_id trid;
    memset(&trid, 0, sizeof trid);
    if (spdk_nvme_transport_id_parse(&trid, trid_text) != 0)
        return sio_fail(-EINVAL, "SPDK refused the transport id '%s'", trid_text);
    struct spdk_nvme_ctrlr_opts opts;
    spdk_nvme_ctrlr_get_default_ctrlr_opts(&opts, sizeof opts);
    d->ctrlr = spdk_nvme_connect(&trid, &opts, sizeof opts);
    if (d->ctrlr != NULL)
        return 0;
    if (pcie)
        return sio_fail(-ENXIO,
                        "cannot attach %s: no NVMe controller there bound to vfio-pci or uio (run as root after "
                        "SPDK's scripts/setup.sh; the environment needs pci=1)",
                        d->where);
    return sio_fail(-ENXIO,
                    "cannot connect to %s: no NVMe-oF target listening there, no such subsystem, or this host is "
                    "not allowed (SPDK's log is on stderr)",
                    d->where);
}

static int32_t probe_namespace(struct spdk_device *d, const struct nvme_options *no)
{
    if (!spdk_nvme_ctrlr_is_active_ns(d->ctrlr, no->nsid))
        return sio_fail(-ENXIO, "%s has no active namespace %u", d->where, no->nsid);
    d->ns = spdk_nvme_ctrlr_get_ns(d->ctrlr, no->nsid);
    d->nsid = no->nsid;
    struct spdk_nvme_ns *ns = d->ns;
    uint32_t sector = spdk_nvme_ns_get_sector_size(ns);
    if (sector < 512 || (sector & (sector - 1)) != 0)
        return sio_fail(-ENOTSUP, "namespace %u of %s has %u-byte blocks (expected a power of two from 512)", d->nsid,
                        d->where, sector);
    if (spdk_nvme_ns_get_extended_sector_size(ns) != sector || spdk_nvme_ns_get_pi_type(ns) != SPDK_NVME_FMT_NVM_PROTECTION_DISABLE)
        return sio_fail(-ENOTSUP,
                        "namespace %u of %s is formatted with interleaved metadata or protection information, which "
                        "Strata does not use: reformat it without",
                        d->nsid, d->where);
    d->sector = sector;
    uint32_t flags = spdk_nvme_ns_get_flags(ns);
    /* write_zeroes=0 writes a zeroed buffer instead, for devices whose command is slow or broken
     * (Linux keeps a quirk for those). */
    d->write_zeroes = no->write_zeroes && (flags & SPDK_NVME_NS_WRITE_ZEROES_SUPPORTED) != 0;
    /* TRIM must read back zeroes: deallocate only where the namespace says deallocated blocks
     * read 0x00 (or the operator vouches for it with trim=deallocate), else write zeroes. */
    bool can_dealloc = (flags & SPDK_NVME_NS_DEALLOCATE_SUPPORTED) != 0;
    if (no->trim == TRIM_DEALLOCATE && !can_dealloc)
        return sio_fail(-ENOTSUP, "trim=deallocate: namespace %u of %s has no dataset management (deallocate)",
                        no->nsid, d->where);
    d->dealloc_zeroes = can_dealloc && (no->trim == TRIM_DEALLOCATE ||
                                        (no->trim == TRIM_AUTO && spdk_nvme_ns_get_dealloc_logical_block_read_value(ns) ==
                                                                      SPDK_NVME_DEALLOC_READ_00));
    d->volatile_cache = spdk_nvme_ctrlr_get_data(d->ctrlr)->vwc.present != 0;
    d->max_zeroes_blocks = MAX_ZEROES_BLOCKS;

    /* Like the kernel's block layer, take commands larger than the controller's limit and let
     * the driver split them, up to SIO_SPDK_MAX_SPLIT pieces (requests are sized for that). */
    uint32_t ns_xfer = spdk_nvme_ns_get_max_io_xfer_size(ns);
    uint64_t max_xfer = (uint64_t)ns_xfer * SIO_SPDK_MAX_SPLIT;
    if (max_xfer > SIO_MAX_TRANSFER)
        max_xfer = SIO_MAX_TRANSFER;
    max_xfer -= max_xfer % sector;
    if (max_xfer == 0)
        max_xfer = sector;
    uint64_t optimal = (uint64_t)spdk_nvme_ns_get_optimal_io_boundary(ns) * sector;
    if (optimal == 0 || optimal > max_xfer)
        optimal = ns_xfer < DEFAULT_OPTIMAL_IO ? ns_xfer : DEFAULT_OPTIMAL_IO;
    if (optimal < sector)
        optimal = sector;

    sio_geometry *g = &d->head.geo;
    g->logical_block_size = sector;
    g->optimal_io_size = (uint32_t)optimal;
    g->block_count = spdk_nvme_ns_get_num_sectors(ns);
    g->buffer_alignment = sector;
    g->queue_depth = no->qd;
    g->max_transfer = (uint32_t)max_xfer;
    /* TRIM always reads back zeroes: deallocate where that is guaranteed, else write zeroes. */
    g->flags = SIO_DEV_F_DIRECT | SIO_DEV_F_TRIM | SIO_DEV_F_COMPLETION_DETAIL |
               (d->volatile_cache ? SIO_DEV_F_VOLATILE_CACHE : 0) | (no->ro ? SIO_DEV_F_READ_ONLY : 0);
    g->backend = SIO_BACKEND_SPDK;
    if (g->block_count == 0)
        return sio_fail(-ENXIO, "namespace %u of %s has no blocks", d->nsid, d->where);
    if (!d->write_zeroes && !no->ro) {
        d->zero_buf = spdk_zmalloc(max_xfer, sector, NULL, SPDK_ENV_NUMA_ID_ANY, SPDK_MALLOC_DMA);
        if (d->zero_buf == NULL)
            return sio_fail(-ENOMEM, "cannot allocate %" PRIu64 " bytes of DMA memory for %s", max_xfer, d->where);
    }
    return 0;
}

int32_t spdk_backend_open(struct sio_uri *uri, sio_device **out)
{
    bool pcie = strcmp(uri->scheme, "nvme-pcie") == 0;
    struct nvme_options no;
    char trid[SPDK_NVMF_TRADDR_MAX_LEN + SPDK_NVMF_NQN_MAX_LEN + 96];
    struct spdk_device *d = calloc(1, sizeof *d);
    if (d == NULL)
        return sio_fail(-ENOMEM, "out of memory opening '%s'", uri->text);
    int32_t rc = parse_options(uri, &no);
    if (rc == 0)
        rc = pcie ? pcie_trid(uri, trid, sizeof trid, d->where, sizeof d->where)
                  : tcp_trid(uri, trid, sizeof trid, d->where, sizeof d->where);
    if (rc == 0)
        rc = sio_spdk_env_start();
    if (rc == 0)
        rc = connect_ctrlr(d, trid, pcie);
    if (rc == 0)
        rc = probe_namespace(d, &no);
    if (rc == 0)
        rc = sio_spdk_admin_add(d->ctrlr, &d->admin);
    if (rc != 0) {
        spdk_free(d->zero_buf);
        if (d->ctrlr != NULL)
            spdk_nvme_detach(d->ctrlr);
        free(d);
        return rc;
    }
    *out = &d->head;
    return 0;
}

void spdk_backend_close(sio_device *dev)
{
    struct spdk_device *d = (struct spdk_device *)dev;
    sio_spdk_admin_remove(d->admin);
    spdk_free(d->zero_buf);
    spdk_nvme_detach(d->ctrlr);
    free(d);
}

static int32_t dev_dma_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out)
{
    size_t a = align != 0 ? align : dev->geo.buffer_alignment;
    if (a < DMA_MIN_ALIGN)
        a = DMA_MIN_ALIGN;
    void *p = spdk_zmalloc((size_t)size, a, NULL, SPDK_ENV_NUMA_ID_ANY, SPDK_MALLOC_DMA);
    if (p == NULL)
        return sio_fail(-ENOMEM,
                        "cannot allocate %llu bytes of SPDK DMA memory aligned to %zu: the environment's memory is "
                        "exhausted (raise mem_size_mb, or hugepages)",
                        (unsigned long long)size, a);
    *out = p;
    return 0;
}

static void dev_dma_free(sio_device *dev, void *buf)
{
    (void)dev;
    spdk_free(buf);
}

const struct sio_backend_ops sio_spdk_backend = {
    .name = "spdk",
    .open = spdk_backend_open,
    .close = spdk_backend_close,
    .dma_alloc = dev_dma_alloc,
    .dma_free = dev_dma_free,
    .qpair_create = spdk_backend_qpair_create,
    .qpair_destroy = spdk_backend_qpair_destroy,
    .register_region = NULL,
    .submit = spdk_backend_submit,
    .poll = spdk_backend_poll,
    .wait = spdk_backend_wait,
};
