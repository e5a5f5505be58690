/*
 * error.c - thread-local error detail behind sio_error_detail().
 *
 * The detail is errno-like: set by every failing call, kept until the next
 * failure on the same thread, never cleared by a success (so the hot path
 * never touches it).  Text longer than SIO_ERROR_DETAIL_MAX is truncated.
 */
#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "strata_io.h"

static _Thread_local char tls_detail[SIO_ERROR_DETAIL_MAX];

int32_t sio_fail(int32_t err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
    va_end(ap);
    return err;
}

int32_t sio_error_detail(char *buf, uint32_t buf_len)
{
    /* Deliberately not recording a detail here: it would overwrite the one asked for. */
    if (buf == NULL || buf_len == 0)
        return -EINVAL;
    size_t n = strnlen(tls_detail, sizeof tls_detail - 1);
    if (n > buf_len - 1)
        n = buf_len - 1;
    memcpy(buf, tls_detail, n);
    buf[n] = '\0';
    return 0;
}
