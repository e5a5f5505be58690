/*
 * spdk_env.c - the process-wide SPDK environment and its admin thread.
 *
 * DPDK can be initialised once per process, so the first nvme-* open starts
 * it with the options sio_env_configure left (or the defaults) and every
 * later open shares it; a failed start is final for the process and every
 * later open reports the same reason.  rte_eal_init pins the thread that
 * calls it to the main lcore, so it runs on a thread of our own, never on a
 * caller's (a .NET thread pinned to one core would drag the runtime along).
 * That thread then stays to poll the admin queue of every attached
 * controller, which sends NVMe-oF keep-alives and reaps asynchronous events,
 * as SPDK's fio plugin does; the I/O queue pairs are polled by their owners.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <spdk/env.h>
#include <spdk/nvme.h>

#include "env.h"
#include "error.h"
#include "spdk.h"

/* DPDK's public API (rte_eal.h), declared here because SPDK's pkg-config gives no DPDK include path. */
const char *rte_eal_get_runtime_dir(void);

/* Admin queues are polled this often; keep-alive timeouts are 10 s or more. */
static const long ADMIN_POLL_NS = 100 * 1000 * 1000;

enum env_state { ENV_IDLE, ENV_STARTING, ENV_RUNNING, ENV_FAILED };

struct sio_spdk_admin_node {
    struct spdk_nvme_ctrlr *ctrlr;
    struct sio_spdk_admin_node *next;
};

static pthread_mutex_t env_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t env_cond = PTHREAD_COND_INITIALIZER;
static enum env_state state = ENV_IDLE;
static struct sio_env_options options;
static bool options_set;
static int32_t start_rc;
static char start_detail[SIO_ERROR_DETAIL_MAX];
static struct sio_spdk_admin_node *admin_list;
/* Set at process exit: the admin thread must not touch SPDK while its libraries tear down. */
static bool exiting;

static bool same_options(const struct sio_env_options *a, const struct sio_env_options *b)
{
    return a->hugepages == b->hugepages && a->mem_size_mb == b->mem_size_mb && strcmp(a->iova_mode, b->iova_mode) == 0 &&
           strcmp(a->core_mask, b->core_mask) == 0 && a->shm_id == b->shm_id && a->pci == b->pci;
}

int32_t sio_spdk_env_configure(const struct sio_env_options *o)
{
    pthread_mutex_lock(&env_lock);
    if (!options_set)
        sio_env_options_defaults(&options);
    int32_t rc = 0;
    if (state == ENV_IDLE) {
        options = *o;
        options_set = true;
    } else if (!same_options(o, &options)) {
        char running[SIO_ERROR_DETAIL_MAX / 2], wanted[SIO_ERROR_DETAIL_MAX / 2];
        sio_env_options_format(&options, running, sizeof running);
        sio_env_options_format(o, wanted, sizeof wanted);
        rc = sio_fail(-EBUSY, "the SPDK environment already %s with %s; %s needs a new process",
                      state == ENV_FAILED ? "failed to start" : "runs", running, wanted);
    }
    pthread_mutex_unlock(&env_lock);
    return rc;
}

static int32_t init_env(const struct sio_env_options *o)
{
    struct spdk_env_opts opts;
    opts.opts_size = sizeof opts;
    spdk_env_opts_init(&opts);
    opts.name = "strata";
    opts.core_mask = o->core_mask;
    opts.shm_id = o->shm_id;
    opts.no_huge = !o->hugepages;
    opts.no_pci = !o->pci;
    if (o->mem_size_mb != 0)
        opts.mem_size = (int)o->mem_size_mb;
    if (o->iova_mode[0] != '\0')
        opts.iova_mode = o->iova_mode;
    int rc = spdk_env_init(&opts);
    return rc < 0 ? rc : rc > 0 ? -rc : 0;
}

static void poll_admin_queues(void)
{
    for (struct sio_spdk_admin_node *n = admin_list; n != NULL; n = n->next)
        spdk_nvme_ctrlr_process_admin_completions(n->ctrlr);
}

/*
 * atexit, registered once the environment has tried to start, so it runs before SPDK's and
 * DPDK's own teardown.  Also removes DPDK's per-process runtime directory
 * (/var/run/dpdk/spdk_pidN), empty with SPDK's options, which DPDK leaves behind.
 */
static void at_exit(void)
{
    pthread_mutex_lock(&env_lock);
    exiting = true; /* the admin thread polls under this lock, so it is not inside SPDK now */
    pthread_mutex_unlock(&env_lock);
    rmdir(rte_eal_get_runtime_dir());
}

static void *env_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&env_lock);
    struct sio_env_options o = options;
    pthread_mutex_unlock(&env_lock);

    int32_t rc = init_env(&o);
    if (rc == 0)
        spdk_unaffinitize_thread(); /* this thread only polls admin queues */
    atexit(at_exit);

    pthread_mutex_lock(&env_lock);
    start_rc = rc;
    if (rc != 0) {
        char text[SIO_ERROR_DETAIL_MAX / 2];
        sio_env_options_format(&o, text, sizeof text);
        snprintf(start_detail, sizeof start_detail, "the SPDK environment did not start with %s: %s (DPDK's log is on stderr)",
                 text, strerror(-rc));
    }
    state = rc == 0 ? ENV_RUNNING : ENV_FAILED;
    pthread_cond_broadcast(&env_cond);
    if (rc != 0) {
        pthread_mutex_unlock(&env_lock);
        return NULL;
    }
    for (;;) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += ADMIN_POLL_NS;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&env_cond, &env_lock, &deadline);
        if (exiting)
            break;
        poll_admin_queues();
    }
    pthread_mutex_unlock(&env_lock);
    return NULL;
}

int32_t sio_spdk_env_start(void)
{
    pthread_mutex_lock(&env_lock);
    if (!options_set) {
        sio_env_options_defaults(&options);
        options_set = true;
    }
    if (state == ENV_IDLE) {
        state = ENV_STARTING;
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&th, &attr, env_thread, NULL);
        pthread_attr_destroy(&attr);
        if (err != 0) {
            state = ENV_FAILED;
            start_rc = -err;
            snprintf(start_detail, sizeof start_detail, "cannot start the SPDK environment thread: %s", strerror(err));
        } else {
            pthread_setname_np(th, "strata-spdk");
        }
    }
    while (state == ENV_STARTING)
        pthread_cond_wait(&env_cond, &env_lock);
    int32_t rc = state == ENV_RUNNING ? 0 : sio_fail(start_rc, "%s", start_detail);
    pthread_mutex_unlock(&env_lock);
    return rc;
}

int32_t sio_spdk_admin_add(struct spdk_nvme_ctrlr *ctrlr, struct sio_spdk_admin_node **out)
{
    struct sio_spdk_admin_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return sio_fail(-ENOMEM, "out of memory registering an NVMe controller");
    n->ctrlr = ctrlr;
    pthread_mutex_lock(&env_lock);
    n->next = admin_list;
    admin_list = n;
    pthread_mutex_unlock(&env_lock);
    *out = n;
    return 0;
}

/* After this returns the admin thread no longer touches the controller, so it can be detached. */
void sio_spdk_admin_remove(struct sio_spdk_admin_node *node)
{
    pthread_mutex_lock(&env_lock);
    for (struct sio_spdk_admin_node **p = &admin_list; *p != NULL; p = &(*p)->next) {
        if (*p == node) {
            *p = node->next;
            break;
        }
    }
    pthread_mutex_unlock(&env_lock);
    free(node);
}
