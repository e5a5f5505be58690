/*
 * faults.c - parsing and deciding injected faults.
 *
 * Counting rules (the contract the engine's crash tests rely on):
 *   - a command "matches" when its opcode is in fail_ops (default
 *     read,write,trim,zeroes) and it overlaps fail_range (a flush has no
 *     range and always overlaps); each match bumps ios_seen and is the
 *     candidate of fail_io (the Nth match), fail_every (every Nth) and
 *     fail_after (every match after the Nth: a device that stops working);
 *   - fail_flush counts every flush, whatever fail_ops says;
 *   - tear_write counts writes that overlap fail_range (and, when fail_ops
 *     is given, only if it names write); a command already failed is
 *     neither flush-counted nor tear-counted;
 *   - replacing the configuration zeroes every counter.
 */
#include "faults.h"

#include <errno.h>
#include <string.h>

#include "error.h"

#define OP_BIT(op) (1u << (op))
#define DEFAULT_OPS (OP_BIT(SIO_OP_READ) | OP_BIT(SIO_OP_WRITE) | OP_BIT(SIO_OP_TRIM) | OP_BIT(SIO_OP_WRITE_ZEROES))

static const char *const fault_keys[] = {
    "fail_io", "fail_every", "fail_after", "fail_flush", "tear_write", "tear_bytes", "tear_ok", "fail_ops", "fail_range",
};

int32_t sio_faults_init(struct sio_faults *f)
{
    memset(f, 0, sizeof *f);
    int rc = pthread_rwlock_init(&f->lock, NULL);
    if (rc != 0)
        return sio_fail(-rc, "cannot create the fault injector lock: %s", strerror(rc));
    sio_fault_config_defaults(&f->cfg);
    return 0;
}

void sio_faults_destroy(struct sio_faults *f)
{
    pthread_rwlock_destroy(&f->lock);
}

bool sio_faults_is_key(const char *key)
{
    for (size_t i = 0; i < sizeof fault_keys / sizeof fault_keys[0]; i++)
        if (strcmp(key, fault_keys[i]) == 0)
            return true;
    return false;
}

void sio_fault_config_defaults(struct sio_fault_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->ops_mask = DEFAULT_OPS;
}

static int32_t parse_ops(const char *value, uint32_t *mask)
{
    static const struct { const char *name; uint32_t bits; } names[] = {
        {"read", OP_BIT(SIO_OP_READ)},   {"write", OP_BIT(SIO_OP_WRITE)},
        {"flush", OP_BIT(SIO_OP_FLUSH)}, {"trim", OP_BIT(SIO_OP_TRIM)},
        {"zeroes", OP_BIT(SIO_OP_WRITE_ZEROES)},
        {"all", DEFAULT_OPS | OP_BIT(SIO_OP_FLUSH)},
    };
    uint32_t m = 0;
    const char *p = value;
    for (;;) {
        size_t len = strcspn(p, ",");
        bool found = false;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strlen(names[i].name) == len && strncmp(p, names[i].name, len) == 0) {
                m |= names[i].bits;
                found = true;
            }
        }
        if (!found)
            return -EINVAL;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    *mask = m;
    return 0;
}

static int32_t parse_range(const char *value, uint64_t *start, uint64_t *end)
{
    const char *dash = strchr(value, '-');
    char first[32];
    if (dash == NULL || (size_t)(dash - value) >= sizeof first)
        return -EINVAL;
    memcpy(first, value, (size_t)(dash - value));
    first[dash - value] = '\0';
    if (sio_parse_size(first, start) != 0 || sio_parse_size(dash + 1, end) != 0)
        return -EINVAL;
    return *start < *end ? 0 : -EINVAL;
}

int32_t sio_fault_config_set(struct sio_fault_config *cfg, const char *key, const char *value,
                             const char *context)
{
    int rc;
    const char *expect;
    cfg->enabled = true;
    if (strcmp(key, "fail_io") == 0) {
        rc = sio_parse_u64(value, &cfg->fail_io);
        expect = "a command count";
    } else if (strcmp(key, "fail_every") == 0) {
        rc = sio_parse_u64(value, &cfg->fail_every);
        expect = "a command count";
    } else if (strcmp(key, "fail_after") == 0) {
        rc = sio_parse_u64(value, &cfg->fail_after);
        cfg->has_fail_after = rc == 0;
        expect = "a command count";
    } else if (strcmp(key, "fail_flush") == 0) {
        cfg->fail_flush_all = strcmp(value, "all") == 0;
        rc = cfg->fail_flush_all ? 0 : sio_parse_u64(value, &cfg->fail_flush);
        expect = "a flush count or 'all'";
    } else if (strcmp(key, "tear_write") == 0) {
        rc = sio_parse_u64(value, &cfg->tear_write);
        expect = "a write count";
    } else if (strcmp(key, "tear_bytes") == 0) {
        rc = sio_parse_size(value, &cfg->tear_bytes);
        cfg->has_tear_bytes = rc == 0;
        expect = "a byte count (K/M/G/T suffix allowed)";
    } else if (strcmp(key, "tear_ok") == 0) {
        rc = sio_parse_bool(value, &cfg->tear_ok);
        expect = "0 or 1";
    } else if (strcmp(key, "fail_ops") == 0) {
        rc = parse_ops(value, &cfg->ops_mask);
        cfg->ops_given = rc == 0;
        expect = "a comma list of read,write,flush,trim,zeroes";
    } else if (strcmp(key, "fail_range") == 0) {
        rc = parse_range(value, &cfg->range_start, &cfg->range_end);
        cfg->has_range = rc == 0;
        expect = "START-END byte offsets with START < END";
    } else {
        return sio_fail(-EINVAL, "unknown fault option '%s' in '%s'", key, context);
    }
    if (rc != 0)
        return sio_fail(-EINVAL, "bad value '%s' for option '%s' in '%s': expected %s", value, key, context,
                        expect);
    return 0;
}

