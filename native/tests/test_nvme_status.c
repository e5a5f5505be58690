/*
 * test_nvme_status.c - NVMe status (SCT/SC) to errno and names; plain spec
 * numbers, so every build checks the SPDK backend's error mapping.
 */
#include <errno.h>

#include "nvme_status.h"
#include "util.h"

TEST(nvme_status_maps_to_errno)
{
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x00), 0);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x01), -EOPNOTSUPP);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x02), -EINVAL);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x06), -EIO);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x07), -ECANCELED);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x08), -EIO);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x80), -ERANGE);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x81), -ENOSPC);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x83), -EBADE);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_COMMAND_SPECIFIC, 0x82), -EROFS);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_MEDIA_ERROR, 0x81), -EIO);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_MEDIA_ERROR, 0x82), -EILSEQ);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_MEDIA_ERROR, 0x85), -EILSEQ);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_MEDIA_ERROR, 0x86), -EACCES);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_PATH, 0x00), -EIO);
    /* Anything the table lacks is an I/O error, never success. */
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_VENDOR_SPECIFIC, 0x42), -EIO);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_GENERIC, 0x7f), -EIO);
    CHECK_EQ(sio_nvme_status_errno(SIO_NVME_SCT_COMMAND_SPECIFIC, 0x00), -EIO);
}

TEST(nvme_status_names)
{
    CHECK(strcmp(sio_nvme_status_name(SIO_NVME_SCT_MEDIA_ERROR, 0x81), "unrecovered read error") == 0);
    CHECK(strcmp(sio_nvme_status_name(SIO_NVME_SCT_GENERIC, 0x80), "LBA out of range") == 0);
    CHECK(strcmp(sio_nvme_status_name(SIO_NVME_SCT_VENDOR_SPECIFIC, 0x42), "unknown status") == 0);
    CHECK(strcmp(sio_nvme_sct_name(SIO_NVME_SCT_MEDIA_ERROR), "media and data integrity") == 0);
    CHECK(strcmp(sio_nvme_sct_name(5), "reserved") == 0);
}
