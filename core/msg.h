/* msg.h: the message helper every layer fills its result messages and error texts with. */
#ifndef DROPBLOCK_CORE_MSG_H
#define DROPBLOCK_CORE_MSG_H

#include <stddef.h>
#include <stdint.h>

/* snprintf into (msg, len) if len > 0. */
void db_msg(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A 16-byte UUID as "8-4-4-4-12" lowercase hex (36 characters and the NUL): the devices' ids
 * in device lists and in region.alloc's reply. */
void db_uuid_text(char out[37], const uint8_t u[16]);

#endif
