/* httpecho: an HTTP handler on the direct export ABI (route format "http", docs/ABI.md
 * "HTTP handlers"). Built as a WASI reactor.
 *
 * The input is the request as HTTP/1.1 text ("GET /path?q HTTP/1.1\r\nname: value\r\n\r\nbody");
 * the output is a CGI-style answer: header lines, a blank line, the body. It answers
 *   Status: 200 (or NNN for a path containing /status/NNN), Content-Type: text/plain, X-Echo-Method: METHOD
 * and a body of the request line, the number of request headers and the request body.
 * A path ending in /trap traps (the ingress answers 500). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(n) __attribute__((export_name(n)))

EXPORT("alloc") void *wmx_alloc(uint32_t size) { return malloc(size ? size : 1); }

EXPORT("dealloc") void wmx_dealloc(void *ptr, uint32_t size) { (void)size; free(ptr); }

static const uint8_t *find(const uint8_t *hay, uint32_t n, const char *needle) {
    size_t k = strlen(needle);
    for (uint32_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

EXPORT("handle") int64_t wmx_handle(const uint8_t *in, uint32_t len) {
    const uint8_t *eol = find(in, len, "\r\n");
    const uint8_t *end = find(in, len, "\r\n\r\n");
    if (!eol || !end) return -1;
    uint32_t line_len = (uint32_t)(eol - in);
    const uint8_t *sp1 = memchr(in, ' ', line_len);
    if (!sp1) return -1;
    uint32_t method_len = (uint32_t)(sp1 - in);
    const uint8_t *path = sp1 + 1;
    uint32_t target_len = line_len - method_len - 1;
    if (find(path, target_len, "/trap ")) __builtin_trap();
    int status = 200;
    const uint8_t *st = find(path, target_len, "/status/");
    if (st && st + 11 <= in + line_len) status = atoi((const char *)st + 8);
    if (status < 100 || status > 599) status = 200;
    unsigned headers = 0;
    for (const uint8_t *p = eol; p < end; p++)
        if (p[0] == '\r' && p[1] == '\n') headers++;
    const uint8_t *body = end + 4;
    uint32_t body_len = len - (uint32_t)(body - in);
    char head[256];
    int hlen = snprintf(head, sizeof head,
                        "Status: %d\r\nContent-Type: text/plain\r\nX-Echo-Method: %.*s\r\n\r\n",
                        status, (int)(method_len < 16 ? method_len : 16), (const char *)in);
    char mid[64];
    int mlen = snprintf(mid, sizeof mid, "\nheaders: %u\nbody: ", headers);
    size_t total = (size_t)hlen + line_len + (size_t)mlen + body_len;
    uint8_t *out = malloc(total);
    if (!out) return -1;
    uint8_t *o = out;
    memcpy(o, head, (size_t)hlen); o += hlen;
    memcpy(o, in, line_len); o += line_len;
    memcpy(o, mid, (size_t)mlen); o += mlen;
    memcpy(o, body, body_len);
    return ((int64_t)(uintptr_t)out << 32) | (int64_t)total;
}
