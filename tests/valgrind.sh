#!/usr/bin/env bash
# valgrind memcheck on dropblockd while the daemon tests run against it: test_daemon.py (the
# wire protocol, faults, killed clients) and test_client (libdropblock, restart and reconnect)
# start every daemon as
#     valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
#              --suppressions=tests/valgrind.supp ... dropblockd ...
# through $DROPBLOCK_DAEMON_WRAPPER. A daemon with a memory error or a definite leak exits 99,
# which the tests see (they check its exit status); every valgrind log is also scanned here.
# The suppressions cover driver libraries only (tests/valgrind.supp).
#
#   tests/valgrind.sh [BUILD_DIR]        (default build; DROPBLOCK_VISIBLE_DEVICES is honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed"; exit 1; }
logs=$(mktemp -d /tmp/dbvalgrind-XXXXXX)
export DROPBLOCK_DAEMON_WRAPPER="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
--show-leak-kinds=definite --num-callers=40 --suppressions=$PWD/tests/valgrind.supp --log-file=$logs/vg.%p.log"
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$PWD/$build/pocl-cache}
export DROPBLOCK_SPEC_DIR=${DROPBLOCK_SPEC_DIR:-$PWD/../shared/spec}
status=0
echo "== valgrind: test_daemon.py (devices: ${DROPBLOCK_VISIBLE_DEVICES:-all})"
python3 tests/test_daemon.py --daemon "$build/daemon/dropblockd" --spec-dir "$DROPBLOCK_SPEC_DIR" || status=1
echo "== valgrind: test_client"
"$build/tests/test_client" "$build/daemon/dropblockd" "$PWD/$build/kernel-cache" | grep -v '^device ' || status=1
# every daemon's verdict, including those the tests expect to fail or kill
n=0
bad=0
for f in "$logs"/vg.*.log; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    if grep -q "ERROR SUMMARY: [1-9]" "$f"; then
        bad=$((bad + 1))
        echo "---- $f"
        cat "$f"
    fi
done
echo "valgrind.sh: $n daemon runs under memcheck, $bad with errors or definite leaks"
[ "$bad" -eq 0 ] || status=1
[ "$status" -eq 0 ] && rm -rf "$logs"
exit $status
