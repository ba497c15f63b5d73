/* handler: the direct export ABI, version 2 (see docs/ABI.md §2). Built as a WASI reactor.
 *
 * handle(ptr, len) answers "n=<calls>:<INPUT UPPERCASED>". The call counter
 * lives in the instance, so a pooled instance shows it was reused. Inputs
 * "trap", "loop" and "fail" exercise the host's error mapping; "spin:<N>"
 * does N rounds of fixed work (a CPU-heavy call for benchmarks) and answers
 * "n=<calls>:<checksum>".
 *
 * Version 2 means one call into wasm per request: the host allocates the
 * input buffer once per instance (alloc), writes each request into it and
 * calls handle; the output buffer below belongs to this module, is reused by
 * the next call and is never freed by the host (no dealloc on the hot path). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(n) __attribute__((export_name(n)))

static uint32_t calls;
static uint8_t *out;     /* the response buffer, valid until the next call */
static uint32_t out_cap;

EXPORT("wmx_abi_version") int32_t wmx_abi_version(void) { return 2; }

EXPORT("alloc") void *wmx_alloc(uint32_t size) { return malloc(size ? size : 1); }

EXPORT("dealloc") void wmx_dealloc(void *ptr, uint32_t size) { (void)size; free(ptr); }

/* Make room for n response bytes, reusing the buffer of earlier calls. */
static int reserve(uint32_t n) {
    if (n <= out_cap) return 1;
    uint8_t *grown = realloc(out, n);
    if (!grown) return 0;
    out = grown;
    out_cap = n;
    return 1;
}

EXPORT("handle") int64_t wmx_handle(const uint8_t *in, uint32_t len) {
    calls++;
    if (len == 4 && memcmp(in, "trap", 4) == 0) __builtin_trap();
    if (len == 4 && memcmp(in, "loop", 4) == 0) {
        volatile uint64_t spin = 0;
        for (;;) spin++;
    }
    if (len == 4 && memcmp(in, "fail", 4) == 0) return -7;
    char prefix[48];
    int plen = snprintf(prefix, sizeof prefix, "n=%u:", (unsigned)calls);
    if (len > 5 && memcmp(in, "spin:", 5) == 0) {
        /* The input is not NUL-terminated (and the buffer holds older, longer requests): parse within len. */
        uint32_t rounds = 0;
        for (uint32_t i = 5; i < len && in[i] >= '0' && in[i] <= '9'; i++) rounds = rounds * 10 + (in[i] - '0');
        uint64_t h = 1469598103934665603ull;
        for (uint32_t i = 0; i < rounds; i++) h = (h ^ i) * 1099511628211ull;
        plen += snprintf(prefix + plen, sizeof prefix - (size_t)plen, "%llu", (unsigned long long)h);
        if (!reserve((uint32_t)plen)) return -1;
        memcpy(out, prefix, (size_t)plen);
        return ((int64_t)(uintptr_t)out << 32) | (int64_t)plen;
    }
    if (!reserve((uint32_t)plen + len)) return -1;
    memcpy(out, prefix, (size_t)plen);
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = in[i];
        out[plen + i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
    }
    return ((int64_t)(uintptr_t)out << 32) | (int64_t)(plen + len);
}
