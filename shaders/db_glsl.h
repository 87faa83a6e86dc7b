/* db_glsl.h: what every pass shader declares before db_passes.h: GLSL reaches buffers by
 * global names and checks every function of an included file, so each shader declares all the
 * buffers db_passes.h names, with the binding numbers the host uses (db_params.h DBB_*).
 * The work-group size is specialization constant 0: the host sets it from the device's subgroup
 * size. Each shader enables the int64 and include extensions before including this. */
#define DB_LANG_GLSL

#include "db_params.h"

layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = DBB_PRM) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = DBB_MASK) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = DBB_KEPT) buffer Kept { uint kept[]; };
layout(std430, set = 0, binding = DBB_SCALES) buffer Scales { uint scales[]; };
layout(std430, set = 0, binding = DBB_FIXUP) buffer Fixup { uint fixup[]; };

#include "db_passes.h"

/* grid-stride loops: the host caps the group count at maxComputeWorkGroupCount[0] */
#define DB_STRIDE (U64(gl_NumWorkGroups.x) * U64(gl_WorkGroupSize.x))
