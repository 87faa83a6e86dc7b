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
#define TO_F32(x) float(x)
#define FMAX(a, b) max(a, b)
#define u32x4 uvec4
#define MAKE_U32X4(a, b, c, d) uvec4(a, b, c, d)
#define DBFN
#define PRECISE precise
#define VPRECISE precise
/* GLSL indexes arrays with 32-bit integers only; chunks keep every index below 2^32 */
#define IX(x) uint(x)
#define ATOMIC_OR(arr, i, v) atomicOr(arr[IX(i)], (v))
#define ATOMIC_AND(arr, i, v) atomicAnd(arr[IX(i)], (v))
#define ATOMIC_LOAD(arr, i) atomicOr(arr[IX(i)], 0u)
#define ATOMIC_ADD(arr, i, v) atomicAdd(arr[IX(i)], (v))
#define DB_FENCE_GLOBAL() memoryBarrierBuffer()
/* index of the highest set bit of a nonzero u32 */
#define MSB32(x) U32(findMSB(x))
/* the fast apply's lane type: GPUs gain nothing from vectors inside an invocation */
#define DBV_T uint
#define DBV(x) uint(x)
#define DBV_AS_F(x) uintBitsToFloat(x)
#define DBV_AS_U(x) floatBitsToUint(x)
#define DBV_TO_F(x) float(x)
#define DBV_SEL(c, a, b) ((c) ? (a) : (b))
#define DBV_OR(a, b) ((a) || (b))
#define DBV_AND(a, b) ((a) && (b))
#define DBV_MIN(a, b) min(a, b)
#define DBV_MAX(a, b) max(a, b)
#define DBV_FLOAT float
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
#define TO_F32(x) ((float)(x))
#define FMAX(a, b) fmax(a, b)
#define u32x4 uint4
#define MAKE_U32X4(a, b, c, d) ((uint4)((a), (b), (c), (d)))
#define DBFN
#define PRECISE
#define VPRECISE
#define IX(x) (x)
#define ATOMIC_OR(arr, i, v) atomic_or(&arr[i], (v))
#define ATOMIC_AND(arr, i, v) atomic_and(&arr[i], (v))
/* a word others change by atomics in other bits: a volatile load (an idempotent atomic would
 * be a full fence on x86) suffices, the bits read being this work item's own */
#define ATOMIC_LOAD(arr, i) (*(volatile __global uint *)&arr[i])
#define ATOMIC_ADD(arr, i, v) atomic_add(&arr[i], (v))
#define DB_FENCE_GLOBAL() mem_fence(CLK_GLOBAL_MEM_FENCE)
#define MSB32(x) (31u - clz(x))
/* the fast apply's lane type: DB_VW 32-bit lanes (4, 8 or 16; the host passes -DDB_VW), so that
 * CPU devices get whole SIMD registers and GPUs 16-byte loads */
#ifndef DB_VW
#define DB_VW 4
#endif
#define DB_CAT_(a, b) a##b
#define DB_CAT(a, b) DB_CAT_(a, b)
#define DBV_T DB_CAT(uint, DB_VW)
#define DBV_FLOAT DB_CAT(float, DB_VW)
#define DBV(x) ((DBV_T)(x))
#define DBV_AS_F(x) DB_CAT(as_float, DB_VW)(x)
#define DBV_AS_U(x) DB_CAT(as_uint, DB_VW)(x)
#define DBV_TO_F(x) DB_CAT(convert_float, DB_VW)(x)
/* comparisons of vectors give -1/0 lanes, which select takes */
#define DBV_SEL(c, a, b) select((b), (a), (c))
#define DBV_OR(a, b) ((a) || (b))
#define DBV_AND(a, b) ((a) && (b))
#define DBV_MIN(a, b) min(a, b)
#define DBV_MAX(a, b) max(a, b)
/* vectors of tensor words: CPU devices (-DDB_VLOAD) may see tensors in the caller's memory
 * (CL_MEM_USE_HOST_PTR), aligned to their element only; GPUs get aligned vector loads */
