#version 450
/* mask.comp: pass 1, invocation w takes DBP_TPW mask tiles of the chunk: their keep bits, and
 * their kept bits added to their samples' counts in kept (db_mask_item, db_passes.h).
 *
 * Completion: each invocation that took tiles adds one to kept[2 ns + 2] (ns = DBP_NSAMP; the
 * word after two spare ones, zeroed with the counts) once it has run to its end. lavapipe
 * does not stop an invocation whose loops have run 65535 iterations in all: from then on every
 * loop of it ends after its first iteration and the code after the loops still runs. So the
 * invocation proves it was not cut by a last loop that must go round twice (its bound reads
 * kept[2 ns + 3], zero, so that the compiler cannot count it away); the host compares the sum
 * with the invocations that took tiles and reruns the chunk with a smaller budget if it differs.
 * Only CPU devices cut loops: on the others (GPUs) specialization constant 1, DB_MASK_DONE, is 0
 * (engine/vulkan_device.c, vk_make_pipeline) and the pass has no completion count, so no atomic
 * on one word from every invocation; vk_mask_done then takes the pass as complete. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

layout(constant_id = 1) const uint DB_MASK_DONE = 1u; /* the completion count (0: none) */

void main()
{
    u64 items = (U64(DB_P(DBP_NTILES)) + U64(DB_P(DBP_TPW)) - 1ul) / U64(DB_P(DBP_TPW));
    u64 w0 = U64(gl_GlobalInvocationID.x);
    for (u64 w = w0; w < items; w += DB_STRIDE) db_mask_item(w);
    if (DB_MASK_DONE != 0u && w0 < items) {
        uint done = 2u * DB_P(DBP_NSAMP) + 2u, rounds = 0u;
        for (uint i = 0u; i < 2u + kept[done + 1u]; i++) rounds++;
        if (rounds == 2u) atomicAdd(kept[done], 1u);
    }
}