int32_t sio_fault_config_check(const struct sio_fault_config *cfg, const char *context)
{
    if (cfg->tear_write != 0 && cfg->ops_given && !(cfg->ops_mask & OP_BIT(SIO_OP_WRITE)))
        return sio_fail(-EINVAL, "tear_write needs 'write' in fail_ops in '%s'", context);
    return 0;
}

void sio_faults_apply(struct sio_faults *f, const struct sio_fault_config *cfg)
{
    pthread_rwlock_wrlock(&f->lock);
    f->cfg = *cfg;
    atomic_store(&f->ios_seen, 0);
    atomic_store(&f->writes_seen, 0);
    atomic_store(&f->flushes_seen, 0);
    atomic_store(&f->ios_failed, 0);
    atomic_store(&f->flushes_failed, 0);
    atomic_store(&f->writes_torn, 0);
    atomic_store_explicit(&f->enabled, cfg->enabled, memory_order_release);
    pthread_rwlock_unlock(&f->lock);
}

static bool in_range(const struct sio_fault_config *cfg, const sio_cmd *c)
{
    if (!cfg->has_range || c->opcode == SIO_OP_FLUSH)
        return true;
    return c->offset < cfg->range_end && c->offset + c->length > cfg->range_start;
}

/* Default tear: half the write rounded down to the block, at least one block when the write is longer. */
static uint32_t tear_length(const struct sio_fault_config *cfg, const sio_geometry *geo, uint32_t length)
{
    uint32_t bs = geo->logical_block_size;
    if (cfg->has_tear_bytes) {
        uint64_t t = cfg->tear_bytes < length ? cfg->tear_bytes : length;
        if (geo->flags & SIO_DEV_F_DIRECT)
            t -= t % bs;
        return (uint32_t)t;
    }
    uint32_t t = length / 2;
    t -= t % bs;
    if (t == 0 && length > bs)
        t = bs;
    return t;
}

static void decide_one(struct sio_faults *f, const struct sio_fault_config *cfg, const sio_geometry *geo,
                       const sio_cmd *c, struct sio_fault_action *a)
{
    a->kind = SIO_FAULT_NONE;
    a->status = 0;
    a->tear_bytes = 0;
    bool ranged = in_range(cfg, c);
    if (ranged && (cfg->ops_mask & OP_BIT(c->opcode))) {
        uint64_t n = atomic_fetch_add(&f->ios_seen, 1) + 1;
        if ((cfg->fail_io != 0 && n == cfg->fail_io) || (cfg->fail_every != 0 && n % cfg->fail_every == 0) ||
            (cfg->has_fail_after && n > cfg->fail_after)) {
            atomic_fetch_add(&f->ios_failed, 1);
            a->kind = SIO_FAULT_FAIL;
            a->status = -EIO;
            return;
        }
    }
    if (c->opcode == SIO_OP_FLUSH && (cfg->fail_flush_all || cfg->fail_flush != 0)) {
        uint64_t n = atomic_fetch_add(&f->flushes_seen, 1) + 1;
        if (cfg->fail_flush_all || n == cfg->fail_flush) {
            atomic_fetch_add(&f->flushes_failed, 1);
            a->kind = SIO_FAULT_FAIL;
            a->status = -EIO;
        }
        return;
    }
    if (c->opcode == SIO_OP_WRITE && cfg->tear_write != 0 && ranged) {
        uint64_t n = atomic_fetch_add(&f->writes_seen, 1) + 1;
        if (n == cfg->tear_write) {
            atomic_fetch_add(&f->writes_torn, 1);
            a->kind = SIO_FAULT_TEAR;
            a->status = cfg->tear_ok ? 0 : -EIO;
            a->tear_bytes = tear_length(cfg, geo, c->length);
        }
    }
}

void sio_faults_decide(struct sio_faults *f, const sio_geometry *geo, const sio_cmd *cmds, uint32_t count,
                       struct sio_fault_action *acts)
{
    pthread_rwlock_rdlock(&f->lock);
    for (uint32_t i = 0; i < count; i++)
        decide_one(f, &f->cfg, geo, &cmds[i], &acts[i]);
    pthread_rwlock_unlock(&f->lock);
}

void sio_faults_stats(struct sio_faults *f, sio_fault_stats *out)
{
    out->ios_seen = atomic_load(&f->ios_seen);
    out->ios_failed = atomic_load(&f->ios_failed);
    out->flushes_failed = atomic_load(&f->flushes_failed);
    out->writes_torn = atomic_load(&f->writes_torn);
}
