/* smalljob.c: the small-job threshold from a timing ladder (smalljob.h). */
#include "smalljob.h"

uint64_t sj_choose(const struct sj_rung *r, int n, int full, uint64_t fallback)
{
    int m = 0, won = -1;                                       /* rungs measured (a prefix); the largest the CPU won */
    while (m < n && r[m].cpu_us >= 0 && r[m].dev_us >= 0) m++; /* not measured (NaN too) ends it */
    if (m == 0) return fallback;
    for (int i = 0; i < m; i++)
        if (r[i].cpu_us <= r[i].dev_us) won = i;
    if (won < 0) return 0;
    if (won == m - 1) { /* no loss above it: the whole ladder, or one cut short */
        if (m == n && n >= full) return r[won].bytes;
        return r[won].bytes > fallback ? r[won].bytes : fallback;
    }
    /* the CPU won rung k = won by d0 >= 0 and loses rung k+1 by -d1 > 0 */
    const struct sj_rung *a = &r[won], *b = &r[won + 1];
    double d0 = a->dev_us - a->cpu_us, d1 = b->dev_us - b->cpu_us;
    double t = d0 / (d0 - d1);
    double lo = (double)a->bytes, hi = (double)b->bytes;
    if (!(hi > lo)) return a->bytes;
    double x = lo + t * (hi - lo);
    return x <= lo ? a->bytes : x >= hi ? b->bytes - 1 : (uint64_t)x;
}
