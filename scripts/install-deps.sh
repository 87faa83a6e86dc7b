#!/usr/bin/env bash
# Installs the Debian packages dropblockd builds and tests with, when any is missing.
# Non-interactive and idempotent: a machine that has them all is left alone.
set -euo pipefail

pkgs=(
  build-essential meson ninja-build pkg-config python3
  ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd
  libvulkan-dev mesa-vulkan-drivers glslang-tools spirv-tools
  libuv1-dev libcjson-dev
  python3-yaml
)
# python3-yaml: tests/test_deploy.py cross-checks its own small YAML reader with PyYAML (tests only)
# the clang build and the sanitizer run in .ci/run
if [ "${DROPBLOCK_DEPS_EXTRA:-}" != "" ]; then
  read -r -a extra <<< "$DROPBLOCK_DEPS_EXTRA"
  pkgs+=("${extra[@]}")
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-deps: missing packages and not root; run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
