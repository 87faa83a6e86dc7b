#version 450
/* mask.comp: pass 1, invocation w takes DBP_TPW mask tiles of the chunk: their keep bits, and
 * their kept bits added to their samples' counts in kept (db_mask_item, db_passes.h). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    u64 items = (U64(prm[DBP_NTILES]) + U64(prm[DBP_TPW]) - 1ul) / U64(prm[DBP_TPW]);
    for (u64 w = U64(gl_GlobalInvocationID.x); w < items; w += DB_STRIDE) db_mask_item(w);
}
