/*
 * uri.c - cuts device URIs and fault specs into key/value pairs.
 *
 * Strict on purpose: a typo in an option must fail the open with a detail
 * naming it, not silently run a device without the intended setting.
 */
#include "uri.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static bool scheme_char(char c)
{
    return isalnum((unsigned char)c) || c == '+' || c == '-' || c == '.';
}

int32_t sio_options_split(char *list, struct sio_uri_opt *opts, uint32_t max, uint32_t *count,
                          const char *context)
{
    uint32_t n = 0;
    *count = 0;
    if (*list == '\0')
        return 0;
    for (char *item = list; item != NULL;) {
        char *next = strchr(item, '&');
        if (next != NULL)
            *next++ = '\0';
        if (*item == '\0')
            return sio_fail(-EINVAL, "empty option in '%s'", context);
        char *eq = strchr(item, '=');
        if (eq == NULL)
            return sio_fail(-EINVAL, "option '%s' has no value in '%s'", item, context);
        *eq = '\0';
        if (*item == '\0')
            return sio_fail(-EINVAL, "option with an empty name in '%s'", context);
        for (uint32_t i = 0; i < n; i++)
            if (strcmp(opts[i].key, item) == 0)
                return sio_fail(-EINVAL, "duplicate option '%s' in '%s'", item, context);
        if (n == max)
            return sio_fail(-EINVAL, "more than %u options in '%s'", max, context);
        opts[n].key = item;
        opts[n].value = eq + 1;
        opts[n].used = false;
        n++;
        item = next;
    }
    *count = n;
    return 0;
}

int32_t sio_uri_parse(const char *text, struct sio_uri *out)
{
    memset(out, 0, sizeof *out);
    if (text == NULL)
        return sio_fail(-EINVAL, "device URI is NULL");
    out->text = text;
    const char *colon = strchr(text, ':');
    if (colon == NULL || colon == text)
        return sio_fail(-EINVAL, "malformed device URI '%s': expected SCHEME:PATH[?options]", text);
    for (const char *p = text; p < colon; p++)
        if (!scheme_char(*p))
            return sio_fail(-EINVAL, "malformed scheme in device URI '%s'", text);

    out->buf = strdup(text);
    if (out->buf == NULL)
        return sio_fail(-ENOMEM, "out of memory parsing '%s'", text);
    char *sep = out->buf + (colon - text);
    *sep = '\0';
    out->scheme = out->buf;
    out->path = sep + 1;
    char *query = strchr(sep + 1, '?');
    if (query == NULL)
        return 0;
    *query++ = '\0';
    int32_t rc = sio_options_split(query, out->opts, SIO_URI_MAX_OPTS, &out->nopts, text);
    if (rc != 0) {
        sio_uri_free(out);
        return rc;
    }
    return 0;
}

void sio_uri_free(struct sio_uri *uri)
{
    free(uri->buf);
    uri->buf = NULL;
    uri->nopts = 0;
}

int sio_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return -EINVAL;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int sio_parse_size(const char *s, uint64_t *out)
{
    size_t len = strlen(s);
    unsigned shift = 0;
    if (len > 1) {
        switch (s[len - 1]) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        default: break;
        }
    }
    char digits[32];
    size_t ndigits = shift ? len - 1 : len;
    if (ndigits == 0 || ndigits >= sizeof digits)
        return -EINVAL;
    memcpy(digits, s, ndigits);
    digits[ndigits] = '\0';
    uint64_t v;
    if (sio_parse_u64(digits, &v) != 0)
        return -EINVAL;
    if (shift && v > (UINT64_MAX >> shift))
        return -EINVAL;
    *out = v << shift;
    return 0;
}

int sio_parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "0") == 0) {
        *out = false;
        return 0;
    }
    if (strcmp(s, "1") == 0) {
        *out = true;
        return 0;
    }
    return -EINVAL;
}
