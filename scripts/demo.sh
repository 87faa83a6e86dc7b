#!/usr/bin/env bash
# make demo: dropblockd on a private socket, and DropBlock2D jobs through it with the dropblock CLI:
# keras-cv's documentation examples (bit for bit) and a 64x1024x14x14 tensor; then the daemon is
# stopped. Usage: scripts/demo.sh [BUILD_DIR]   (the Makefile builds first)
set -euo pipefail
cd "$(dirname "$0")/.."     # the repository root, where the Makefile runs it
build=${1:-build}
cli="$build/client/dropblock"
daemon="$build/daemon/dropblockd"
spec_ref=../shared/spec/dropblock_ref.py   # the executable spec, where this checkout has it
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$PWD/$build/pocl-cache}
mkdir -p "$POCL_CACHE_DIR"
for f in "$cli" "$daemon"; do
  [ -x "$f" ] || { echo "demo: $f is missing; build first (make)" >&2; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/dropblock-demo.XXXXXX")
sock="$dir/dropblockd.sock"
log="$dir/dropblockd.log"
pid=
cleanup() {
  rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "demo: stopping dropblockd (pid $pid) after an error" >&2
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -s "$log" ]; then
    echo "demo: failed (exit $rc); the daemon's log ($log):" >&2
    tail -n 20 "$log" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show() { echo "\$ $*"; "$@"; }

echo "== 1. start dropblockd on a private socket (log: $log)"
echo "\$ $daemon --socket $sock --cache-dir $build/kernel-cache &"
t_start=$(date +%s%N)
"$daemon" --socket "$sock" --cache-dir "$build/kernel-cache" 2>"$log" &
pid=$!
for i in $(seq 1 600); do
  if "$cli" --socket "$sock" status >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "demo: dropblockd exited at start" >&2; pid=; exit 1; }
  [ "$i" -lt 600 ] || { echo "demo: dropblockd did not answer within 60 s" >&2; exit 1; }
  sleep 0.1
done
t_ready=$(date +%s%N)
echo "  it answered after $(( (t_ready - t_start) / 1000000 )) ms: devices set up, every kernel built (or loaded"
echo "  from the caches) and launched once, the small-job threshold measured"
echo "\$ $cli --socket $sock status   # answers: exit 0"
"$cli" --socket "$sock" status | head -n 1
echo
echo "== 2. its devices"
show "$cli" --socket "$sock" devices
devices=$("$cli" --socket "$sock" devices | awk '{print $1}')

# f32 values of `dropblock run --format dec` in physical order, as rows of a 4x4 grid
grid() {  # grid JSON_LINE CHANNELS CHANNEL
  python3 -c '
import json, sys
v = json.loads(sys.argv[1])["values"]
C, c = int(sys.argv[2]), int(sys.argv[3])
for h in range(4):
    print("    " + " ".join("%-11s" % ("0" if float(v[(h * 4 + w) * C + c]) == 0 else v[(h * 4 + w) * C + c])
                            for w in range(4)))
' "$1" "$2" "$3"
}

echo
echo "== 3. keras-cv's documentation example, through the socket"
echo "   DropBlock2D(0.1, block_size=2, seed=1234) on tf.random.stateless_uniform((1, 4, 4, 1), seed=[0, 1]):"
echo "   NHWC 1x4x4x1, --compat keras_cv (bit-exact keras_cv.layers.DropBlock2D)"
args=(run --shape 1,1,4,4 --layout NHWC --compat keras_cv --rate 0.1 --block 2 --seed 1234 --input tf-uniform:0,1)
echo "\$ $cli --socket $sock ${args[*]} --format dec"
out=$("$cli" --socket "$sock" "${args[@]}" --format dec)
documented="0.10955477 0.54570675 0.5242462 0.42167106 0.46290365 0.97599393 0 0 0.7365858 0.17468326 0 0 0.51969624 1.0780739 0.80540895 0.14002927"
echo "  keras-cv documents:"
echo "$documented" | xargs -n 4 printf "    %-11s %-11s %-11s %-11s\n"
echo "  dropblockd gives ($(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("kept %d of %d" % (r["kept"], r["total"]))' "$out")):"
grid "$out" 1 0
python3 -c '
import json, struct, sys
bits = lambda x: struct.unpack("<I", struct.pack("<f", float(x)))[0]
got = [bits(v) for v in json.loads(sys.argv[1])["values"]]
want = [bits(v) for v in sys.argv[2].split()]
print("  bit for bit the documented float32 values: %s" % ("yes" if got == want else "NO"))
sys.exit(0 if got == want else 1)
' "$out" "$documented"
hex0=$("$cli" --socket "$sock" "${args[@]}" --format hex)
for dev in $devices; do
  [ "$("$cli" --socket "$sock" "${args[@]}" --device "$dev" --format hex)" = "$hex0" ] || {
    echo "demo: $dev gives other bits" >&2; exit 1; }
