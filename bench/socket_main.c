/* dropblock-bench-socket: the daemon modes of the benchmark on their own. */
#include "bench_socket.h"

int main(int argc, char **argv) { return bench_socket(argc, argv); }
