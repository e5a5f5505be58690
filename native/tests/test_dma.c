/*
 * test_dma.c - DMA buffer allocation rules.
 */
#include <errno.h>

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
