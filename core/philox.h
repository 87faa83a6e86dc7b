/* philox.h: Philox4x32-10 (Random123, TensorFlow), docs/semantics.md "Philox4x32-10". */
#ifndef DROPBLOCK_CORE_PHILOX_H
#define DROPBLOCK_CORE_PHILOX_H

#include <stdint.h>

static inline void db_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* ctr = base + v as 128-bit little-endian integers. */
static inline void db_ref_ctr_add(const uint32_t base[4], uint64_t v, uint32_t ctr[4])
{
    uint64_t s = (uint64_t)base[0] + (uint32_t)v;
    ctr[0] = (uint32_t)s;
    s = (s >> 32) + base[1] + (v >> 32);
    ctr[1] = (uint32_t)s;
    s = (s >> 32) + base[2];
    ctr[2] = (uint32_t)s;
    s = (s >> 32) + base[3];
    ctr[3] = (uint32_t)s;
}

#endif