#ifdef DB_VLOAD
#define DB_LOADV(p, q) DB_CAT(vload, DB_VW)((q), (p))
#define DB_STOREV(p, q, v) DB_CAT(vstore, DB_VW)((v), (q), (p))
#else
#define DB_LOADV(p, q) (((__global const DBV_T *)(p))[q])
#define DB_STOREV(p, q, v) (((__global DBV_T *)(p))[q] = (v))
#endif
#elif defined(DB_LANG_C)
#include <stdint.h>
#include <string.h>
#define u32 uint32_t
#define u64 uint64_t
#define i64 int64_t
#define U32(x) ((uint32_t)(x))
#define U64(x) ((uint64_t)(x))
#define I64(x) ((int64_t)(x))
static inline float db_as_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}
static inline uint32_t db_as_u32(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}
#define AS_F32(x) db_as_f32(x)
#define AS_U32(x) db_as_u32(x)
#ifdef __POPCNT__
#define POPCOUNT(x) U32(__builtin_popcount(x))
#else
/* without -mpopcnt __builtin_popcount is a call into libgcc: the mask pass counts every word */
static inline uint32_t db_popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    return (((x + (x >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24;
}
#define POPCOUNT(x) db_popcount32(x)
#endif
#define TO_F32(x) ((float)(x))
#define FMAX(a, b) ((a) > (b) ? (a) : (b))
typedef struct {
    uint32_t x, y, z, w;
} db_u32x4;
#define u32x4 db_u32x4
#define MAKE_U32X4(a, b, c, d) ((db_u32x4){(a), (b), (c), (d)})
#ifdef DB_C_VLANES
#define DBFN static inline __attribute__((always_inline))
#else
#define DBFN static inline
#endif
#define PRECISE volatile
/* with FLT_EVAL_METHOD 0 (x86-64 SSE, AArch64) and -ffp-contract=off a product is IEEE */
#define VPRECISE
#define IX(x) (x)
#ifdef DB_C_THREADS /* the CPU backend runs work items on several threads */
#define ATOMIC_OR(arr, i, v) __atomic_fetch_or(&arr[i], (v), __ATOMIC_RELAXED)
#define ATOMIC_AND(arr, i, v) __atomic_fetch_and(&arr[i], (v), __ATOMIC_RELAXED)
#define ATOMIC_LOAD(arr, i) __atomic_load_n(&arr[i], __ATOMIC_RELAXED)
#define ATOMIC_ADD(arr, i, v) __atomic_fetch_add(&arr[i], (v), __ATOMIC_RELAXED)
#define DB_FENCE_GLOBAL() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#else /* the test runs work items one after another */
#define DB_FENCE_GLOBAL() ((void)0)
#define ATOMIC_OR(arr, i, v) (arr[i] |= (v))
#define ATOMIC_AND(arr, i, v) (arr[i] &= (v))
#define ATOMIC_LOAD(arr, i) (arr[i])
#define ATOMIC_ADD(arr, i, v) db_c_add(&arr[i], (v))
static inline uint32_t db_c_add(uint32_t *p, uint32_t v)
{
    uint32_t old = *p;
    *p = old + v;
    return old;
}
#endif
#define MSB32(x) (31u - U32(__builtin_clz(x)))
#ifdef DB_C_VLANES
/* the CPU backend's apply (engine/apply_simd.c): DB_C_VLANES 32-bit lanes in GCC/Clang generic
 * vectors, which the file's -mavx2 or -mavx512f build maps onto registers; comparisons give
 * -1/0 lanes as in OpenCL */
typedef uint32_t db_vu32 __attribute__((vector_size(4 * DB_C_VLANES)));
typedef float db_vf32 __attribute__((vector_size(4 * DB_C_VLANES)));
#define DBV_T db_vu32
#define DBV(x) ((db_vu32){0} + (uint32_t)(x))
#define DBV_AS_F(x) ((db_vf32)(x))
#define DBV_AS_U(x) ((db_vu32)(x))
#define DBV_TO_F(x) __builtin_convertvector((x), db_vf32)
#define DBV_SEL(c, a, b) ((((db_vu32)(c)) & (a)) | (~((db_vu32)(c)) & (b)))
#define DBV_OR(a, b) ((a) | (b))
#define DBV_AND(a, b) ((a) & (b))
#define DBV_FLOAT db_vf32
#else
#define DBV_T uint32_t
#define DBV(x) ((uint32_t)(x))
#define DBV_AS_F(x) db_as_f32(x)
#define DBV_AS_U(x) db_as_u32(x)
#define DBV_TO_F(x) ((float)(x))
#define DBV_SEL(c, a, b) ((c) ? (a) : (b))
#define DBV_OR(a, b) ((a) || (b))
#define DBV_AND(a, b) ((a) && (b))
#define DBV_FLOAT float
#endif
#define DBV_MIN(a, b) DBV_SEL((a) < (b), (a), (b))
#define DBV_MAX(a, b) DBV_SEL((a) > (b), (a), (b))
#else
#error "define DB_LANG_C, DB_LANG_CL or DB_LANG_GLSL"
#endif

#endif
