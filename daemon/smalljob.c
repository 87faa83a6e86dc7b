/* smalljob.c: the small-job threshold from a timing ladder (smalljob.h). */
#include "smalljob.h"

uint64_t sj_choose(const struct sj_rung *r, int n)
{
    uint64_t last_win = 0;
    for (int i = 0; i < n; i++) {
        if (!(r[i].cpu_us >= 0) || !(r[i].dev_us >= 0)) return last_win; /* not measured (NaN too) */
        if (r[i].cpu_us <= r[i].dev_us) {
            last_win = r[i].bytes;
            continue;
        }
        if (i == 0) return 0;
        /* the CPU won rung i-1 by d0 >= 0 and loses rung i by -d1 > 0 */
        double d0 = r[i - 1].dev_us - r[i - 1].cpu_us, d1 = r[i].dev_us - r[i].cpu_us;
        double t = d0 / (d0 - d1);
        double lo = (double)r[i - 1].bytes, hi = (double)r[i].bytes;
        if (!(hi > lo)) return r[i - 1].bytes;
        double x = lo + t * (hi - lo);
        return x <= lo ? r[i - 1].bytes : x >= hi ? r[i].bytes - 1 : (uint64_t)x;
    }
    return last_win;
}
