#version 450
/* mask.comp: pass 1, one invocation per mask row k of the chunk: counts[k] = kept bits of the
 * row, written with its keep words by db_mask_row (db_passes.h). */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#define DB_LANG_GLSL

layout(local_size_x = 64) in;

/* db_passes.h reaches its buffers by these global names and GLSL checks every function of it,
 * so each pass declares all three before the include (binding numbers are shared by all passes) */
layout(std430, set = 0, binding = 0) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = 1) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = 2) buffer Counts { uint counts[]; };

#include "db_passes.h"

void main()
{
    u64 nrows = DB_PRM64(DBP_NROWS);
    /* grid-stride: the host caps the group count at maxComputeWorkGroupCount[0] */
    u64 stride = U64(gl_NumWorkGroups.x) * U64(gl_WorkGroupSize.x);
    for (u64 k = U64(gl_GlobalInvocationID.x); k < nrows; k += stride) counts[IX(k)] = db_mask_row(k);
}
