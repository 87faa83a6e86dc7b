/* backend_vulkan.c: placeholder until the vulkan backend lands (enumerates no device). */
#include "backend.h"

static int e_(const struct db_backend_config *c, struct db_device *o, size_t n, char *m, size_t l)
{ (void)c; (void)o; (void)n; db_msg(m, l, "not built"); return 0; }
static int p_(struct db_device *d, const struct db_backend_config *c, char *m, size_t l)
{ (void)d; (void)c; (void)m; (void)l; return 0; }
static int r_(struct db_device *d, const struct db_plan *pl, const void *i, void *o, void *k, dropblock_result *r)
{ (void)d; (void)pl; (void)i; (void)o; (void)k; (void)r; return DROPBLOCK_EINTERNAL; }
static void x_(struct db_device *d) { (void)d; }
const struct backend_ops db_backend_vulkan = {"vulkan", e_, p_, r_, x_};
