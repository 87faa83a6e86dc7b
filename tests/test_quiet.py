#!/usr/bin/env python3
"""libdropblock prints nothing: a backend's notes go to db_engine_open's log callback (none in
the library), never to stderr. A Vulkan job whose mask pass must be rerun (the backend logs
that) through `dropblock --local` leaves stderr empty. Skips (77) without a Vulkan device.

usage: test_quiet.py --cli PATH"""
import argparse
import os
import subprocess
import sys

# the mask rerun case of tests/meson.build's backends-vulkan-mask-rerun: every first try of a
# mask pass is cut short (DROPBLOCK_VULKAN_MASK_FAULT), the backend reruns it and says so
JOB = ["--local", "run", "--backend", "vulkan", "--shape", "1,8,20,30", "--rate", "0.9", "--block", "4,1",
       "--compat", "keras_cv", "--format", "hex"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    a = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
    dev = subprocess.run([a.cli, "--local", "devices"], env=env, capture_output=True, text=True, timeout=120)
    if "vulkan:" not in dev.stdout:
        print("SKIP: no Vulkan device (%s)" % (dev.stdout + dev.stderr).strip())
        return 77
    env["DROPBLOCK_VULKAN_MASK_FAULT"] = "1000000"
    r = subprocess.run([a.cli] + JOB, env=env, capture_output=True, text=True, timeout=300)
    print("exit %d, stdout %d bytes, stderr %r" % (r.returncode, len(r.stdout), r.stderr))
    if r.returncode != 0:
        print("FAIL: the job failed")
        return 1
    if '"kept"' not in r.stdout:
        print("FAIL: no result line")
        return 1
    if r.stderr:
        print("FAIL: the library wrote to stderr")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
