/* db_portable.h: the subset of C, OpenCL C and GLSL (with 64-bit integers) that the pass
 * sources are written in, so every API runs one source per pass. The including file defines
 * DB_LANG_C, DB_LANG_CL or DB_LANG_GLSL first. */
#ifndef DB_PORTABLE_H
#define DB_PORTABLE_H

#if defined(DB_LANG_GLSL)
#define u32 uint
#define u64 uint64_t
#define i64 int64_t
#define U32(x) uint(x)
#define U64(x) uint64_t(x)
#define I64(x) int64_t(x)
#define AS_F32(x) uintBitsToFloat(x)
#define AS_U32(x) floatBitsToUint(x)
#define POPCOUNT(x) U32(bitCount(x))
#define u32x4 uvec4
#define MAKE_U32X4(a, b, c, d) uvec4(a, b, c, d)
#define DBFN
#define PRECISE precise
/* GLSL indexes arrays with 32-bit integers only; chunks keep every index below 2^32 */
#define IX(x) uint(x)
#elif defined(DB_LANG_CL)
#define u32 uint
#define u64 ulong
#define i64 long
#define U32(x) ((uint)(x))
#define U64(x) ((ulong)(x))
#define I64(x) ((long)(x))
#define AS_F32(x) as_float(x)
#define AS_U32(x) as_uint(x)
#define POPCOUNT(x) popcount(x)
#define u32x4 uint4
#define MAKE_U32X4(a, b, c, d) ((uint4)((a), (b), (c), (d)))
#define DBFN
#define PRECISE
#define IX(x) (x)
#elif defined(DB_LANG_C)
#include <stdint.h>
#include <string.h>
#define u32 uint32_t
#define u64 uint64_t
#define i64 int64_t
#define U32(x) ((uint32_t)(x))
#define U64(x) ((uint64_t)(x))
#define I64(x) ((int64_t)(x))
static inline float db_as_f32(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t db_as_u32(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
#define AS_F32(x) db_as_f32(x)
#define AS_U32(x) db_as_u32(x)
#define POPCOUNT(x) U32(__builtin_popcount(x))
typedef struct { uint32_t x, y, z, w; } db_u32x4;
#define u32x4 db_u32x4
#define MAKE_U32X4(a, b, c, d) ((db_u32x4){(a), (b), (c), (d)})
#define DBFN static inline
#define PRECISE volatile
#define IX(x) (x)
#else
#error "define DB_LANG_C, DB_LANG_CL or DB_LANG_GLSL"
#endif

#endif
