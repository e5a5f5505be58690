/*
 * nvme_status.c - NVMe status to errno, the way Linux's NVMe driver maps
 * them to block-layer errors where it has a mapping (nvme_error_status):
 * protection and compare errors EILSEQ, reservation conflicts EBADE, a full
 * namespace ENOSPC, a write-protected range EROFS, aborts ECANCELED, an
 * unsupported opcode EOPNOTSUPP, a bad field EINVAL, everything else EIO.
 */
#include "nvme_status.h"

#include <errno.h>
#include <stddef.h>

struct status_entry {
    uint16_t sct;
    uint16_t sc;
    int32_t err;
    const char *name;
};

static const struct status_entry table[] = {
    {SIO_NVME_SCT_GENERIC, 0x00, 0, "success"},
    {SIO_NVME_SCT_GENERIC, 0x01, -EOPNOTSUPP, "invalid command opcode"},
    {SIO_NVME_SCT_GENERIC, 0x02, -EINVAL, "invalid field in command"},
    {SIO_NVME_SCT_GENERIC, 0x04, -EIO, "data transfer error"},
    {SIO_NVME_SCT_GENERIC, 0x05, -EIO, "aborted due to power loss"},
    {SIO_NVME_SCT_GENERIC, 0x06, -EIO, "internal device error"},
    {SIO_NVME_SCT_GENERIC, 0x07, -ECANCELED, "aborted by request"},
    {SIO_NVME_SCT_GENERIC, 0x08, -EIO, "aborted: queue deleted (connection lost)"},
    {SIO_NVME_SCT_GENERIC, 0x0b, -ENXIO, "invalid namespace or format"},
    {SIO_NVME_SCT_GENERIC, 0x1d, -EBUSY, "sanitize in progress"},
    {SIO_NVME_SCT_GENERIC, 0x21, -EIO, "command interrupted"},
    {SIO_NVME_SCT_GENERIC, 0x80, -ERANGE, "LBA out of range"},
    {SIO_NVME_SCT_GENERIC, 0x81, -ENOSPC, "capacity exceeded"},
    {SIO_NVME_SCT_GENERIC, 0x82, -EIO, "namespace not ready"},
    {SIO_NVME_SCT_GENERIC, 0x83, -EBADE, "reservation conflict"},
    {SIO_NVME_SCT_GENERIC, 0x84, -EBUSY, "format in progress"},
    {SIO_NVME_SCT_COMMAND_SPECIFIC, 0x80, -EINVAL, "conflicting attributes"},
    {SIO_NVME_SCT_COMMAND_SPECIFIC, 0x81, -EINVAL, "invalid protection information"},
    {SIO_NVME_SCT_COMMAND_SPECIFIC, 0x82, -EROFS, "attempted write to read-only range"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x80, -EIO, "write fault"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x81, -EIO, "unrecovered read error"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x82, -EILSEQ, "end-to-end guard check error"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x83, -EILSEQ, "end-to-end application tag check error"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x84, -EILSEQ, "end-to-end reference tag check error"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x85, -EILSEQ, "compare failure"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x86, -EACCES, "access denied"},
    {SIO_NVME_SCT_MEDIA_ERROR, 0x87, -ENODATA, "deallocated or unwritten block"},
    {SIO_NVME_SCT_PATH, 0x00, -EIO, "internal path error"},
    {SIO_NVME_SCT_PATH, 0x01, -EIO, "asymmetric access persistent loss"},
    {SIO_NVME_SCT_PATH, 0x02, -EIO, "asymmetric access inaccessible"},
    {SIO_NVME_SCT_PATH, 0x03, -EIO, "asymmetric access transition"},
    {SIO_NVME_SCT_PATH, 0x60, -EIO, "controller pathing error"},
    {SIO_NVME_SCT_PATH, 0x70, -EIO, "host pathing error"},
    {SIO_NVME_SCT_PATH, 0x71, -ECANCELED, "command aborted by host"},
};

static const struct status_entry *find(uint16_t sct, uint16_t sc)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].sct == sct && table[i].sc == sc)
            return &table[i];
    return NULL;
}

int32_t sio_nvme_status_errno(uint16_t sct, uint16_t sc)
{
    const struct status_entry *e = find(sct, sc);
    if (e != NULL)
        return e->err;
    return -EIO;
}

const char *sio_nvme_status_name(uint16_t sct, uint16_t sc)
{
    const struct status_entry *e = find(sct, sc);
    return e != NULL ? e->name : "unknown status";
}

const char *sio_nvme_sct_name(uint16_t sct)
{
    switch (sct) {
    case SIO_NVME_SCT_GENERIC: return "generic";
    case SIO_NVME_SCT_COMMAND_SPECIFIC: return "command specific";
    case SIO_NVME_SCT_MEDIA_ERROR: return "media and data integrity";
    case SIO_NVME_SCT_PATH: return "path";
    case SIO_NVME_SCT_VENDOR_SPECIFIC: return "vendor specific";
    default: return "reserved";
    }
}
