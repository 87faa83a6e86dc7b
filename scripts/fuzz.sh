#!/usr/bin/env bash
# make fuzz: each libFuzzer harness for FUZZ_SECONDS, from the committed seed corpus (new
# inputs go to build-fuzz/corpus-*, never into the repository). Fails on the first crash,
# leak or sanitizer report, printing the reproducer's path.
set -euo pipefail
secs=${FUZZ_SECONDS:-60}
for h in frames request npy; do
  mkdir -p "build-fuzz/corpus-$h"
  log="build-fuzz/fuzz_$h.log"
  echo "== fuzz_$h for $secs s"
  if ! build-fuzz/fuzz/fuzz_$h -max_total_time="$secs" -max_len=70000 -timeout=10 -print_final_stats=1 \
       -artifact_prefix="build-fuzz/crash-$h-" "build-fuzz/corpus-$h" "fuzz/corpus/$h" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz_$h FAILED (log: $log)"
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added" "$log" | sed 's/^/   /'
done
