/*
 * dma.c - DMA-able buffer allocation.
 *
 * io_uring with O_DIRECT needs nothing more than aligned, pinned-on-demand
 * heap memory, so the default is posix_memalign; an SPDK backend would route
 * through its own dma_alloc to get hugepage memory the NVMe driver can map.
 * Buffers are zeroed so a read into one never exposes old heap contents.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"

/* Cache-line floor so buffered devices (alignment 8) still get sane buffers. */
enum { DMA_MIN_ALIGN = 64 };

int32_t sio_dma_heap_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out)
{
    size_t a = align != 0 ? align : dev->geo.buffer_alignment;
    if (a < DMA_MIN_ALIGN)
        a = DMA_MIN_ALIGN;
    void *p = NULL;
    int rc = posix_memalign(&p, a, (size_t)size);
    if (rc != 0)
        return sio_fail(-rc, "cannot allocate %llu bytes aligned to %zu: %s", (unsigned long long)size, a,
                        strerror(rc));
    memset(p, 0, (size_t)size);
    *out = p;
    return 0;
}

void sio_dma_heap_free(sio_device *dev, void *buf)
{
    (void)dev;
    free(buf);
}

int32_t sio_dma_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out_buf)
{
    if (dev == NULL || out_buf == NULL)
        return sio_fail(-EINVAL, "sio_dma_alloc: %s is NULL", dev == NULL ? "dev" : "out_buf");
    *out_buf = NULL;
    if (size == 0)
        return sio_fail(-EINVAL, "sio_dma_alloc: size is 0");
    if (size > (uint64_t)PTRDIFF_MAX)
        return sio_fail(-ENOMEM, "sio_dma_alloc: size %llu is too large", (unsigned long long)size);
    if ((align & (align - 1)) != 0)
        return sio_fail(-EINVAL, "sio_dma_alloc: alignment %u is not a power of two", align);
    return dev->ops->dma_alloc(dev, size, align, out_buf);
}

int32_t sio_dma_free(sio_device *dev, void *buf)
{
    if (dev == NULL)
        return sio_fail(-EINVAL, "sio_dma_free: dev is NULL");
    if (buf != NULL)
        dev->ops->dma_free(dev, buf);
    return 0;
}
