/* cli.h: what the dropblock tool's files share (private to client/): cli.c (main, the options
 * before the command, devices, status, stop, schedule, and the helpers below) and cli_run.c (the
 * run command: its options, input loading, progress on a terminal, output). */
#ifndef DROPBLOCK_CLIENT_CLI_H
#define DROPBLOCK_CLIENT_CLI_H

#include <dropblock/dropblock.h>
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

enum { EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* the exit statuses, in dropblock --help and dropblock run --help (and README's CLI section) */
#define EXIT_STATUS_HELP \
    "exit status:\n" \
    "  0  done\n" \
    "  1  a failure at run time: no daemon reachable, no device of the API asked for, a job or\n" \
    "     device failure, an I/O error (an --input that cannot be opened or read, an --output or\n" \
    "     --mask that cannot be written)\n" \
    "  2  bad usage or bad input: an unknown command or option, a bad value, an invalid request,\n" \
    "     an .npy --input that is not usable (truncated, big-endian, a bad header, a dtype other\n" \
    "     than f32, f16 or bf16 or than --dtype), a --device the daemon or engine does not have\n"

struct opt {
    const char *name;
    int takes_value;
};

struct engine_opts {
    int local;
    const char *socket;  /* NULL: dropblock_default_socket() */
    const char *backend; /* NULL: all */
    int timeout_ms;      /* --timeout: connect, hello and every reply but a job's (-1: none) */
    int job_timeout_ms;  /* --job-timeout: a job's reply (-1, the default: none) */
};

/* cli.c */
/* A message on stderr, prefixed "dropblock: ". */
void err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double now_s(void); /* CLOCK_MONOTONIC, seconds */
/* The option at argv[*i]: its table index, its value (NULL for flags). -1: not an option of the
 * table (reported), -2: the caller's positional argument. */
int next_opt(const struct opt *table, int argc, char **argv, int *i, const char **value);
/* A decimal unsigned 64-bit integer, nothing else; _opt reports a bad one naming flag. */
int parse_u64(const char *s, uint64_t *v);
int parse_u64_opt(const char *flag, const char *s, uint64_t *v);
/* "a,b,c": between min_n and max_n unsigned integers; returns their count or -1. */
int parse_u64_list(const char *s, uint64_t *out, int min_n, int max_n);
/* The rate as dropblock_ref.py reads it: a double rounded to float32. */
int parse_rate(const char *s, float *r);
/* --timeout/--job-timeout S: seconds (a decimal number, at most a day) or "none". */
int parse_timeout(const char *name, const char *v, int *ms);
int check_backend(const char *b);
/* --local and --socket name two different engines. */
int check_engine(const struct engine_opts *o);
/* The one place that picks in-process or daemon. Returns an exit status (0 when *h is open). */
int open_engine(const struct engine_opts *o, dropblock_t **h, int hint_local);
/* Reads the device list into a malloc'ed array. */
dropblock_device_info *list_devices(dropblock_t *h, size_t *count);
/* A number of a JSON object, 0 without one. */
double json_num(const cJSON *o, const char *name);

/* cli_run.c */
extern const char usage_run[];
/* dropblock run ARGS: an exit status */
int cmd_run(int argc, char **argv, struct engine_opts eo);

#endif
