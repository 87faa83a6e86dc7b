#!/usr/bin/env bash
# Installs the Debian packages dropblockd builds and tests with, when any is missing.
# Non-interactive and idempotent: a machine that has them all is left alone.
set -euo pipefail

pkgs=(
  build-essential meson ninja-build pkg-config python3
  ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd
  libvulkan-dev mesa-vulkan-drivers glslang-tools spirv-tools
  libuv1-dev libcjson-dev
  python3-yaml vulkan-validationlayers python3-venv
)
# python3-yaml: tests/test_deploy.py cross-checks its own small YAML reader with PyYAML (tests only)
# python3-venv: tests/test_pip_root.py installs the package into a fresh venv (Debian's python3)
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

# meson-python (0.14 or newer: it honours pyproject.toml's install tags) for the same python3, from
# PyPI: `pip install .` at the repository root builds with it, and tests/test_pip_root.py does that
# offline (--no-build-isolation; skipped without it). --no-deps: the meson it needs is Debian's (a
# PyPI meson would put a second, newer meson first on PATH, which the existing build directories
# were not configured with); pyproject-metadata and packaging are its other needs. A python3 whose
# packages pip may not touch gets Debian's python3-mesonpy where that is new enough (not Debian 12's).
ensure_mesonpy() {
  local new_enough="import mesonpy, sys; sys.exit(tuple(map(int, mesonpy.__version__.split('.')[:2])) < (0, 14))"
  command -v python3 >/dev/null 2>&1 || return 0
  python3 -c "$new_enough" >/dev/null 2>&1 && return 0
  echo "install-deps: installing meson-python for $(command -v python3) with pip"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-deps \
    'meson-python>=0.14' pyproject-metadata 'packaging>=23.2' 'tomli>=1; python_version < "3.11"' &&
    python3 -c "$new_enough" >/dev/null 2>&1 && return 0
  if [ "$(python3 -c 'import sys; print(sys.prefix)')" = /usr ] && as_root >/dev/null; then
    local cand
    cand=$(apt-cache policy python3-mesonpy 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -n "$cand" ] && [ "$cand" != "(none)" ] && dpkg --compare-versions "$cand" ge 0.14; then
      echo "install-deps: pip could not install meson-python; installing python3-mesonpy $cand"
      DEBIAN_FRONTEND=noninteractive $(as_root) apt-get install -y -qq --no-install-recommends python3-mesonpy && return 0
    fi
  fi
  echo "install-deps: no meson-python 0.14 or newer for $(command -v python3) (pip install 'meson-python>=0.14');" \
       "tests/test_pip_root.py will skip" >&2
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
  ensure_mesonpy
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
ensure_mesonpy
