/* fpenv.h: the few float32 operations the spec makes in hardware on the host (gamma, the
 * scale's rounding, keras_cv's percent; the CPU backend's products) run in the default
 * environment: round to nearest even, no flush to zero, no denormals-are-zero, whatever the
 * calling thread set (a library runs in its caller's threads). Between db_fpenv_enter and
 * db_fpenv_leave. */
#ifndef DROPBLOCK_CORE_FPENV_H
#define DROPBLOCK_CORE_FPENV_H

#include <fenv.h>

typedef struct { fenv_t saved; } db_fpenv;
static inline void db_fpenv_enter(db_fpenv *e) { fegetenv(&e->saved); fesetenv(FE_DFL_ENV); }
static inline void db_fpenv_leave(const db_fpenv *e) { fesetenv(&e->saved); }

#endif
