/*
 * dma.c - DMA-able buffer allocation.
 *
 * io_uring with O_DIRECT needs nothing more than aligned, pinned-on-demand
 * heap memory, so the default is posix_memalign; an SPDK backend would route
 * through its own dma_alloc to get hugepage memory the NVMe driver can map.
 * Buffers are zeroed so a read into one never exposes old heap contents.
 *
 * Allocations of 2 MiB or more (the pools' arenas, the migration loops' extent
 * buffers) are aligned to 2 MiB and asked for transparent huge pages before they
 * are first touched. A block device takes a request in at most max_segments
 * physically contiguous pieces (254 on virtio-blk); 1 MiB of scattered 4 KiB
 * pages is 256 of them, so each 1 MiB (+ 4 KiB block table) read or write was
 * split into two device requests. In huge pages it is one or two segments. Best
 * effort: with THP off the memory is ordinary pages, as before.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend.h"
#include "error.h"

/* Cache-line floor so buffered devices (alignment 8) still get sane buffers. */
enum { DMA_MIN_ALIGN = 64 };
/* Transparent huge page size on x86-64 and the common arm64 configuration. */
enum { DMA_HUGE = 2 * 1024 * 1024 };

int32_t sio_dma_heap_alloc(sio_device *dev, uint64_t size, uint32_t align, void **out)
{
    size_t a = align != 0 ? align : dev->geo.buffer_alignment;
    if (a < DMA_MIN_ALIGN)
        a = DMA_MIN_ALIGN;
    int huge = size >= DMA_HUGE;
    if (huge && a < DMA_HUGE)
        a = DMA_HUGE;
    void *p = NULL;
    int rc = posix_memalign(&p, a, (size_t)size);
    if (rc != 0)
        return sio_fail(-rc, "cannot allocate %llu bytes aligned to %zu: %s", (unsigned long long)size, a,
                        strerror(rc));
    if (huge)
        (void)madvise(p, (size_t)size & ~((size_t)DMA_HUGE - 1), MADV_HUGEPAGE); /* before the first touch */
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
