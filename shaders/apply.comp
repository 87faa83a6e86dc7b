#version 450
/* apply.comp: pass 3, y = (x * scale) * keep for every element of the chunk, one source for
 * every dtype. x and y are arrays of 32-bit words (the host may bind one buffer to both, for
 * in place): for f32 an invocation handles one element, for f16/bf16 the two halves of one
 * word, so no two invocations write the same word and no 16-bit storage feature is needed. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#define DB_LANG_GLSL

layout(local_size_x = 64) in;

/* db_passes.h reaches its buffers by these global names and GLSL checks every function of it,
 * so each pass declares all three before the include (binding numbers are shared by all passes) */
layout(std430, set = 0, binding = 0) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = 1) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = 2) buffer Counts { uint counts[]; };
layout(std430, set = 0, binding = 4) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = 5) writeonly buffer Y { uint y[]; };
layout(std430, set = 0, binding = 6) readonly buffer Scales { uint scales[]; };

#include "db_passes.h"

/* element k of the chunk, with input bits xb (dtype-wide, in the low bits) */
u32 apply_one(u64 k, u32 xb)
{
    u32x4 loc = db_apply_locate(k);
    return db_apply_bits(xb, scales[loc.z], (mask[loc.x] >> loc.y) & 1u, prm[DBP_KERAS], prm[DBP_DTYPE]);
}

void main()
{
    u64 nelem = DB_PRM64(DBP_NELEM);
    u64 stride = U64(gl_NumWorkGroups.x) * U64(gl_WorkGroupSize.x);
    if (prm[DBP_DTYPE] == DB_DTYPE_F32) {
        for (u64 k = U64(gl_GlobalInvocationID.x); k < nelem; k += stride) y[IX(k)] = apply_one(k, x[IX(k)]);
    } else {
        u64 words = (nelem + 1ul) >> 1;
        for (u64 q = U64(gl_GlobalInvocationID.x); q < words; q += stride) {
            u32 xw = x[IX(q)];
            u32 lo = apply_one(2ul * q, xw & 0xFFFFu);
            /* an odd chunk's last word has one element: its upper half is padding */
            u32 hi = 2ul * q + 1ul < nelem ? apply_one(2ul * q + 1ul, xw >> 16) : 0u;
            y[IX(q)] = lo | (hi << 16);
        }
    }
}
