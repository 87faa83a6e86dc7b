/* format.c: dropblock_ref.py's output format. */
#include "format.h"

#include <stdlib.h>
#include <string.h>

#include "fp.h"

const char *db_layout_name(dropblock_layout l, int three)
{
    static const char *const names[2][2] = {{"NCHW", "NHWC"}, {"NCDHW", "NDHWC"}};
    return (unsigned)l > DROPBLOCK_NHWC ? "?" : names[three != 0][l];
}

void db_format_f32(char *buf, size_t len, uint32_t bits)
{
    float v = db_f32(bits);
    if (db_is_nan32(bits)) {
        snprintf(buf, len, "nan");
        return;
    }
    if (db_is_inf32(bits)) {
        snprintf(buf, len, bits >> 31 ? "-inf" : "inf");
        return;
    }
    char t[64];
    for (int p = 1; p <= 9; p++) {
        snprintf(t, sizeof t, "%.*g", p, (double)v);
        if ((float)strtod(t, NULL) == v) break; /* Python: f32(float(t)) == v */
    }
    /* Python prints repr(float(t)) when t has no exponent: the same digits, with ".0" for an integer */
    if (!strchr(t, 'e') && !strchr(t, '.')) snprintf(buf, len, "%s.0", t);
    else snprintf(buf, len, "%s", t);
}

int db_print_result(FILE *f, const dropblock_result *res, dropblock_dtype t, const void *buf, uint64_t n, int hex)
{
    fprintf(f, "{\"kept\": %llu, \"total\": %llu, \"scale_bits\": \"0x%08x\", \"values\": [",
            (unsigned long long)res->kept, (unsigned long long)res->total, res->scale_bits);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits;
        char s[64];
        if (t == DROPBLOCK_F32) memcpy(&bits, (const char *)buf + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, (const char *)buf + 2 * i, 2);
            bits = h;
        }
        if (hex) snprintf(s, sizeof s, t == DROPBLOCK_F32 ? "0x%08x" : "0x%04x", bits);
        else
            db_format_f32(s, sizeof s,
                          t == DROPBLOCK_F32   ? bits
                          : t == DROPBLOCK_F16 ? db_ref_f16_to_f32((uint16_t)bits)
                                               : db_ref_bf16_to_f32((uint16_t)bits));
        fprintf(f, "%s\"%s\"", i ? ", " : "", s);
    }
    fprintf(f, "]}\n");
    return ferror(f) ? -1 : 0;
}
