/*
 * spdk.h - private state of the SPDK backend (nvme-tcp: and nvme-pcie: URIs).
 *
 * One NVMe controller (spdk_nvme_connect) and namespace per device, one
 * SPDK I/O queue pair per sio queue pair.  SPDK's completion callbacks run
 * inside spdk_nvme_qpair_process_completions, called only from poll/wait on
 * the queue pair's own thread; they move finished slots to a done ring that
 * poll hands out, so nothing but a status crosses the ABI.  A slot lives
 * from submit until its completion is reaped and may issue several NVMe
 * commands (write zeroes in 64 Ki-block pieces, trim then flush for FUA).
 */
#ifndef SIO_SPDK_H
#define SIO_SPDK_H

#include <stdbool.h>
#include <stdint.h>

#include <spdk/nvme.h>

#include "backend.h"

struct spdk_device {
    struct sio_device head;
    struct spdk_nvme_ctrlr *ctrlr;
    struct spdk_nvme_ns *ns;
    uint32_t nsid;
    uint32_t sector;
    /* Write zeroes is a real command; else it writes zero_buf. */
    bool write_zeroes;
    /* Deallocate (DSM) is supported and deallocated blocks read back as zeroes. */
    bool dealloc_zeroes;
    bool volatile_cache;
    /* Largest write zeroes command in blocks. */
    uint32_t max_zeroes_blocks;
    /* Zeroed DMA buffer of max_transfer bytes, only when write_zeroes is false. */
    void *zero_buf;
    /* Node in the environment's list of controllers whose admin queue it polls. */
    struct sio_spdk_admin_node *admin;
    /* trtype and address, for details. */
    char where[160];
};

/* What a slot's next (or current) NVMe command does. */
enum spdk_stage {
    /* Complete with status/bytes without touching the device (injected faults, flush without a cache). */
    SSTAGE_NOP,
    SSTAGE_RW,
    SSTAGE_FLUSH,
    SSTAGE_DEALLOC,
    /* Write zeroes (or writes of the zero buffer) over [lba, end). */
    SSTAGE_ZERO,
};

struct spdk_slot {
    uint64_t tag;
    char *buf;
    /* Next block to issue and the end of the range (ZERO and DEALLOC). */
    uint64_t lba;
    uint64_t end;
    uint32_t nblocks;
    uint32_t bytes;
    int32_t status;
    /* Status a torn write reports once its first part is written. */
    int32_t forced_status;
    /* The first NVMe error of the slot, kept for the detail. */
    uint16_t sct;
    uint16_t sc;
    bool nvme_error;
    /* The fault injector failed or tore the command. */
    bool injected;
    /* A flush follows the current stage (FUA on trim without a durable deallocate). */
    bool then_flush;
    /* Inside issue(): a callback must not finish the slot under it. */
    bool issuing;
    /* On the retry list (the driver had no free request). */
    bool parked;
    uint8_t opcode;
    uint8_t flags;
    uint8_t stage;
    /* NVMe commands of this slot in flight. */
    uint32_t outstanding;
    uint32_t next_parked;
    struct spdk_qp *q;
};

struct spdk_qp {
    struct sio_qpair head;
    struct spdk_nvme_qpair *qpair;
    struct spdk_slot *slots;
    uint32_t *free_slots;
    uint32_t nfree;
    /* Finished slots, in completion order; at most depth of them. */
    uint32_t *done;
    uint32_t done_head;
    uint32_t done_count;
    /* Slots waiting for a free driver request, a singly linked list by index. */
    uint32_t parked_head;
    uint32_t parked_tail;
    /* The driver reported the connection lost (spdk_nvme_qpair_process_completions: -ENXIO). */
    bool failed;
};

enum {
    SPDK_NO_SLOT = UINT32_MAX,
    /* A command may be up to this many times the controller's transfer limit (the driver splits it). */
    SIO_SPDK_MAX_SPLIT = 32,
};

int32_t spdk_backend_open(struct sio_uri *uri, sio_device **out);
void spdk_backend_close(sio_device *dev);
int32_t spdk_backend_qpair_create(sio_device *dev, uint32_t depth, sio_qpair **out);
void spdk_backend_qpair_destroy(sio_qpair *qp);
int32_t spdk_backend_submit(sio_qpair *qp, const sio_cmd *cmds, const struct sio_fault_action *acts, uint32_t count);
int32_t spdk_backend_poll(sio_qpair *qp, sio_completion *out, uint32_t max, uint32_t *out_count);
int32_t spdk_backend_wait(sio_qpair *qp, sio_completion *out, uint32_t max, uint64_t timeout_us, uint32_t *out_count);


/* Admin queue polling (keep-alive) by the environment's thread. */
struct sio_spdk_admin_node;
int32_t sio_spdk_admin_add(struct spdk_nvme_ctrlr *ctrlr, struct sio_spdk_admin_node **out);
void sio_spdk_admin_remove(struct sio_spdk_admin_node *node);

#endif /* SIO_SPDK_H */
