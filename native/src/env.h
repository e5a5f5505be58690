/*
 * env.h - the process-wide SPDK environment options (sio_env_configure).
 *
 * Parsing lives outside the SPDK backend so every build rejects the same
 * malformed options the same way; only a build with SPDK can start the
 * environment (spdk_env.c).
 */
#ifndef SIO_ENV_H
#define SIO_ENV_H

#include <stdbool.h>
#include <stdint.h>

enum { SIO_ENV_CORE_MASK_MAX = 64 };

struct sio_env_options {
    bool hugepages;
    /* 0: SPDK's default. */
    uint32_t mem_size_mb;
    /* "", "va" or "pa"; "" lets DPDK choose. */
    char iova_mode[3];
    char core_mask[SIO_ENV_CORE_MASK_MAX];
    int32_t shm_id;
    bool pci;
};

void sio_env_options_defaults(struct sio_env_options *o);

/* Parses "key=value&..." over the defaults; -EINVAL with a detail naming the option. */
int32_t sio_env_options_parse(const char *text, struct sio_env_options *o);

/* The canonical "key=value&..." form of o, for details and comparisons. */
void sio_env_options_format(const struct sio_env_options *o, char *buf, uint32_t len);

#ifdef STRATA_HAVE_SPDK
/* Replaces the pending options, or checks them against the running environment (-EBUSY). */
int32_t sio_spdk_env_configure(const struct sio_env_options *o);
/* Starts the environment once per process (idempotent); records a detail on failure. */
int32_t sio_spdk_env_start(void);
#endif

#endif /* SIO_ENV_H */
