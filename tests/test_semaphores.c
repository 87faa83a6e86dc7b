/* test_semaphores: jobs ordered by timeline semaphores (issue 13, docs/protocol.md), at the
 * engine. On every Vulkan device with timeline semaphores: the host's signal and wait (values
 * only rise, a wait times out saying where the semaphore is); a job that waits does not start
 * (its output untouched, its signal not set) until the value is signalled from another thread,
 * then runs bit for bit as the CPU reference and raises its signal; the same on device memory
 * (exported and imported by this test, tests/vk_import.c) and in several chunks (4 KiB buffers:
 * the wait on the first submission of many); a job that fails, or whose wait times out, still
 * raises its signal and writes nothing; a semaphore freed under a waiting job ends the wait; a
 * signal that would not raise the value fails the job. Export as an fd: where the driver has
 * VK_KHR_external_semaphore_fd a descriptor, else a refusal naming the extension (lavapipe).
 *   test_semaphores [--require vulkan] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"
#include "reference.h"
#include "vk_import.h"

static int passed, failed;

#define N 2
#define C 3
#define H 17
#define W 13
#define NUMEL (N * C * H * W)
#define POISON 0x7fc0dead

struct job {
    struct db_engine *e;
    int dev;
    dropblock_params p;
    const float *x;
    float *y;
    const struct db_job_mem *mem;
    struct db_job_sync sync;
    dropblock_result res;
    int rc;
    volatile int done;
};

static void *job_main(void *arg)
{
    struct job *j = arg;
    j->rc = db_engine_run_sync(j->e, j->dev, &j->p, j->x, j->y, NULL, j->mem, &j->sync, &j->res);
    j->done = 1;
    return NULL;
}

static uint64_t value_of(struct db_semaphore *s)
{
    uint64_t v = 0;
    char msg[200];
    if (db_engine_semaphore_value(s, &v, msg, sizeof msg)) printf("value: %s\n", msg);
    return v;
}

static int poisoned(const void *y)
{
    for (int i = 0; i < NUMEL; i++) {
        uint32_t b;
        memcpy(&b, (const char *)y + 4 * i, 4);
        if (b != POISON) return 0;
    }
    return 1;
}

static void poison(void *y)
{
    const uint32_t b = POISON;
    for (int i = 0; i < NUMEL; i++) memcpy((char *)y + 4 * i, &b, 4);
}

/* y equals the CPU reference's output of p on x, bit for bit, with its K and S */
static int exact(const dropblock_params *p, const float *x, const void *y, const dropblock_result *res)
{
    static float want[NUMEL];
    dropblock_result wr;
    if (db_reference_run(p, x, want, NULL, NULL, &wr)) return 0;
    return !memcmp(want, y, sizeof want) && wr.kept == res->kept && wr.total == res->total;
}

/* The host's own signals and waits. */
static void host_side(struct db_engine *e, int dev, const char *id)
{
    struct db_semaphore *s;
    struct db_semaphore_info si;
    char msg[300];
    int rc = db_engine_semaphore_create(e, dev, 0, &s, &si, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK && si.fd == -1, "%s: create: %d %s", id, rc, msg);
    if (rc) return;
    CHECK(value_of(s) == 0, "%s: initial value", id);
    rc = db_engine_semaphore_signal(s, 5, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK && value_of(s) == 5, "%s: signal 5: %d %s", id, rc, msg);
    rc = db_engine_semaphore_signal(s, 5, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "at 5 already") && value_of(s) == 5, "%s: signal 5 again: %d %s", id,
          rc, msg);
    rc = db_engine_semaphore_wait(s, 4, 1000, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK, "%s: wait for 4 at 5: %d %s", id, rc, msg);
    rc = db_engine_semaphore_wait(s, 6, 60, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_ETIMEDOUT && strstr(msg, "did not reach 6 within 60 ms (it is at 5)"),
          "%s: wait for 6: %d %s", id, rc, msg);
    db_engine_semaphore_free(s);
}

/* A job that waits for a (from another thread) and raises b; mem: where its tensors are (NULL:
 * host memory x, y). */
