/* db_glsl.h: what every pass shader declares before db_passes.h: GLSL reaches buffers by
 * global names and checks every function of an included file, so each shader declares all the
 * buffers db_passes.h names, with the binding numbers the host uses (backend_vulkan.c B_*).
 * The work-group size is specialization constant 0: the host sets it from the device's subgroup
 * size. Each shader enables the int64 and include extensions before including this. */
#define DB_LANG_GLSL

layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = 1) buffer Mask { uint mask[]; };
layout(std430, set = 0, binding = 3) buffer Kept { uint kept[]; };
layout(std430, set = 0, binding = 6) buffer Scales { uint scales[]; };
layout(std430, set = 0, binding = 7) buffer Fixup { uint fixup[]; };

#include "db_passes.h"

/* grid-stride loops: the host caps the group count at maxComputeWorkGroupCount[0] */
#define DB_STRIDE (U64(gl_NumWorkGroups.x) * U64(gl_WorkGroupSize.x))
