/*
 * env.c - sio_env_configure: options of the process-wide SPDK environment.
 *
 * Compiled into every build.  Without SPDK the call still validates its
 * options (a typo in the engine's spdk: section is reported the same way
 * everywhere) and then answers -ENOTSUP, so the engine can tell "this
 * library has no SPDK" from a bad option before it opens any nvme-* target.
 */
#include "env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "strata_io.h"
#include "uri.h"

enum { ENV_MAX_OPTS = 16 };
/* DPDK's own ceiling is far above this; a larger value is a typo, not a plan. */
static const uint64_t MAX_MEM_SIZE_MB = 1u << 20;

void sio_env_options_defaults(struct sio_env_options *o)
{
    memset(o, 0, sizeof *o);
    o->hugepages = true;
    o->shm_id = -1;
    o->pci = true;
    snprintf(o->core_mask, sizeof o->core_mask, "0x1");
}

static int32_t bad(const struct sio_uri_opt *opt, const char *text, const char *expect)
{
    return sio_fail(-EINVAL, "bad value '%s' for SPDK environment option '%s' in '%s': expected %s", opt->value,
                    opt->key, text, expect);
}

static bool hex_mask(const char *s)
{
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    if (*s == '\0')
        return false;
    bool nonzero = false;
    for (; *s != '\0'; s++) {
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
            return false;
        nonzero |= *s != '0';
    }
    return nonzero;
}

static int32_t apply(struct sio_env_options *o, const struct sio_uri_opt *opt, const char *text)
{
    uint64_t v;
    if (strcmp(opt->key, "hugepages") == 0) {
        if (sio_parse_bool(opt->value, &o->hugepages) != 0)
            return bad(opt, text, "0 or 1");
    } else if (strcmp(opt->key, "mem_size_mb") == 0) {
        if (sio_parse_u64(opt->value, &v) != 0 || v > MAX_MEM_SIZE_MB)
            return bad(opt, text, "megabytes, 0 for SPDK's default");
        o->mem_size_mb = (uint32_t)v;
    } else if (strcmp(opt->key, "iova_mode") == 0) {
        if (strcmp(opt->value, "va") != 0 && strcmp(opt->value, "pa") != 0)
            return bad(opt, text, "va or pa");
        snprintf(o->iova_mode, sizeof o->iova_mode, "%s", opt->value);
    } else if (strcmp(opt->key, "core_mask") == 0) {
        if (strlen(opt->value) >= sizeof o->core_mask || !hex_mask(opt->value))
            return bad(opt, text, "a nonzero hexadecimal CPU mask such as 0x1");
        snprintf(o->core_mask, sizeof o->core_mask, "%s", opt->value);
    } else if (strcmp(opt->key, "shm_id") == 0) {
        if (strcmp(opt->value, "-1") == 0) {
            o->shm_id = -1;
        } else {
            if (sio_parse_u64(opt->value, &v) != 0 || v > INT32_MAX)
                return bad(opt, text, "-1 or a shared-memory group id");
            o->shm_id = (int32_t)v;
        }
    } else if (strcmp(opt->key, "pci") == 0) {
        if (sio_parse_bool(opt->value, &o->pci) != 0)
            return bad(opt, text, "0 or 1");
    } else {
        return sio_fail(-EINVAL,
                        "unknown SPDK environment option '%s' in '%s' (hugepages, mem_size_mb, iova_mode, core_mask, "
                        "shm_id, pci)",
                        opt->key, text);
    }
    return 0;
}

int32_t sio_env_options_parse(const char *text, struct sio_env_options *o)
{
    sio_env_options_defaults(o);
    if (*text == '\0')
        return 0;
    char *copy = strdup(text);
    if (copy == NULL)
        return sio_fail(-ENOMEM, "out of memory parsing SPDK environment options '%s'", text);
    struct sio_uri_opt opts[ENV_MAX_OPTS];
    uint32_t n = 0;
    int32_t rc = sio_options_split(copy, opts, ENV_MAX_OPTS, &n, text);
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        rc = apply(o, &opts[i], text);
    if (rc == 0 && !o->hugepages && strcmp(o->iova_mode, "pa") == 0)
        rc = sio_fail(-EINVAL, "iova_mode=pa needs hugepages (physical addresses of ordinary pages are not stable) in '%s'",
                      text);
    free(copy);
    return rc;
}

void sio_env_options_format(const struct sio_env_options *o, char *buf, uint32_t len)
{
    snprintf(buf, len, "hugepages=%d&mem_size_mb=%u&iova_mode=%s&core_mask=%s&shm_id=%d&pci=%d", o->hugepages ? 1 : 0,
             o->mem_size_mb, o->iova_mode[0] != '\0' ? o->iova_mode : "auto", o->core_mask, o->shm_id, o->pci ? 1 : 0);
}

int32_t sio_env_configure(const char *options)
{
    if (options == NULL) {
#ifdef STRATA_HAVE_SPDK
        return 0;
#else
        return sio_fail(-ENOTSUP, "this libstrata_io was built without SPDK");
#endif
    }
    struct sio_env_options o;
    int32_t rc = sio_env_options_parse(options, &o);
    if (rc != 0)
        return rc;
#ifdef STRATA_HAVE_SPDK
    return sio_spdk_env_configure(&o);
#else
    return sio_fail(-ENOTSUP, "this libstrata_io was built without SPDK: the SPDK environment options have no effect");
#endif
}
