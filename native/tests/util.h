/*
 * util.h - fixtures shared by the C tests: a private temp directory, files,
 * device and queue-pair helpers that fail the test on error, and patterns.
 */
#ifndef STRATA_TEST_UTIL_H
#define STRATA_TEST_UTIL_H

#include "harness.h"

/* Path of name inside this process's temp dir (created on first use, removed at exit). Rotating static buffers. */
const char *t_path(const char *name);
/* Creates (or truncates) a sparse file of size bytes. */
void t_make_file(const char *path, uint64_t size);
uint64_t t_file_size(const char *path);
/* Reads the file directly (buffered pread), to check what reached it. */
void t_read_file(const char *path, uint64_t offset, void *buf, size_t len);
void t_write_file(const char *path, uint64_t offset, const void *buf, size_t len);

/* Opens a device by printf-formatted URI; fails the test on error. */
sio_device *t_open(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Opens with the expected error; returns nothing. */
void t_open_fails(int32_t expected, const char *uri);
sio_qpair *t_qpair(sio_device *dev, uint32_t depth);
void *t_dma(sio_device *dev, uint64_t size);

/* Submits one command and waits for its completion. */
sio_completion t_io(sio_qpair *qp, uint8_t op, uint64_t offset, void *buf, uint32_t len, uint8_t flags);
/* Submits a batch (tags must be 0..n-1) and waits for all; comps indexed by tag. */
void t_batch(sio_qpair *qp, const sio_cmd *cmds, uint32_t n, sio_completion *comps);
/* Reaps exactly n completions (waiting up to 10 s), indexed by tag (tags < n). */
void t_reap(sio_qpair *qp, uint32_t n, sio_completion *comps);

void t_fill(void *buf, size_t len, uint32_t seed);
bool t_is_fill(const void *buf, size_t len, uint32_t seed);
bool t_is_zero(const void *buf, size_t len);
bool t_is_byte(const void *buf, size_t len, uint8_t byte);

static inline sio_cmd t_cmd(uint64_t tag, uint8_t op, uint64_t offset, void *buf, uint32_t len)
{
    sio_cmd c;
    memset(&c, 0, sizeof c);
    c.tag = tag;
    c.opcode = op;
    c.offset = offset;
    c.buf = buf;
    c.length = len;
    return c;
}

#endif /* STRATA_TEST_UTIL_H */
