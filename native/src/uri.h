/*
 * uri.h - device URI and option-list parsing.
 *
 * A device URI is SCHEME:PATH[?key=value&...]; the fault spec given to
 * sio_device_set_faults is the same key=value&... list without the '?'.
 * Parsing is split from interpretation: this layer only cuts the text into
 * (key, value) pairs and offers strict value parsers; the device layer and
 * each backend decide which keys they own.
 */
#ifndef SIO_URI_H
#define SIO_URI_H

#include <stdbool.h>
#include <stdint.h>

enum { SIO_URI_MAX_OPTS = 32 };

struct sio_uri_opt {
    const char *key;
    const char *value;
    /* Set by whoever consumed the option, so leftovers can be reported as unknown. */
    bool used;
};

struct sio_uri {
    /* The caller's original text, quoted in error details. */
    const char *text;
    /* Private copy that key/value/scheme/path point into. */
    char *buf;
    const char *scheme;
    const char *path;
    struct sio_uri_opt opts[SIO_URI_MAX_OPTS];
    uint32_t nopts;
};

/* Splits a URI; on failure records a detail and returns -EINVAL (or -ENOMEM). */
int32_t sio_uri_parse(const char *text, struct sio_uri *out);
void sio_uri_free(struct sio_uri *uri);

/*
 * Splits "k=v&k=v" in place (list is modified).  context is the text quoted
 * in error details.  Rejects empty items, missing '=', empty keys and
 * duplicate keys with -EINVAL.
 */
int32_t sio_options_split(char *list, struct sio_uri_opt *opts, uint32_t max, uint32_t *count,
                          const char *context);

/* Strict value parsers: 0 or -EINVAL, no detail recorded (the caller knows the option). */
int sio_parse_u64(const char *s, uint64_t *out);
/* Decimal with an optional K/M/G/T (binary) suffix. */
int sio_parse_size(const char *s, uint64_t *out);
/* "0" or "1". */
int sio_parse_bool(const char *s, bool *out);

#endif /* SIO_URI_H */
