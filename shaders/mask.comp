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
 * with the invocations that took tiles and reruns the chunk with a smaller budget if it differs. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    u64 items = (U64(prm[DBP_NTILES]) + U64(prm[DBP_TPW]) - 1ul) / U64(prm[DBP_TPW]);
    u64 w0 = U64(gl_GlobalInvocationID.x);
    for (u64 w = w0; w < items; w += DB_STRIDE) db_mask_item(w);
    if (w0 < items) {
        uint done = 2u * prm[DBP_NSAMP] + 2u, rounds = 0u;
        for (uint i = 0u; i < 2u + kept[done + 1u]; i++) rounds++;
        if (rounds == 2u) atomicAdd(kept[done], 1u);
    }
}
