#version 450
/* count.comp: after scatter.comp, invocation w counts the kept bits of mask words w DBP_CKW ..
 * into their samples' counts in kept; in a fused job (DBP_FUSED) the last item to finish (a
 * ticket at kept[2 DBP_NSAMP], zeroed with the counts) makes the scales (db_count_item). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    u64 words = ((U64(DB_P(DBP_NELEM)) | (U64(DB_P(DBP_NELEM + 1)) << 32)) + 31ul) >> 5;
    for (u64 w = U64(gl_GlobalInvocationID.x); w * U64(DB_P(DBP_CKW)) < words; w += DB_STRIDE) db_count_item(w);
}
