/* msg.c: db_msg (msg.h). */
#include "msg.h"

#include <stdarg.h>
#include <stdio.h>

void db_msg(char *msg, size_t len, const char *fmt, ...)
{
    if (!msg || !len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
}
