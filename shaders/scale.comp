#version 450
/* scale.comp: pass 2b for a job of one chunk in compat none, so that the apply pass needs no
 * trip to the host: TOTAL 1, one invocation: K (db_total_kept); TOTAL 0, one invocation per sample:
 * its scale bits (db_scale_sample). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
#if TOTAL
    if (gl_GlobalInvocationID.x == 0u) db_total_kept(prm[DBP_NSAMP]);
#else
    for (u64 s = U64(gl_GlobalInvocationID.x); s < U64(prm[DBP_NSAMP]); s += DB_STRIDE) db_scale_sample(uint(s));
#endif
}
