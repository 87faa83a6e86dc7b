/* db_glsl.h: what every pass shader declares before db_passes.h: GLSL reaches buffers by
 * global names and checks every function of an included file, so each shader declares all the
 * buffers db_passes.h names, with the binding numbers the host uses (db_params.h DBB_*).
 * The work-group size is specialization constant 0: the host sets it from the device's subgroup
 * size. Each shader enables the int64 and include extensions before including this. */
#define DB_LANG_GLSL

#include "db_params.h"

layout(local_size_x_id = 0) in;

/* the parameter words in a uniform block (std140: an array of uvec4s, 16 bytes an element),
 * read through DB_P: every index is a constant, so each read is one word of the block, which
 * devices keep in a constant cache or in registers */
layout(std140, set = 0, binding = DBB_PRM) uniform Prm { uvec4 prm4[DB_PRM_VEC4S]; };
#define DB_P(i) prm4[(i) >> 2][(i)&3]
layout(std430, set = 0, binding = DBB_MASK) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = DBB_KEPT) buffer Kept { uint kept[]; };
layout(std430, set = 0, binding = DBB_SCALES) buffer Scales { uint scales[]; };
layout(std430, set = 0, binding = DBB_FIXUP) buffer Fixup { uint fixup[]; };

#include "db_passes.h"

/* grid-stride loops: the host caps the group count at maxComputeWorkGroupCount[0]. The 64-bit
 * product is made at run time (umulExtended): converting the specialization constant
 * gl_WorkGroupSize.x to 64 bits would be a specialization-constant UConvert, which SPIR-V before
 * 1.4 allows only with the Kernel capability (the validation layers reject such a module) */
u64 db_stride()
{
    uint hi, lo;
    umulExtended(gl_NumWorkGroups.x, gl_WorkGroupSize.x, hi, lo);
    return (U64(hi) << 32) | U64(lo);
}
#define DB_STRIDE db_stride()