done
echo "  the same bits on every device: $(echo $devices | sed 's/ /, /g')"

echo
echo "== 4. keras-cv's 36-channel example: DropBlock2D(0.1, (2, 2), seed=123) on"
echo "   tf.random.stateless_uniform((1, 4, 4, 36), seed=[0, 1]); channels 0, 9, 22 and 29"
args=(run --shape 1,36,4,4 --layout NHWC --compat keras_cv --rate 0.1 --block 2 --seed 123 --input tf-uniform:0,1)
echo "\$ $cli --socket $sock ${args[*]} --format dec"
out=$("$cli" --socket "$sock" "${args[@]}" --format dec)
for c in 0 9 22 29; do
  echo "  channel $c:"
  grid "$out" 36 "$c"
done
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("  kept %d of %d elements, divisor (percent) bits %s" % (r["kept"], r["total"], r["scale_bits"]))' "$out"
echo "  (keras-cv's page prints numbers from another generator state, so they are not these: the"
echo "   values here are the exact result of the specification for this seed and input)"
if [ -f "$spec_ref" ]; then
  if [ "$(python3 "$spec_ref" "${args[@]:1}" --format hex)" = "$("$cli" --socket "$sock" "${args[@]}" --format hex)" ]; then
    echo "  identical, bit for bit, to the executable spec: python3 $spec_ref ${args[*]:1} --format hex"
  else
    echo "demo: the daemon's result differs from $spec_ref" >&2; exit 1
  fi
fi

echo
echo "== 5. a ResNet-sized tensor: 64x1024x14x14 f32 (51 MiB), block 7, rate 0.1, through the socket"
echo "   (input and output in shared memory from dropblock_alloc; the daemon picks the device: auto)"
show "$cli" --socket "$sock" run --shape 64,1024,14,14 --rate 0.1 --block 7 --seed 42 --input tf-uniform:0,1 \
  | tee "$dir/first.txt"
echo "\$ $cli --socket $sock run … --stream 1   # a later job (the next training step's mask)"
"$cli" --socket "$sock" run --shape 64,1024,14,14 --rate 0.1 --block 7 --seed 42 --stream 1 \
  --input tf-uniform:0,1 >"$dir/later.txt"
job_us() { sed -n 's/^time job \([0-9]*\) us.*/\1/p' "$1"; }
echo "  first job $(job_us "$dir/first.txt") us, a later one $(job_us "$dir/later.txt") us (no compile in either:"
echo "  the daemon built and launched every kernel variant when it set the devices up)"

echo
echo "== 6. the daemon's counters, then stop it"
"$cli" --socket "$sock" status | head -n 1
show "$cli" --socket "$sock" stop
set +e
wait "$pid"
code=$?
set -e
pid=
echo "dropblockd exited with status $code; its log, without the $(grep -c ' connected (pid' "$log") client connections:"
grep -v -e ' connected (pid' -e ' disconnected (end of stream)' "$log" | sed 's/^/  /'
[ "$code" -eq 0 ] || { echo "demo: dropblockd exited with $code" >&2; exit 1; }
[ ! -e "$sock" ] || { echo "demo: the socket $sock is still there" >&2; exit 1; }
echo "demo: done"
