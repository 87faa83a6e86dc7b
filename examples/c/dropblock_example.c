/* One DropBlock2D job through dropblockd, or in process with --local [BACKENDS].
 *   cc dropblock_example.c $(pkg-config --cflags --libs dropblock) -o dropblock_example
 *   ./dropblock_example [SOCKET]              (default: $DROPBLOCK_SOCKET, else the default path)
 *   ./dropblock_example --local [cpu,opencl,vulkan] */
#include <dropblock/dropblock.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    int local = argc > 1 && strcmp(argv[1], "--local") == 0;
    dropblock_t *db;
    char err[512];
    int rc;
    if (local) {
        dropblock_local_options o = {argc > 2 ? argv[2] : NULL, NULL}; /* NULL: every backend */
        rc = dropblock_open_local(&db, &o, err, sizeof err);
    } else {
        rc = dropblock_connect(&db, argc > 1 ? argv[1] : NULL, err, sizeof err);
    }
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    } /* e.g. no daemon: how to start one */

    dropblock_params p;
    dropblock_params_init(&p); /* rate 0.1, block 7, NCHW f32, global scale */
    p.shape[0] = 1;
    p.shape[1] = 2;
    p.shape[2] = 14;
    p.shape[3] = 14;
    p.seed = 4;
    p.stream = 0; /* a new stream per training step */
    float *x;     /* shared memory the daemon maps too */
    if (dropblock_alloc_msg(db, dropblock_tensor_bytes(&p), (void **)&x, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        dropblock_close(db);
        return 1;
    }
    for (uint64_t i = 0; i < dropblock_numel(&p); i++) x[i] = 1.0f; /* the activations */
    dropblock_result r;
    rc = dropblock_run(db, &p, x, x, NULL, "auto", &r); /* in place */
    if (rc) fprintf(stderr, "%s: %s\n", dropblock_strerror(rc), r.message);
    else
        printf("%s kept %llu of %llu, scale 0x%08x, x[0] %g\n", r.device, (unsigned long long)r.kept,
               (unsigned long long)r.total, (unsigned)r.scale_bits, (double)x[0]);
    dropblock_free(db, x);
    dropblock_close(db);
    return rc ? 1 : 0;
}
