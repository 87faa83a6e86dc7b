#version 450
/* exact.comp: pass 3, exact: elements from DBP_GROUPS * DBP_EPW to the end of the chunk with
 * db_apply_elem (the fast pass's tail, or the whole chunk for compat keras_cv). f32: one
 * element an invocation; f16/bf16: the two of one word (no 16-bit storage needed), an odd
 * chunk's padding half kept as it was in x. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

layout(std430, set = 0, binding = DBB_X) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uint y[]; };

void main()
{
    u64 nelem = DB_PRM64(DBP_NELEM), k0 = U64(DB_P(DBP_GROUPS)) * U64(DB_P(DBP_EPW));
    if (DB_P(DBP_DTYPE) == DB_DTYPE_F32) {
        for (u64 k = k0 + U64(gl_GlobalInvocationID.x); k < nelem; k += DB_STRIDE) y[IX(k)] = db_apply_elem(k, x[IX(k)]);
    } else {
        u64 words = (nelem + 1ul) >> 1;
        for (u64 q = (k0 >> 1) + U64(gl_GlobalInvocationID.x); q < words; q += DB_STRIDE) {
            uint xw = x[IX(q)];
            uint lo = db_apply_elem(2ul * q, xw & 0xFFFFu);
            uint hi = 2ul * q + 1ul < nelem ? db_apply_elem(2ul * q + 1ul, xw >> 16) : xw >> 16;
            y[IX(q)] = lo | (hi << 16);
        }
    }
}
