#version 450
/* count.comp: pass 2, one invocation per sample s the chunk touches: its kept bits in the
 * chunk, as a 64-bit partial in words kept[2s] (low) and kept[2s + 1] (high). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#define DB_LANG_GLSL

layout(local_size_x = 64) in;

/* db_passes.h reaches its buffers by these global names and GLSL checks every function of it,
 * so each pass declares all three before the include (binding numbers are shared by all passes) */
layout(std430, set = 0, binding = 0) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = 1) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = 2) buffer Counts { uint counts[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Kept { uint kept[]; };

#include "db_passes.h"

void main()
{
    u64 nsamp = U64(prm[DBP_NSAMP]);
    u64 stride = U64(gl_NumWorkGroups.x) * U64(gl_WorkGroupSize.x);
    for (u64 s = U64(gl_GlobalInvocationID.x); s < nsamp; s += stride) {
        u64 sum = db_count_sample(s);
        kept[IX(2ul * s)] = U32(sum);
        kept[IX(2ul * s + 1ul)] = U32(sum >> 32);
    }
}
