/* check.h: what the C unit tests share. CHECK counts a condition as passed or failed and prints
 * a failure with its function, line and a printf-style message (the including test defines
 * `static int passed, failed;`); tu_params makes a job's parameters from its shape, rate and
 * block, the rest at dropblock_params_init's defaults. */
#ifndef DROPBLOCK_TESTS_CHECK_H
#define DROPBLOCK_TESTS_CHECK_H

#include <dropblock/dropblock.h>
#include <stdint.h>
#include <stdio.h>

#define CHECK(cond, ...) \
    do { \
        if (cond) passed++; \
        else { \
            failed++; \
            printf("FAIL %s:%d: ", __func__, __LINE__); \
            printf(__VA_ARGS__); \
            printf("\n"); \
        } \
    } while (0)

static inline dropblock_params tu_params(uint64_t n, uint64_t c, uint64_t h, uint64_t w, float rate, uint64_t bh,
                                         uint64_t bw)
{
    dropblock_params p;
    dropblock_params_init(&p);
    p.shape[0] = n;
    p.shape[1] = c;
    p.shape[2] = h;
    p.shape[3] = w;
    p.rate = rate;
    p.block[0] = bh;
    p.block[1] = bw;
    return p;
}

#endif
