#version 450
/* fixup.comp: pass 3, fixup: the elements apply.comp left as x in y (bits of fixup, one per
 * element), exactly with db_apply_elem. Invocation f owns the 32 elements of fixup word f. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

layout(std430, set = 0, binding = DBB_Y) buffer Y { uint y[]; };

void main()
{
    u64 nwords = (U64(DB_P(DBP_GROUPS)) * U64(DB_P(DBP_EPW)) + 31ul) >> 5;
    bool f32 = DB_P(DBP_DTYPE) == DB_DTYPE_F32;
    for (u64 f = U64(gl_GlobalInvocationID.x); f < nwords; f += DB_STRIDE) {
        uint bits = fixup[IX(f)];
        for (uint b = 0u; bits != 0u; b++, bits >>= 1) {
            if ((bits & 1u) == 0u) continue;
            u64 k = 32ul * f + U64(b);
            if (f32) {
                y[IX(k)] = db_apply_elem(k, y[IX(k)]);
            } else {
                uint w = y[IX(k >> 1)], sh = uint(k & 1ul) * 16u;
                uint v = db_apply_elem(k, (w >> sh) & 0xFFFFu);
                y[IX(k >> 1)] = (w & ~(0xFFFFu << sh)) | (v << sh);
            }
        }
    }
}
