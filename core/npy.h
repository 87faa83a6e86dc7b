/* npy.h: NumPy .npy files (format versions 1.0, 2.0 and 3.0) holding the tensors of a request:
 * '<f4' (f32), '<f2' (f16), and bf16, which numpy has no type for and so is stored as '<u2'.
 * Only little-endian C-order arrays; anything else is refused with a message, never converted. */
#ifndef DROPBLOCK_CORE_NPY_H
#define DROPBLOCK_CORE_NPY_H

#include <dropblock/dropblock.h>
#include <stddef.h>
#include <stdint.h>

#define DB_NPY_MAX_DIMS 8
/* Longest header dict accepted (numpy itself refuses more than 10000 bytes by default). */
#define DB_NPY_MAX_HEADER 65536u

/* Parses the header of an .npy image (buf holds at least its first len bytes; len may extend
 * into the data). want_dtype: a dropblock_dtype, or -1 to take it from the file ('<u2' then is
 * an error, as only the caller can say it holds bf16). On success fills dtype, shape, ndim (<=
 * DB_NPY_MAX_DIMS), the offset of the data and its size in bytes (overflow-checked).
 * Returns DROPBLOCK_OK; DROPBLOCK_EINVAL for a file that is not a supported .npy (bad magic or
 * version, header out of bounds or malformed, big-endian, Fortran order, other dtypes);
 * DROPBLOCK_ERANGE for a valid file whose dtype is not want_dtype (or '<u2' without bf16). */
int db_npy_parse_header(const void *buf, size_t len, int want_dtype, int *dtype, uint64_t *shape, int *ndim,
                        uint64_t *data_offset, uint64_t *data_bytes, char *msg, size_t msg_len);

/* Reads a whole .npy file: the header as above, then exactly the data, which must fill the rest
 * of the file (a truncated file is an error naming the expected and actual byte counts; so are
 * bytes after the data). *data is malloc'ed (caller frees), *nbytes its size. Errors as above,
 * plus DROPBLOCK_ENOTFOUND when the file cannot be opened, DROPBLOCK_EEXHAUSTED without memory
 * and DROPBLOCK_EINTERNAL on a read error. */
int db_npy_read(const char *path, int want_dtype, int *dtype, uint64_t *shape, int *ndim, void **data, uint64_t *nbytes,
                char *msg, size_t msg_len);

/* Builds the header numpy writes for a C-order array: version 1.0, the dict padded with spaces
 * and a newline so that the data starts at a multiple of 64 bytes. Returns the header length,
 * or 0 if it does not fit in cap bytes or the arguments are invalid. */
size_t db_npy_header(char *buf, size_t cap, dropblock_dtype t, const uint64_t *shape, int ndim);

/* Writes a .npy file (bf16 as '<u2'). A partly written file is removed. Returns DROPBLOCK_OK,
 * DROPBLOCK_EINVAL for bad arguments, DROPBLOCK_EINTERNAL on an I/O error (message names the file). */
int db_npy_write(const char *path, dropblock_dtype t, const uint64_t *shape, int ndim, const void *data, char *msg,
                 size_t msg_len);

#endif
