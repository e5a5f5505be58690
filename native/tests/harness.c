/*
 * harness.c - registry, runner and failure reporting for the C tests.
 */
#include "harness.h"

#include <stdarg.h>

enum { MAX_TESTS = 256 };

static struct {
    const char *name;
    t_fn fn;
} tests[MAX_TESTS];
static int ntests;

void t_register(const char *name, t_fn fn)
{
    if (ntests == MAX_TESTS) {
        fprintf(stderr, "too many tests\n");
        abort();
    }
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    ntests++;
}

const char *t_detail(void)
{
    static char buf[SIO_ERROR_DETAIL_MAX];
    if (sio_error_detail(buf, sizeof buf) != 0)
        snprintf(buf, sizeof buf, "(sio_error_detail failed)");
    return buf;
}

void t_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void t_skip(const char *why)
{
    fprintf(stderr, "SKIP: %s\n", why);
    exit(77);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < ntests; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }
    int ran = 0;
    for (int i = 0; i < ntests; i++) {
        bool wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], tests[i].name) == 0;
        if (!wanted)
            continue;
        printf("RUN  %s\n", tests[i].name);
        fflush(stdout);
        tests[i].fn();
        printf("PASS %s\n", tests[i].name);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test matched\n");
        return 2;
    }
    return 0;
}
