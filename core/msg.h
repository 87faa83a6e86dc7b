/* msg.h: the message helper every layer fills its result messages and error texts with. */
#ifndef DROPBLOCK_CORE_MSG_H
#define DROPBLOCK_CORE_MSG_H

#include <stddef.h>

/* snprintf into (msg, len) if len > 0. */
void db_msg(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
