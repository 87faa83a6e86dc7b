#!/usr/bin/env bash
# The tree's style, as CI checks it (test `style`): the .editorconfig whitespace rules on every
# tracked text file, and .clang-format on the C sources (*.c, *.h, *.cl). Formatting differs
# between clang-format releases, so that part runs with release 14 (Debian 12's) only and is
# skipped, saying so, with another or none. To fix what it reports:
#   git ls-files '*.c' '*.h' '*.cl' | xargs clang-format-14 -i
# Exit 0: clean; 1: a rule is broken (each place named); 77: nothing to check here (no git).
set -uo pipefail
cd "${1:-$(dirname "$0")/..}"

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "SKIP: not a git checkout: the tracked files are unknown"
  exit 77
fi
rc=0
mapfile -t text < <(git grep -I --name-only -e '' -- . ':!fuzz/corpus' ':!*.json')

# .editorconfig: no trailing white space, a final newline, no tabs (but in Makefiles)
if out=$(git grep -I -n -E '[[:space:]]+$' -- "${text[@]}"); [ -n "$out" ]; then
  echo "trailing white space:"; echo "$out" | head -20; rc=1
fi
for f in "${text[@]}"; do
  if [ -s "$f" ] && [ "$(tail -c1 "$f" | od -An -tx1 | tr -d ' ')" != 0a ]; then
    echo "$f: no newline at the end"; rc=1
  fi
done
if out=$(git grep -I -n -P '\t' -- "${text[@]}" ':!Makefile' ':!**/Makefile'); [ -n "$out" ]; then
  echo "tabs (indent with spaces):"; echo "$out" | head -20; rc=1
fi

# .clang-format on the C sources
cf=""
for c in clang-format-14 clang-format; do
  if command -v "$c" >/dev/null && "$c" --version | grep -q 'version 14\.'; then cf=$c; break; fi
done
mapfile -t csrc < <(git ls-files -- '*.c' '*.h' '*.cl')
if [ -z "$cf" ]; then
  echo "note: clang-format 14 not found (scripts/install-deps.sh installs it with DROPBLOCK_DEPS_EXTRA=clang-format):" \
       "the C formatting was not checked"
else
  bad=0
  for f in "${csrc[@]}"; do
    if ! "$cf" "$f" | cmp -s - "$f"; then
      echo "$f: not as .clang-format lays it out:"; "$cf" "$f" | diff -u "$f" - | sed -n '3,12p'; bad=$((bad + 1))
    fi
  done
  if [ $bad -gt 0 ]; then
    echo "$bad C source(s) to reformat: git ls-files '*.c' '*.h' '*.cl' | xargs $cf -i"; rc=1
  fi
fi
[ $rc -eq 0 ] && echo "style: ${#text[@]} text files, ${#csrc[@]} C sources${cf:+ ($cf)}: clean"
exit $rc
