#!/usr/bin/env bash
# Static checks of the C tree (test `lint`, `make lint`): cppcheck's warning, performance and
# portability checks on every C file, with the build folder's generated headers (the version
# header, the embedded kernels). A finding fails; a false one is silenced where it stands with
# `/* cppcheck-suppress ID ; why */`. clang-tidy (.clang-tidy) runs too with --tidy, over
# compile_commands.json: slower, for new code before it lands.
# usage: scripts/lint.sh [BUILD_DIR] [--tidy]; exit 0 clean, 1 findings, 77 no cppcheck here
set -uo pipefail
cd "$(dirname "$0")/.."
build=build tidy=0
for a in "$@"; do
  case $a in
    --tidy) tidy=1 ;;
    *) build=$a ;;
  esac
done
if ! command -v cppcheck >/dev/null; then
  echo "SKIP: cppcheck is not installed (scripts/install-deps.sh installs it with DROPBLOCK_DEPS_EXTRA=cppcheck)"
  exit 77
fi
inc=()
for d in include core engine proto daemon client shaders tests bench fuzz "$build/core" "$build/shaders" "$build/include"; do
  inc+=(-I "$d")
done
out=$(cppcheck --enable=warning,performance,portability --std=c11 --quiet --inline-suppr --error-exitcode=1 \
  -D__x86_64__ "${inc[@]}" core engine proto daemon client bench fuzz tests examples 2>&1)
rc=$?
[ -n "$out" ] && echo "$out"
if [ $tidy -eq 1 ]; then
  mapfile -t srcs < <(git ls-files -- 'core/*.c' 'engine/*.c' 'proto/*.c' 'daemon/*.c' 'client/*.c')
  clang-tidy -p "$build" --quiet --extra-arg=-Wno-unknown-warning-option "${srcs[@]}" 2>&1 | grep -v 'warnings generated' \
    | grep -E 'warning:|error:' && rc=1
fi
[ $rc -eq 0 ] && echo "lint: cppcheck clean$([ $tidy -eq 1 ] && echo ", clang-tidy clean")"
exit $rc
