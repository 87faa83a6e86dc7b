/* schedule.c: drop-rate schedules (dropblock.h, "schedules").
 *
 * Linear ramp: rate(step) = RN32(target * min(step, N) / N), the exact rational value rounded
 * once to float32 (round to nearest, ties to even). It is computed with integers: target =
 * m * 2^e with an integer m < 2^24, so the value is (m * s / N) * 2^e; m * s is a product of at
 * most 88 bits held in two 64-bit words and divided by N one bit at a time (long division), until
 * the quotient has at least 26 significant bits; a nonzero remainder is kept as a sticky bit
 * below them. That quotient and sticky bit make a double of at most 28 significant bits whose one
 * conversion to float32 rounds exactly as the exact value would (normal or subnormal result),
 * so the result depends on no floating-point operation but that final rounding.
 *
 * Group scaling: rate / 4^(4 - g), one float32 division by a power of two (exact unless the
 * result is subnormal, where it rounds once). */
#include <dropblock/dropblock.h>
#include <math.h>
#include <string.h>

static int rate_ok(float r) { return !isnan(r) && r >= 0.0f && r <= 1.0f; }

/* m * 2^e == x for a finite x >= 0, with m < 2^24 an integer. */
static void decompose(float x, uint32_t *m, int *e)
{
    uint32_t bits;
    memcpy(&bits, &x, 4);
    uint32_t biased = (bits >> 23) & 0xff, frac = bits & 0x7fffff;
    if (biased == 0) {
        *m = frac;
        *e = -149;
    } /* zero or subnormal */
    else {
        *m = frac | 0x800000u;
        *e = (int)biased - 150;
    }
}

/* RN32(m * s / n * 2^e) for 0 < s <= n, m < 2^24. */
static float ramp(uint32_t m, int e, uint64_t s, uint64_t n)
{
    /* X = m * s as hi:lo (at most 88 bits) */
    uint64_t sl = s & 0xffffffffu, sh = s >> 32;
    uint64_t p_lo = (uint64_t)m * sl, p_hi = (uint64_t)m * sh; /* each < 2^56 */
    uint64_t lo = p_lo + (p_hi << 32);
    uint64_t hi = (p_hi >> 32) + (lo < p_lo);

    /* long division: the 128 bits of X from the top, then zeros (fraction bits), until the
     * quotient q holds at least 26 significant bits and every integer bit of X is used */
    uint64_t r = 0, q = 0;
    int frac_bits = 0;
    for (int i = 127; i >= 0 || q < (UINT64_C(1) << 25); i--) {
        uint64_t bit = i >= 64 ? (hi >> (i - 64)) & 1 : i >= 0 ? (lo >> i) & 1 : 0;
        uint64_t carry = r >> 63;
        r = (r << 1) | bit;
        q <<= 1;
        if (carry || r >= n) {
            r -= n;
            q |= 1;
        } /* modulo 2^64: the true 2r + bit < 2n */
        if (i < 0) frac_bits++;
    }
    /* the integer part is at most m < 2^24, so fraction bits always follow and 2^25 <= q < 2^26:
     * 24 bits for the float, a round bit, one more; append the sticky bit (exact in a double) */
    uint64_t q2 = (q << 1) | (r != 0);
    double v = ldexp((double)q2, e - frac_bits - 1); /* exact: the exponent stays above -300 */
    return (float)v;                                 /* the one rounding */
}

int dropblock_schedule_linear(float target, uint64_t step, uint64_t total_steps, float *rate)
{
    if (!rate) return DROPBLOCK_EINVAL;
    *rate = NAN;
    if (!rate_ok(target)) return DROPBLOCK_EINVAL;
    if (total_steps == 0 || step >= total_steps) {
        *rate = target;
        return DROPBLOCK_OK;
    }
    if (step == 0 || target == 0.0f) {
        *rate = 0.0f;
        return DROPBLOCK_OK;
    }
    uint32_t m;
    int e;
    decompose(target, &m, &e);
    *rate = ramp(m, e, step, total_steps);
    return DROPBLOCK_OK;
}

int dropblock_schedule_group(float target, int group, float *rate)
{
    if (!rate) return DROPBLOCK_EINVAL;
    *rate = NAN;
    if (!rate_ok(target) || group < 1 || group > 4) return DROPBLOCK_EINVAL;
    static const float div[5] = {0.0f, 64.0f, 16.0f, 4.0f, 1.0f}; /* 4^(4 - g) */
    *rate = target / div[group];
    return DROPBLOCK_OK;
}

float dropblock_schedule_rate(float target, uint64_t step, uint64_t total_steps, int group)
{
    float r;
    if (dropblock_schedule_linear(target, step, total_steps, &r)) return NAN;
    if (group == 0) return r;
    float g;
    return dropblock_schedule_group(r, group, &g) ? NAN : g;
}
