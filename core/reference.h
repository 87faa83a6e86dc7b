/* reference.h: the CPU reference of docs/semantics.md, the oracle of every test and the built-in CPU
 * backend. It follows the spec literally (candidates, blocks, float32 steps) and shares with the
 * GPU path only gamma/threshold and the exact S/K, which committed vectors check. */
#ifndef DROPBLOCK_CORE_REFERENCE_H
#define DROPBLOCK_CORE_REFERENCE_H

#include <dropblock/dropblock.h>

/* Runs a request on the CPU. in and out may alias exactly (in place); mask may be NULL.
 * scales, if not NULL, receives the N per-sample scale bits. Returns 0 or a DROPBLOCK_E* code
 * with res->message set. */
int db_reference_run(const dropblock_params *p, const void *in, void *out, void *mask, uint32_t *scales,
                     dropblock_result *res);

/* tf.random.stateless_uniform(n values, seed=[s0, s1]) as float32 bits (docs/semantics.md,
 * "Fixed test vectors"). */
void db_tf_uniform(uint64_t s0, uint64_t s1, uint64_t n, uint32_t *out);

/* The tf-uniform input of dropblock_ref.py: n values rounded to the dtype, in physical order.
 * Returns DROPBLOCK_EEXHAUSTED without host memory for it. */
int db_fill_tf_uniform(dropblock_dtype t, uint64_t s0, uint64_t s1, uint64_t n, void *buf);

#endif