static void ordered_job(struct db_engine *e, int dev, const char *id, const char *label, const float *x, void *y,
                        const float *xdev, float *ydev, const struct db_job_mem *mem)
{
    struct db_semaphore *a, *b;
    struct db_semaphore_info si;
    char msg[300];
    if (db_engine_semaphore_create(e, dev, 0, &a, &si, msg, sizeof msg) ||
        db_engine_semaphore_create(e, dev, 0, &b, &si, msg, sizeof msg)) {
        CHECK(0, "%s: create: %s", id, msg);
        return;
    }
    struct job j = {.e = e, .dev = dev, .x = xdev, .y = ydev, .mem = mem};
    j.p = tu_params(N, C, H, W, 0.25f, 3, 3);
    j.sync = (struct db_job_sync){.wait = a, .wait_value = 1, .signal = b, .signal_value = 7, .wait_timeout_ms = 20000};
    poison(y);
    pthread_t t;
    pthread_create(&t, NULL, job_main, &j);
    usleep(300 * 1000);
    CHECK(!j.done && poisoned(y) && value_of(b) == 0, "%s, %s: the job ran before its wait was signalled", id, label);
    int rc = db_engine_semaphore_signal(a, 1, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK, "%s: signal: %s", id, msg);
    pthread_join(t, NULL);
    CHECK(j.rc == DROPBLOCK_OK, "%s, %s: job: %d %s", id, label, j.rc, j.res.message);
    CHECK(value_of(b) == 7, "%s, %s: the signal after the job: %llu", id, label, (unsigned long long)value_of(b));
    CHECK(exact(&j.p, x, y, &j.res), "%s, %s: the output differs from the CPU reference", id, label);
    printf("device %s, %s: waited for its semaphore, ran exact, signalled\n", id, label);

    /* a failing job (rate 2) still signals, writing nothing */
    j.p = tu_params(N, C, H, W, 2.0f, 3, 3);
    j.sync = (struct db_job_sync){.wait = a, .wait_value = 1, .signal = b, .signal_value = 8, .wait_timeout_ms = 1000};
    poison(y);
    job_main(&j);
    CHECK(j.rc == DROPBLOCK_EINVAL && value_of(b) == 8 && poisoned(y), "%s, %s: a refused job: %d %s, b at %llu", id,
          label, j.rc, j.res.message, (unsigned long long)value_of(b));
    /* a wait that times out: nothing runs, the signal is set */
    j.p = tu_params(N, C, H, W, 0.25f, 3, 3);
    j.sync = (struct db_job_sync){.wait = a, .wait_value = 2, .signal = b, .signal_value = 9, .wait_timeout_ms = 100};
    job_main(&j);
    CHECK(j.rc == DROPBLOCK_EUNAVAILABLE &&
              strstr(j.res.message, "wait: the semaphore did not reach 2 within 100 ms") && value_of(b) == 9 &&
              poisoned(y),
          "%s, %s: a wait that timed out: %d %s", id, label, j.rc, j.res.message);
    /* a signal that would not raise b: the job ran, but fails saying so */
    j.sync = (struct db_job_sync){.signal = b, .signal_value = 9};
    job_main(&j);
    CHECK(j.rc == DROPBLOCK_EINVAL && strstr(j.res.message, "signal: the semaphore is at 9 already"),
          "%s, %s: a signal not raising: %d %s", id, label, j.rc, j.res.message);
    /* freed by its owner while a job waits: the wait ends */
    j.sync = (struct db_job_sync){.wait = a, .wait_value = 50, .wait_timeout_ms = 20000};
    poison(y);
    j.done = 0;
    pthread_create(&t, NULL, job_main, &j);
    usleep(100 * 1000);
    db_engine_semaphore_free(a);
    pthread_join(t, NULL);
    CHECK(j.rc == DROPBLOCK_EUNAVAILABLE && strstr(j.res.message, "freed while a job waited") && poisoned(y),
          "%s, %s: freed under a wait: %d %s", id, label, j.rc, j.res.message);
    db_engine_semaphore_free(b);
}

static void on_device(struct db_engine *e, size_t d, const char *label, const float *x, float *y)
{
    const dropblock_device_info *info = db_engine_device(e, d);
    char why[300];
    ordered_job(e, (int)d, info->id, label, x, y, x, y, NULL);
    if (!db_engine_can_export(e, d, why, sizeof why)) return;
    /* in device memory, imported here */
    void *h;
    struct db_export_info xi;
    const uint64_t bytes = NUMEL * 4;
    if (db_engine_export_alloc(e, (int)d, 2 * bytes, &h, &xi, why, sizeof why)) {
        CHECK(0, "%s: export: %s", info->id, why);
        return;
    }
    struct vki *v = vki_open(xi.device_uuid, why, sizeof why);
    char *map = NULL;
    void *imp = v ? vki_import(v, xi.fd, xi.allocation_size, xi.memory_type_index, xi.dedicated, xi.size, (void **)&map,
                               why, sizeof why)
                  : NULL;
    CHECK(imp != NULL, "%s: import: %s", info->id, why);
    if (imp) {
        memcpy(map, x, bytes);
        const struct db_job_mem mem = {.dev_in = h, .dev_out = h, .in_off = 0, .out_off = bytes};
        char l2[96];
        snprintf(l2, sizeof l2, "%s, device memory", label);
        /* the output is read from the mapping: y is a view of it */
        ordered_job(e, (int)d, info->id, l2, x, map + bytes, NULL, NULL, &mem);
        vki_release(v, imp);
    } else close(xi.fd);
    vki_close(v);
    db_engine_export_free(e, (int)d, h);
}

