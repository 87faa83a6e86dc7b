"""testlib.py: what the Python test scripts share (they import it from their own folder).

  Tally        pass/fail counts; check(cond, what) prints each failure
  Daemon       a dropblockd on a socket, started, waited for and stopped
  daemon_cmd   its command line under $DROPBLOCK_DAEMON_WRAPPER (tests/valgrind.sh sets one)

Python standard library only.
"""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

WRAPPER = shlex.split(os.environ.get("DROPBLOCK_DAEMON_WRAPPER", ""))
# slower start-up and jobs under a wrapper such as valgrind
SLOW = 10 if WRAPPER else 1


def daemon_cmd(exe, *args):
    return [*WRAPPER, exe, *args]


class Tally:
    """A script's pass/fail counts."""

    def __init__(self):
        self.passed = self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL", what, flush=True)
        return cond


class DaemonError(RuntimeError):
    pass


def accepts(path):
    """Whether something accepts connections on the Unix socket path."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
        return True
    except OSError:
        return False


class Daemon:
    """`exe --socket SOCK --log-level info ARGS...` (under the wrapper), its stderr in a log.

    SOCK defaults to d.sock in a new private temporary directory; dir is SOCK's directory, and the
    log is in a temporary directory of its own. Returns once ready(self) holds (default: the
    socket accepts a connection); raises DaemonError with the log's tail where the daemon exits
    first or is not ready within timeout seconds (ten times that under a wrapper)."""

    def __init__(self, exe, *args, sock=None, env=None, ready=None, timeout=120):
        self.own_dir = sock is None
        self.path = sock or os.path.join(tempfile.mkdtemp(prefix="dbd-"), "d.sock")
        self.dir = os.path.dirname(self.path)
        self.logdir = tempfile.mkdtemp(prefix="dbd-log-")
        self.log = open(os.path.join(self.logdir, "dropblockd.log"), "w+")
        self.proc = subprocess.Popen(daemon_cmd(exe, "--socket", self.path, "--log-level", "info", *args),
                                     stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=None if env is None else {**os.environ, **env})
        ready = ready or (lambda d: accepts(d.path))
        end = time.time() + timeout * SLOW
        while time.time() < end:
            if self.proc.poll() is not None:
                raise DaemonError("dropblockd exited with %d: %s" % (self.proc.returncode, self.logtext()))
            if os.path.exists(self.path) and ready(self):
                return
            time.sleep(0.05)
        self.stop()
        raise DaemonError("dropblockd was not ready within %d s: %s" % (timeout * SLOW, self.logtext()))

    def logtext(self, tail=3000):
        if self.log.closed:  # removed by stop(remove=True), which kept its text
            return self.kept_log[-tail:]
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-tail:]

    def stop(self, timeout=30, remove=False):
        """SIGTERM (SIGKILL after timeout seconds); the exit status. remove: the log's directory
        and a socket directory of its own go too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if remove:
            self.kept_log = self.logtext(tail=1 << 20)
            self.log.close()
            shutil.rmtree(self.logdir, ignore_errors=True)
            if self.own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode
