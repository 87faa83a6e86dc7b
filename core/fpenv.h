/* fpenv.h: the few float32 operations the spec makes in hardware on the host (gamma, the
 * scale's rounding, keras_cv's percent; the CPU backend's products) run in the default
 * environment: round to nearest even, no flush to zero, no denormals-are-zero, whatever the
 * calling thread set (a library runs in its caller's threads). Between db_fpenv_enter and
 * db_fpenv_leave.
 *
 * x86-64 does float arithmetic in SSE only, so there it is MXCSR's control bits alone (two
 * instructions, none at all when they are already the default: every job crosses this several
 * times); elsewhere the C99 environment. */
#ifndef DROPBLOCK_CORE_FPENV_H
#define DROPBLOCK_CORE_FPENV_H

#if defined(__x86_64__) && defined(__SSE__)
#include <xmmintrin.h>

typedef struct {
    unsigned csr;
    int changed;
} db_fpenv;
#define DB_MXCSR_CONTROL 0xFFC0u /* the control bits (the low six are sticky exception flags) */
#define DB_MXCSR_DEFAULT 0x1F80u /* all exceptions masked, nearest even, no FTZ/DAZ */
static inline void db_fpenv_enter(db_fpenv *e)
{
    e->csr = _mm_getcsr();
    e->changed = (e->csr & DB_MXCSR_CONTROL) != DB_MXCSR_DEFAULT;
    if (e->changed) _mm_setcsr(DB_MXCSR_DEFAULT | (e->csr & ~DB_MXCSR_CONTROL));
}
static inline void db_fpenv_leave(const db_fpenv *e)
{
    if (e->changed) _mm_setcsr(e->csr);
}
#else
#include <fenv.h>

typedef struct {
    fenv_t saved;
} db_fpenv;
static inline void db_fpenv_enter(db_fpenv *e)
{
    fegetenv(&e->saved);
    fesetenv(FE_DFL_ENV);
}
static inline void db_fpenv_leave(const db_fpenv *e) { fesetenv(&e->saved); }
#endif

#endif
