#!/usr/bin/env bash
# make demo: the keras-cv documentation example of DropBlock2D through the CLI, on every
# device this machine has (in-process engine: CPU reference, OpenCL, Vulkan).
set -euo pipefail
build=${1:-build}
cli="$build/client/dropblock"
export POCL_CACHE_DIR=${POCL_CACHE_DIR:-$PWD/$build/pocl-cache}
mkdir -p "$POCL_CACHE_DIR"

echo "== devices"
"$cli" devices --local
echo
echo "== keras-cv's documentation example: DropBlock2D(0.1, block_size=2, seed=1234) on"
echo "   tf.random.stateless_uniform((1, 4, 4, 1), seed=[0, 1]), NHWC, compat keras_cv"
echo "   keras-cv documents: 0.10955477 0.54570675 0.5242462 0.42167106 / 0.46290365 0.97599393 0 0 /"
echo "                       0.7365858 0.17468326 0 0 / 0.51969624 1.0780739 0.80540895 0.14002927"
"$cli" devices --local | awk '{print $1}' | while read -r dev; do
  out=$("$cli" run --local --device "$dev" --shape 1,1,4,4 --layout NHWC --compat keras_cv --rate 0.1 --block 2 \
        --seed 1234 --input tf-uniform:0,1 --format dec)
  echo "$dev: $out"
done
echo
echo "== the canonical semantics (valid-region seeds, exact S/K) on a 64x1024x14x14 f32 tensor, block 7, rate 0.1"
"$cli" devices --local | awk '{print $1}' | while read -r dev; do
  "$cli" run --local --device "$dev" --shape 64,1024,14,14 --rate 0.1 --block 7 --seed 42 --input tf-uniform:0,1
done
