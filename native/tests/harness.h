/*
 * harness.h - a minimal test harness for libstrata_io's C tests.
 *
 * Each TEST(name) is one ctest case: CMake scans the sources for lines
 * starting with TEST( and registers "strata_io_tests NAME" per case, so the
 * ctest summary counts every case.  Without arguments the binary runs all
 * cases (handy under valgrind).  A failed CHECK prints where and why,
 * including the library's error detail, and exits 1; exit 77 is a skip.
 */
#ifndef STRATA_TEST_HARNESS_H
#define STRATA_TEST_HARNESS_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata_io.h"

typedef void (*t_fn)(void);
void t_register(const char *name, t_fn fn);
_Noreturn void t_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
_Noreturn void t_skip(const char *why);
/* The library's current error detail (static buffer). */
const char *t_detail(void);

#define TEST(name)                                                                                                     \
    static void test_##name(void);                                                                                    \
    __attribute__((constructor)) static void register_##name(void) { t_register(#name, test_##name); }                 \
    static void test_##name(void)

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            t_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                                                     \
    } while (0)

#define CHECK_EQ(a, b)                                                                                                 \
    do {                                                                                                               \
        long long a_ = (long long)(a), b_ = (long long)(b);                                                            \
        if (a_ != b_)                                                                                                  \
            t_fail(__FILE__, __LINE__, "%s == %s failed: %lld != %lld", #a, #b, a_, b_);                               \
    } while (0)

/* A call's status: expected errno (0 or negative); prints the detail on mismatch. */
#define CHECK_RC(expr, expected)                                                                                       \
    do {                                                                                                               \
        int32_t rc_ = (expr);                                                                                          \
        if (rc_ != (int32_t)(expected))                                                                                \
            t_fail(__FILE__, __LINE__, "%s returned %d (%s), expected %d; detail: %s", #expr, rc_,                     \
                   strerror(-rc_), (int)(expected), t_detail());                                                       \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, 0)

/* The thread's error detail contains text. */
#define CHECK_DETAIL(text)                                                                                             \
    do {                                                                                                               \
        if (strstr(t_detail(), (text)) == NULL)                                                                        \
            t_fail(__FILE__, __LINE__, "detail '%s' does not contain '%s'", t_detail(), (text));                       \
    } while (0)

#endif /* STRATA_TEST_HARNESS_H */
