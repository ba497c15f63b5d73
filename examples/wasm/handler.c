/* handler: the direct export ABI (see docs/ABI.md). Built as a WASI reactor.
 *
 * handle(ptr, len) answers "n=<calls>:<INPUT UPPERCASED>". The call counter
 * lives in the instance, so a pooled instance shows it was reused. Inputs
 * "trap", "loop" and "fail" exercise the host's error mapping. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(n) __attribute__((export_name(n)))

static uint32_t calls;

EXPORT("alloc") void *wmx_alloc(uint32_t size) { return malloc(size ? size : 1); }

EXPORT("dealloc") void wmx_dealloc(void *ptr, uint32_t size) { (void)size; free(ptr); }

EXPORT("handle") int64_t wmx_handle(const uint8_t *in, uint32_t len) {
    calls++;
    if (len == 4 && memcmp(in, "trap", 4) == 0) __builtin_trap();
    if (len == 4 && memcmp(in, "loop", 4) == 0) {
        volatile uint64_t spin = 0;
        for (;;) spin++;
    }
    if (len == 4 && memcmp(in, "fail", 4) == 0) return -7;
    char prefix[24];
    int plen = snprintf(prefix, sizeof prefix, "n=%u:", (unsigned)calls);
    uint8_t *out = malloc((size_t)plen + len);
    if (!out) return -1;
    memcpy(out, prefix, (size_t)plen);
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = in[i];
        out[plen + i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
    }
    return ((int64_t)(uintptr_t)out << 32) | (int64_t)(plen + len);
}
