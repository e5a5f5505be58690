/*
 * test_dma.c - DMA buffer allocation rules.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

TEST(dma_alloc_alignment_and_zeroing)
{
    sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("d"));
    void *p = NULL;
    CHECK_OK(sio_dma_alloc(dev, 3 * 4096 + 100, 0, &p));
    CHECK(((uintptr_t)p & 4095) == 0); /* device's buffer_alignment */
    CHECK(t_is_zero(p, 3 * 4096 + 100));
    CHECK_OK(sio_dma_free(dev, p));
    CHECK_OK(sio_dma_alloc(dev, 4096, 1 << 16, &p));
    CHECK(((uintptr_t)p & 0xffff) == 0);
    CHECK_OK(sio_dma_free(dev, p));
    CHECK_OK(sio_dma_alloc(dev, 1, 1, &p));
    CHECK_OK(sio_dma_free(dev, p));
    CHECK_OK(sio_dma_free(dev, NULL));
    CHECK_OK(sio_device_close(dev));

    /* A buffered device still hands out cache-line aligned buffers. */
    dev = t_open("file:%s?direct=0", t_path("d"));
    CHECK_OK(sio_dma_alloc(dev, 100, 0, &p));
    CHECK(((uintptr_t)p & 63) == 0);
    CHECK_OK(sio_dma_free(dev, p));
    CHECK_OK(sio_device_close(dev));
}

TEST(dma_alloc_errors)
{
    sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("d"));
    void *p = (void *)1;
    CHECK_RC(sio_dma_alloc(dev, 0, 0, &p), -EINVAL);
    CHECK_DETAIL("size is 0");
    CHECK(p == NULL);
    CHECK_RC(sio_dma_alloc(dev, 4096, 3, &p), -EINVAL);
    CHECK_DETAIL("not a power of two");
    CHECK_RC(sio_dma_alloc(dev, UINT64_MAX, 0, &p), -ENOMEM);
    CHECK_RC(sio_dma_alloc(dev, 1ull << 50, 0, &p), -ENOMEM);
    CHECK_RC(sio_dma_alloc(NULL, 4096, 0, &p), -EINVAL);
    CHECK_RC(sio_dma_alloc(dev, 4096, 0, NULL), -EINVAL);
    CHECK_RC(sio_dma_free(NULL, p), -EINVAL);
    CHECK_OK(sio_device_close(dev));
}

/* The VmFlags line of the mapping that holds p, from /proc/self/smaps ("" when not found). */
static void vm_flags_of(const void *p, char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL)
        return;
    char line[512];
    int inside = 0;
    while (fgets(line, sizeof line, f) != NULL)
    {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) /* a mapping's first line */
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0)
        {
            strncpy(out, line + 8, len - 1);
            out[len - 1] = '\0';
            break;
        }
    }
    fclose(f);
}

TEST(dma_alloc_large_buffers_aligned_for_huge_pages)
{
    /* 2 MiB or more: 2 MiB aligned and marked for transparent huge pages (smaps "hg"), so a 1 MiB
       transfer is one or two physically contiguous segments instead of 256 pages (max_segments). */
    sio_device *dev = t_open("file:%s?create=1&size=64K", t_path("d"));
    void *p = NULL;
    CHECK_OK(sio_dma_alloc(dev, 4u << 20, 0, &p));
    CHECK(((uintptr_t)p & ((2u << 20) - 1)) == 0);
    CHECK(t_is_zero(p, 4u << 20));
    char flags[512];
    vm_flags_of(p, flags, sizeof flags);
    CHECK(strstr(flags, " hg") != NULL);
    CHECK_OK(sio_dma_free(dev, p));

    /* Smaller buffers keep the device's alignment and ordinary pages. */
    CHECK_OK(sio_dma_alloc(dev, 64 * 1024, 0, &p));
    CHECK(((uintptr_t)p & 4095) == 0);
    CHECK_OK(sio_dma_free(dev, p));
    CHECK_OK(sio_device_close(dev));
}
