/* test_cases.h: the case matrix every backend is checked on, and the comparison with the CPU
 * reference (itself checked against dropblock_ref.py vectors by test_vectors). */
#ifndef DROPBLOCK_TEST_CASES_H
#define DROPBLOCK_TEST_CASES_H

#include <dropblock/dropblock.h>
#include <stddef.h>

#define TEST_CASES_MAX 512

struct test_case {
    char name[128];
    dropblock_params p;
    uint64_t s0, s1; /* tf-uniform input seed */
    int specials;    /* 1: overwrite some inputs with NaN, inf, -0, subnormals, huge values;
                      * 2: every 16-bit word in turn (f32: as the upper half) */
};

/* Fills the matrix; returns the number of cases. */
int test_cases_matrix(struct test_case *out, int cap);

/* A backend under test: runs p on in -> out (distinct buffers), mask may be NULL. */
typedef int (*test_runner)(void *ctx, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                           dropblock_result *res);

/* Runs the case through runner and the reference; 1 if output bits, mask, K, S and scale bits
 * all agree (or both reject it with the same code), else 0 with why set. */
int test_case_compare(const struct test_case *tc, test_runner runner, void *ctx, char *why, size_t len);

/* The input of a case (tf-uniform of its seed, with specials applied); caller frees. */
void *test_case_input(const struct test_case *tc);

#endif
