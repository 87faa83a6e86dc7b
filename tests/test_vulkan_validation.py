#!/usr/bin/env python3
"""The Vulkan backend under the Khronos validation layer: every case of test_backends (the
default tuning, the GPU tuning, staged buffers, several chunks a job), test_job_stats (each
job run twice: the second submits the command buffers kept from the first) and
test_device_memory (jobs on exported memory that the test imports) and test_semaphores (jobs
ordered by timeline semaphores: waits on the first submission, signals after the last) with
VK_LAYER_KHRONOS_validation enabled. Any message of the layer fails the test: invalid SPIR-V, a
stale or invalid command buffer submitted, a descriptor of the wrong type or size, a missing
barrier the layer can see. Skips (77) where the layer (Debian's vulkan-validationlayers) or a
Vulkan device is absent.

usage: test_vulkan_validation.py --backends PATH --job-stats PATH --device-memory PATH --semaphores PATH"""
import argparse
import os
import subprocess
import sys

LAYER = "VK_LAYER_KHRONOS_validation"
LAYER_DIRS = ["/usr/share/vulkan/explicit_layer.d", "/etc/vulkan/explicit_layer.d",
              "/usr/local/share/vulkan/explicit_layer.d"]
# the layer's own words for what it reports (its debug-utils messages to stdout)
MARKS = ("Validation Error", "Validation Warning", "VUID-", "UNASSIGNED-")

RUNS = [
    ("default tuning", {}),
    ("GPU tuning", {"DROPBLOCK_VULKAN_SHAPE": "gpu"}),
    ("staged buffers", {"DROPBLOCK_VULKAN_STAGE": "1"}),
    ("several chunks a job", {"DROPBLOCK_VULKAN_MAX_BUFFER": "4096"}),
    ("staged, several chunks, GPU tuning", {"DROPBLOCK_VULKAN_STAGE": "1", "DROPBLOCK_VULKAN_MAX_BUFFER": "4096",
                                            "DROPBLOCK_VULKAN_SHAPE": "gpu"}),
]


def layer_present():
    extra = os.environ.get("VK_LAYER_PATH", "")
    dirs = [d for d in extra.split(":") if d] + LAYER_DIRS
    for d in dirs:
        try:
            if any("khronos_validation" in f for f in os.listdir(d)):
                return True
        except OSError:
            pass
    return False


def run(cmd, env, what):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    found = [line for line in out.splitlines() if any(m in line for m in MARKS)]
    last = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    print("%-40s exit %d, %d validation messages: %s" % (what, r.returncode, len(found), last))
    for line in found[:5]:
        print("   ", line[:400])
    return r.returncode == 0 and not found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", required=True)
    ap.add_argument("--job-stats", required=True)
    ap.add_argument("--device-memory", required=True)
    ap.add_argument("--semaphores", required=True)
    a = ap.parse_args()
    if not layer_present():
        print("SKIP: %s not installed (Debian: vulkan-validationlayers)" % LAYER)
        return 77
    env = dict(os.environ)
    env.setdefault("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
    env["VK_INSTANCE_LAYERS"] = LAYER
    probe = subprocess.run([a.backends, "--backend", "vulkan", "--filter", "no-such-case"], env=env,
                           capture_output=True, text=True, timeout=300)
    if "device vulkan:" not in probe.stdout + probe.stderr:
        print("SKIP: no Vulkan device (%s)" % (probe.stdout + probe.stderr).strip()[-300:])
        return 77
    ok = True
    for what, extra in RUNS:
        ok &= run([a.backends, "--backend", "vulkan", "--require", "vulkan"], dict(env, **extra), what)
    ok &= run([a.job_stats, "--require", "vulkan"], env, "job stats (command buffers reused)")
    ok &= run([a.device_memory, "--require", "vulkan"], env, "device memory (exported, imported)")
    ok &= run([a.semaphores, "--require", "vulkan"], env, "timeline semaphores (waits, signals)")
    print("test_vulkan_validation: %s" % ("clean" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
