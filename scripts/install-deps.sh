#!/usr/bin/env bash
# Installs the Debian packages dropblockd builds and tests with, when any is missing.
# Non-interactive and idempotent: a machine that has them all is left alone.
set -euo pipefail

pkgs=(
  build-essential meson ninja-build pkg-config python3
  ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd
  libvulkan-dev mesa-vulkan-drivers glslang-tools spirv-tools
  libuv1-dev libcjson-dev
  python3-yaml vulkan-validationlayers
)
# python3-yaml: tests/test_deploy.py cross-checks its own small YAML reader with PyYAML (tests only)
# vulkan-validationlayers: the test vulkan-validation runs the Vulkan backend under the Khronos layer
# the clang build and the sanitizer run in .ci/run
if [ "${DROPBLOCK_DEPS_EXTRA:-}" != "" ]; then
  read -r -a extra <<< "$DROPBLOCK_DEPS_EXTRA"
  pkgs+=("${extra[@]}")
fi

# NumPy for the python3 that meson finds (the first on PATH), from PyPI: tests/test_python.py
# needs it for its array tests (and skips them without it); the package itself needs it only for
# arrays and jobs. A python3 whose packages pip may not touch (PEP 668) gets Debian's python3-numpy.
ensure_numpy() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 -c "import numpy" >/dev/null 2>&1 && return 0
  echo "install-deps: installing numpy for $(command -v python3) with pip"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet numpy && return 0
  if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ] && as_root >/dev/null; then
    echo "install-deps: pip could not install numpy; trying python3-numpy"
    DEBIAN_FRONTEND=noninteractive $(as_root) apt-get install -y -qq --no-install-recommends python3-numpy && return 0
  fi
  echo "install-deps: numpy is not installed; tests/test_python.py will skip its array tests" >&2
}

# "sudo" when not root and sudo exists, "" as root; fails when neither
as_root() {
  if [ "$(id -u)" -eq 0 ]; then echo ""; elif command -v sudo >/dev/null 2>&1; then echo sudo; else return 1; fi
}

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  ensure_numpy
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if ! sudo=$(as_root); then
  echo "install-deps: missing packages and not root; run: apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
ensure_numpy
