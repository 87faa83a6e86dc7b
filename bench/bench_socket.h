/* bench_socket.h: dropblock-bench's daemon modes: round-trip latency of small jobs and
 * end-to-end throughput of large ones, through libdropblock and a running dropblockd. */
#ifndef DROPBLOCK_BENCH_SOCKET_H
#define DROPBLOCK_BENCH_SOCKET_H

/* argv: [--socket PATH] (--latency | --throughput) [--device ID] [--reps N] [--shape N,C,H,W]
 * [--dtype T] [--json]. Returns the process exit status. */
int bench_socket(int argc, char **argv);

#endif
