"""test_cli_progress.py: `dropblock run` shows its progress on a terminal, and only there.

A job made slow on lavapipe (DROPBLOCK_VULKAN_MAX_BUFFER: many chunks; DROPBLOCK_VULKAN_MASK_FAULT:
every mask pass run twice, the second time with the worst-case budget) runs 2 to 6 s, past the
1 s after which the CLI shows a line on stderr, rewritten in place: elapsed time, the device and
the pass its job is in. Checked with stderr on a pseudo-terminal (the pty module):
  - --local: "dropblock: running N.N s on vulkan:0 (mask pass, chunk I of N)", the elapsed time
    growing, the line cleared at the end ("\\r\\033[K"), the summary on stdout as without it;
  - through a daemon (started here with the same knobs): the elapsed time, the device and its
    pass from the daemon's status op ("pass" of a device running a job);
and with stderr a pipe: no progress on stderr (nothing at all from a daemon job), the same stdout.
Usage: test_cli_progress.py --cli PATH --daemon PATH. Exit 77 without a Vulkan device.
"""
import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()
check = T.check
SLOW = {"DROPBLOCK_VULKAN_MAX_BUFFER": "1048576", "DROPBLOCK_VULKAN_MASK_FAULT": "1000000"}
JOB = ["run", "--device", "vulkan:0", "--shape", "16,64,128,128", "--rate", "0.1", "--block", "7", "--seed", "3",
       "--input", "tf-uniform:0,1"]


def on_pty(cmd, env):
    """Runs cmd with stderr on a pseudo-terminal (stdout a pipe): (rc, stdout, stderr bytes)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    err = b""
    while True:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                chunk = b""
            if not chunk and p.poll() is not None:
                break
            err += chunk
        elif p.poll() is not None:
            break
    out = p.stdout.read()
    p.wait()
    os.close(master)
    return p.returncode, out, err


def quiet(err):
    """No progress output: the local engine's own log lines (the mask knob's reruns) may be there."""
    return b"dropblock: running" not in err and b"\r" not in err and b"\x1b" not in err


def summary(out):
    """stdout without the timing line (it differs from run to run)."""
    return [l for l in out.decode().splitlines() if not l.startswith("time ")]


def check_progress(name, err, want_pass):
    text = err.decode(errors="replace")
    lines = [l for l in re.split(r"\r", text) if l.startswith("dropblock: running")]
    check(lines, "%s: a progress line on the terminal (stderr %r)" % (name, text[-300:]))
    times = [float(m.group(1)) for l in lines for m in [re.match(r"dropblock: running (\d+\.\d) s", l)] if m]
    check(times and times[0] >= 1.0, "%s: shown only past 1 s (first at %s s)" % (name, times[:1]))
    check(len(times) >= 2 and times[-1] > times[0], "%s: the elapsed time grows (%s)" % (name, times))
    check(any(" on vulkan:0" in l for l in lines), "%s: the device is named: %r" % (name, lines[-1:]))
    if want_pass:
        check(any(re.search(r"vulkan:0 \(mask pass, chunk \d+ of \d+\)", l) for l in lines),
              "%s: the pass and chunk are named: %r" % (name, lines[-3:]))
    check(text.endswith("\r\x1b[K"), "%s: the line is cleared at the end: %r" % (name, text[-40:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    env = {**os.environ, **SLOW}
    devs = subprocess.run([a.cli, "--local", "devices", "--backend", "vulkan"], capture_output=True, text=True, env=env)
    if devs.returncode or "vulkan:0" not in devs.stdout:
        print("SKIP: no Vulkan device (%s)" % (devs.stderr.strip() or devs.stdout.strip()))
        return 77

    # the local engine
    t0 = time.time()
    rc, out, err = on_pty([a.cli, "--local"] + JOB, env)
    took = time.time() - t0
    check(rc == 0, "--local on a terminal: exit 0 (%d): %r" % (rc, err[-300:]))
    check(took > 1.5, "--local: the job is slow enough to show progress (%.1f s)" % took)
    check_progress("--local", err, want_pass=True)
    piped = subprocess.run([a.cli, "--local"] + JOB, capture_output=True, env=env)
    check(piped.returncode == 0 and quiet(piped.stderr),
          "--local, stderr not a terminal: no progress on stderr (%r)" % piped.stderr[-300:])
    check(summary(piped.stdout) == summary(out), "--local: stdout the same with and without the terminal")

    # through a daemon
    d = Daemon(a.daemon, "--small-job-bytes", "0", env=SLOW)
    try:
        rc, out, err = on_pty([a.cli, "--socket", d.path] + JOB, env)
        check(rc == 0, "daemon job on a terminal: exit 0 (%d): %r" % (rc, err[-300:]))
        check_progress("daemon", err, want_pass=True)
        piped = subprocess.run([a.cli, "--socket", d.path] + JOB, capture_output=True, env=env)
        check(piped.returncode == 0 and piped.stderr == b"",
              "daemon job, stderr not a terminal: nothing on stderr (%r)" % piped.stderr[-300:])
        check(summary(piped.stdout) == summary(out), "daemon job: stdout the same with and without the terminal")
        # a short job shows nothing, terminal or not
        rc, out, err = on_pty([a.cli, "--socket", d.path, "run", "--shape", "1,1,8,8", "--input", "tf-uniform:0,1"],
                              env)
        check(rc == 0 and err == b"", "a short job on a terminal: nothing on stderr (%r)" % err[-200:])
    finally:
        d.stop(remove=True)
    print("%d passed, %d failed" % (T.passed, T.failed), flush=True)
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
