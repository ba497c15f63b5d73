/* loop: never returns. The host's epoch deadline (or fuel) must stop it. */
#include <stdint.h>

int main(void) {
    volatile uint64_t spin = 0;
    for (;;) spin++;
}
