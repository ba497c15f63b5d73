/* membomb: grabs and touches 1 MiB blocks until allocation fails, reports how
 * far it got on stderr, then aborts (a trap), as an out-of-memory guest does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kept in a global the optimizer must honour, so the blocks are really used. */
char *volatile last_block;

int main(void) {
    size_t mib = 0;
    for (;;) {
        char *block = malloc(1 << 20);
        if (!block) break;
        memset(block, 0xAB, 1 << 20);
        last_block = block;
        mib++;
    }
    fprintf(stderr, "membomb: allocation failed after %zu MiB\n", mib);
    abort();
}
