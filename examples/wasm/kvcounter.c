/* kvcounter: a WASI command that increments a counter kept in the host
 * key-value store. Namespace from $KV_NS (default "counter"), key from
 * argv[1] (default "hits"). Prints the new value; exits 3 when the host
 * denies the namespace. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmatrix.h"

int main(int argc, char **argv) {
    const char *ns = getenv("KV_NS");
    if (!ns) ns = "counter";
    const char *key = argc > 1 ? argv[1] : "hits";
    char buf[32] = {0};
    int32_t n = wmx_kv_get(ns, strlen(ns), key, strlen(key), (uint8_t *)buf, sizeof buf - 1);
    if (n == WMX_EDENIED) {
        fprintf(stderr, "kv namespace %s denied\n", ns);
        return 3;
    }
    long value = 0;
    if (n >= 0 && n < (int32_t)sizeof buf) {
        buf[n] = 0;
        value = strtol(buf, NULL, 10);
    }
    value++;
    int len = snprintf(buf, sizeof buf, "%ld", value);
    if (wmx_kv_set(ns, strlen(ns), key, strlen(key), (uint8_t *)buf, (size_t)len) < 0) {
        fprintf(stderr, "kv_set failed\n");
        return 1;
    }
    char msg[64];
    int mlen = snprintf(msg, sizeof msg, "counter %s=%ld", key, value);
    wmx_log(WMX_LOG_INFO, msg, (size_t)mlen);
    printf("%ld\n", value);
    return 0;
}
