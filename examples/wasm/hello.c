/* hello: a WAGI-style WASI command. Echoes its argv, its environment and its
 * stdin to stdout. An argument "--exit=N" makes it exit with status N. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

int main(int argc, char **argv) {
    int status = 0;
    printf("hello from wasm\n");
    printf("argv:");
    for (int i = 1; i < argc; i++) {
        printf(" %s", argv[i]);
        if (strncmp(argv[i], "--exit=", 7) == 0) status = atoi(argv[i] + 7);
    }
    printf("\n");
    for (char **e = environ; e && *e; e++) printf("env: %s\n", *e);
    printf("stdin: ");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    printf("\n");
    return status;
}
