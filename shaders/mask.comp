#version 450
/* mask.comp: pass 1, one invocation per mask tile g of the chunk: its keep bits, and its kept
 * bits added to its sample's count in kept (db_mask_tile, db_passes.h). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    u64 ntiles = U64(prm[DBP_NTILES]);
    for (u64 g = U64(gl_GlobalInvocationID.x); g < ntiles; g += DB_STRIDE) db_mask_tile(g);
}
