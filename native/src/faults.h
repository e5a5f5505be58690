/*
 * faults.h - the per-device fault injector.
 *
 * Crash-consistency tests of the engine need a device that fails or tears
 * chosen writes deterministically.  Decisions are taken at submit time, per
 * command, from atomic counters shared by every queue pair of the device,
 * so a single-threaded test always sees the same command fail.  Backends
 * only execute the resulting per-command action.
 */
#ifndef SIO_FAULTS_H
#define SIO_FAULTS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "strata_io.h"
#include "uri.h"

enum sio_fault_kind {
    /* Execute the command normally. */
    SIO_FAULT_NONE = 0,
    /* Do not execute; complete with status. */
    SIO_FAULT_FAIL = 1,
    /* Write only tear_bytes, then complete with status (0 or -EIO). */
    SIO_FAULT_TEAR = 2,
};

/* What a backend must do with one submitted command. */
struct sio_fault_action {
    uint8_t kind;
    int32_t status;
    uint32_t tear_bytes;
};

struct sio_fault_config {
    /* Any fault option given: reported as SIO_DEV_F_FAULTS. */
    bool enabled;
    uint64_t fail_io;
    uint64_t fail_every;
    /* Every matching command after the fail_after-th fails (0: every one). */
    uint64_t fail_after;
    bool has_fail_after;
    uint64_t fail_flush;
    bool fail_flush_all;
    uint64_t tear_write;
    uint64_t tear_bytes;
    bool has_tear_bytes;
    bool tear_ok;
    /* Bit (1 << SIO_OP_x) per matching opcode. */
    uint32_t ops_mask;
    bool ops_given;
    /* Half-open byte range [range_start, range_end) a command must overlap. */
    uint64_t range_start;
    uint64_t range_end;
    bool has_range;
};

struct sio_faults {
    atomic_bool enabled;
    /* Guards cfg: submitters read it, sio_device_set_faults replaces it. */
    pthread_rwlock_t lock;
    struct sio_fault_config cfg;
    _Atomic uint64_t ios_seen;
    _Atomic uint64_t writes_seen;
    _Atomic uint64_t flushes_seen;
    _Atomic uint64_t ios_failed;
    _Atomic uint64_t flushes_failed;
    _Atomic uint64_t writes_torn;
};

int32_t sio_faults_init(struct sio_faults *f);
void sio_faults_destroy(struct sio_faults *f);

/* True when key is a fault option (so a URI parser hands it here). */
bool sio_faults_is_key(const char *key);

void sio_fault_config_defaults(struct sio_fault_config *cfg);
/* Applies one option; context is quoted in the detail on failure. */
int32_t sio_fault_config_set(struct sio_fault_config *cfg, const char *key, const char *value,
                             const char *context);
/* Checks cross-option constraints once every option is applied. */
int32_t sio_fault_config_check(const struct sio_fault_config *cfg, const char *context);

/* Replaces the configuration and zeroes the counters. */
void sio_faults_apply(struct sio_faults *f, const struct sio_fault_config *cfg);

static inline bool sio_faults_enabled(struct sio_faults *f)
{
    return atomic_load_explicit(&f->enabled, memory_order_acquire);
}

/* Fills acts[0..count) for an already validated batch. */
void sio_faults_decide(struct sio_faults *f, const sio_geometry *geo, const sio_cmd *cmds,
                       uint32_t count, struct sio_fault_action *acts);

void sio_faults_stats(struct sio_faults *f, sio_fault_stats *out);

#endif /* SIO_FAULTS_H */
