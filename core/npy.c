/* npy.c: placeholder */
typedef int db_npy_placeholder;
