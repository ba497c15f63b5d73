/* recurse: unbounded recursion with a stack frame the optimizer cannot drop,
 * so the C (shadow) stack in linear memory runs out, as a runaway recursive
 * guest does. wasm-ld places the stack below the data, so the overflow walks
 * off the bottom of linear memory: wasmtime sees an out-of-bounds store. */
#include <stdio.h>
#include <string.h>

/* The guest's stopping condition never holds (n only grows), but the compiler
 * cannot prove it: this is the usual shape of a recursion bug. */
int limit = -1;

int depth(volatile char *prev, int n) {
    volatile char frame[256];
    if (n == limit) return 0;
    memset((char *)frame, n & 0xff, sizeof frame);
    frame[0] = prev ? prev[0] : 0;
    return depth(frame, n + 1) + frame[1];
}

int main(void) {
    printf("recursing\n");
    return depth(0, 0);
}
