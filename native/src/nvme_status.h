/*
 * nvme_status.h - NVMe completion status (SCT/SC) to errno and to a name.
 *
 * Plain NVMe spec numbers, no SPDK header: the mapping is compiled and
 * tested in every build, including those without SPDK.
 */
#ifndef SIO_NVME_STATUS_H
#define SIO_NVME_STATUS_H

#include <stdint.h>

/* Status code types (NVMe base specification, completion queue entry). */
enum {
    SIO_NVME_SCT_GENERIC = 0x0,
    SIO_NVME_SCT_COMMAND_SPECIFIC = 0x1,
    SIO_NVME_SCT_MEDIA_ERROR = 0x2,
    SIO_NVME_SCT_PATH = 0x3,
    SIO_NVME_SCT_VENDOR_SPECIFIC = 0x7,
};

/* A negative errno for a failed NVMe status; 0 for success (SCT 0, SC 0). */
int32_t sio_nvme_status_errno(uint16_t sct, uint16_t sc);

/* A short description of the status, "unknown status" when the table lacks it. */
const char *sio_nvme_status_name(uint16_t sct, uint16_t sc);

/* A short name of the status code type. */
const char *sio_nvme_sct_name(uint16_t sct);

#endif /* SIO_NVME_STATUS_H */
