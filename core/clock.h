/* clock.h: microseconds on a monotonic clock, for timing_us, deadlines and the benchmark. */
#ifndef DROPBLOCK_CORE_CLOCK_H
#define DROPBLOCK_CORE_CLOCK_H

#include <stdint.h>

/* microseconds on a monotonic clock, for timing_us */
uint64_t db_now_us(void);
/* the same, with sub-microsecond resolution, for the benchmark */
double db_now_us_f(void);

#endif
