#!/usr/bin/env python3
"""libdropblock.so exports only its public API: every defined dynamic symbol starts with
dropblock_ (the engine, core and protocol code linked into it is built with -fvisibility=hidden
and dropblock.h marks the public functions DROPBLOCK_API). Skips (77) where nm is missing.

usage: test_symbols.py LIBDROPBLOCK.so"""
import shutil
import subprocess
import sys

# what the toolchain may define in any shared object
ALLOWED = {"_init", "_fini", "_edata", "_end", "__bss_start", "_DYNAMIC", "_GLOBAL_OFFSET_TABLE_"}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    nm = shutil.which("nm")
    if nm is None:
        print("SKIP: nm not found")
        return 77
    out = subprocess.run([nm, "-D", "--defined-only", sys.argv[1]], check=True,
                         capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines():
        f = line.split()
        if not f:
            continue
        names.append(f[-1].split("@")[0])  # "dropblock_run@@VERSION" where a version script adds one
    public = sorted(n for n in names if n.startswith("dropblock_"))
    stray = sorted(n for n in names if not n.startswith("dropblock_") and n not in ALLOWED)
    print("%d dropblock_* symbols exported" % len(public))
    if not public:
        print("FAIL: no dropblock_* symbol exported at all")
        return 1
    if stray:
        print("FAIL: %d exported symbols outside the public API:" % len(stray))
        for n in stray:
            print("  " + n)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
