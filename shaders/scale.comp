#version 450
/* scale.comp: pass 2b for a job of one chunk in compat none, so that the apply pass needs no
 * trip to the host: invocation s of the samples, db_scale_item. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    for (u64 s = U64(gl_GlobalInvocationID.x); s < U64(DB_P(DBP_NSAMP)); s += DB_STRIDE) db_scale_item(uint(s));
}
