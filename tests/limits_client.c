/* limits_client.c: libdropblock's refusals and timeouts, driven by tests/test_limits.py:
 *   limits_client alloc SOCKET|local BYTES          dropblock_alloc_msg of BYTES
 *   limits_client connect SOCKET TIMEOUT_MS         dropblock_connect_opts (connect + hello)
 *   limits_client run SOCKET TIMEOUT_MS JOB_MS      connect, alloc 1x1x4x4 f32, dropblock_run
 * Prints one JSON line {"rc": NAME, "ms": elapsed, "message": ...}; exit 0 when the call returned
 * (whatever it returned), 2 on bad usage. */
#include <dropblock/dropblock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void report(int rc, double t0, const char *msg)
{
    printf("{\"rc\": \"%s\", \"ms\": %.1f, \"message\": \"", rc ? dropblock_error_name(rc) : "ok", now_ms() - t0);
    for (const char *p = msg; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20) printf("\\u%04x", (unsigned char)*p);
        else putchar(*p);
    }
    printf("\"}\n");
}

static int open_handle(const char *where, int timeout_ms, int job_ms, dropblock_t **h, char *msg, size_t len)
{
    if (!strcmp(where, "local")) {
        dropblock_local_options lo = {"cpu", ""};
        return dropblock_open_local(h, &lo, msg, len);
    }
    dropblock_connect_options o;
    dropblock_connect_options_init(&o);
    o.socket_path = where;
    o.timeout_ms = timeout_ms;
    o.job_timeout_ms = job_ms;
    return dropblock_connect_opts(h, &o, msg, len);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: limits_client alloc|connect|run SOCKET|local ARG [JOB_MS]\n");
        return 2;
    }
    char msg[512] = "";
    dropblock_t *h = NULL;
    double t0 = now_ms();
    int rc;
    if (!strcmp(argv[1], "alloc")) {
        rc = open_handle(argv[2], DROPBLOCK_DEFAULT_TIMEOUT_MS, -1, &h, msg, sizeof msg);
        if (!rc) {
            void *p = NULL;
            t0 = now_ms();
            rc = dropblock_alloc_msg(h, (size_t)strtoull(argv[3], NULL, 10), &p, msg, sizeof msg);
            if (!rc) dropblock_free(h, p);
        }
    } else if (!strcmp(argv[1], "connect")) {
        rc = open_handle(argv[2], atoi(argv[3]), -1, &h, msg, sizeof msg);
    } else if (!strcmp(argv[1], "run") && argc == 5) {
        rc = open_handle(argv[2], atoi(argv[3]), atoi(argv[4]), &h, msg, sizeof msg);
        void *x = NULL;
        if (!rc) rc = dropblock_alloc_msg(h, 64, &x, msg, sizeof msg);
        if (!rc) {
            dropblock_params p;
            dropblock_params_init(&p);
            p.shape[0] = p.shape[1] = 1;
            p.shape[2] = p.shape[3] = 4;
            p.block[0] = p.block[1] = 1;
            dropblock_result res;
            t0 = now_ms();
            rc = dropblock_run(h, &p, x, x, NULL, NULL, &res);
            snprintf(msg, sizeof msg, "%s", res.message);
        }
    } else {
        fprintf(stderr, "limits_client: unknown command %s\n", argv[1]);
        return 2;
    }
    report(rc, t0, msg);
    dropblock_close(h);
    return 0;
}