static void refusals(struct db_engine *e, size_t vk)
{
    char msg[300];
    struct db_semaphore *s = NULL, *cpu_sem = NULL;
    struct db_semaphore_info si;
    for (size_t d = 0; d < db_engine_device_count(e); d++) {
        const dropblock_device_info *info = db_engine_device(e, d);
        if (strcmp(info->api, "cpu")) continue;
        int rc = db_engine_semaphore_create(e, (int)d, 0, &cpu_sem, &si, msg, sizeof msg);
        CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "has no timeline semaphores"), "%s: create: %d %s", info->id, rc,
              msg);
        /* a semaphore of the Vulkan device named by a job on the CPU device */
        if (db_engine_semaphore_create(e, (int)vk, 0, &s, &si, msg, sizeof msg)) continue;
        static float x[NUMEL], y[NUMEL];
        struct job j = {.e = e, .dev = (int)d, .x = x, .y = y};
        j.p = tu_params(N, C, H, W, 0.25f, 3, 3);
        j.sync = (struct db_job_sync){.wait = s, .wait_value = 1, .wait_timeout_ms = 100};
        job_main(&j);
        CHECK(j.rc == DROPBLOCK_EINVAL && strstr(j.res.message, "wait: the semaphore is of device") &&
                  strstr(j.res.message, info->id),
              "%s: a semaphore of another device: %d %s", info->id, j.rc, j.res.message);
        db_engine_semaphore_free(s);
    }
    /* exported: a descriptor where the driver can, else the refusal names what is missing */
    const char *id = db_engine_device(e, vk)->id;
    int rc = db_engine_semaphore_create(e, (int)vk, 1, &s, &si, msg, sizeof msg);
    if (db_engine_can_semaphore(e, vk, 1, NULL, 0)) {
        CHECK(rc == DROPBLOCK_OK && si.fd >= 0 && !strcmp(si.handle_type, "opaque_fd"), "%s: exported: %d %s", id, rc,
              msg);
        if (!rc) {
            printf("device %s: a timeline semaphore exported as opaque fd %d\n", id, si.fd);
            close(si.fd);
            db_engine_semaphore_free(s);
        }
    } else {
        CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "cannot export semaphores"), "%s: export refused: %d %s", id, rc,
              msg);
        printf("device %s: no exported semaphore (%s)\n", id, msg);
    }
}

static struct db_engine *open_engine(void)
{
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, "cpu,vulkan", NULL, "", NULL, NULL, msg, sizeof msg)) {
        fprintf(stderr, "no engine: %s\n", msg);
        return NULL;
    }
    return e;
}

int main(int argc, char **argv)
{
    int require = argc == 3 && !strcmp(argv[1], "--require") && strstr(argv[2], "vulkan");
    static float x[NUMEL], y[NUMEL];
    uint64_t r = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < NUMEL; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        x[i] = (float)(r >> 40) / (float)(1u << 24) - 0.5f;
    }
    int seen = 0;
    for (int pass = 0; pass < 2; pass++) {
        /* the second engine: 4 KiB buffers, so a job is several submissions (the cap is read at open) */
        if (pass) setenv("DROPBLOCK_VULKAN_MAX_BUFFER", "4096", 1);
        struct db_engine *e = open_engine();
        if (!e) return 1;
        for (size_t d = 0; d < db_engine_device_count(e); d++) {
            if (strcmp(db_engine_device(e, d)->api, "vulkan")) continue;
            char why[300];
            if (!db_engine_can_semaphore(e, d, 0, why, sizeof why)) {
                printf("device %s: %s\n", db_engine_device(e, d)->id, why);
                continue;
            }
            seen++;
            if (!pass) host_side(e, (int)d, db_engine_device(e, d)->id);
            on_device(e, d, pass ? "4 KiB buffers" : "one chunk", x, y);
            if (!pass) refusals(e, d);
        }
        db_engine_close(e);
    }
    if (!seen) {
        printf("no Vulkan device with timeline semaphores%s\n", require ? "" : ": skipped");
        if (!require) return 77;
        failed++;
    }
    printf("test_semaphores: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
