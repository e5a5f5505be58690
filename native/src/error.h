/*
 * error.h - the calling thread's one-line error detail.
 *
 * Every failing public call records why it failed in thread-local storage
 * so the managed side can put the reason in its exception without any
 * callback or allocation crossing the boundary.  sio_fail() is the only way
 * to record it, so an error return and its detail always travel together.
 */
#ifndef SIO_ERROR_H
#define SIO_ERROR_H

#include <stdint.h>

/* Records the detail (printf-style) and returns err (a negative errno). */
int32_t sio_fail(int32_t err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* SIO_ERROR_H */
