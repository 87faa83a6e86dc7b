/* format.h: the one-line JSON result of dropblock_ref.py, byte for byte, so outputs compare
 * with a plain string equality. */
#ifndef DROPBLOCK_CORE_FORMAT_H
#define DROPBLOCK_CORE_FORMAT_H

#include <dropblock/dropblock.h>
#include <stdio.h>

/* The layout's name for a 2-D request (NCHW, NHWC) or, three != 0, a 3-D one (NCDHW, NDHWC);
 * "?" for a value that is no layout. */
const char *db_layout_name(dropblock_layout l, int three);

/* Shortest decimal that reads back as the same float32, as dropblock_ref.py prints it. */
void db_format_f32(char *buf, size_t len, uint32_t bits);

/* {"kept": K, "total": S, "scale_bits": "0x...", "values": [...]} and a newline. hex: bit
 * patterns (8 or 4 digits), else decimals. Returns 0 or -1 on a write error. */
int db_print_result(FILE *f, const dropblock_result *res, dropblock_dtype t, const void *buf, uint64_t n, int hex);

#endif
