"""A child process forked from this one, driven as `subprocess.Popen` drives one (`pid`, `poll`, `wait`,
`send_signal`, `kill`), for the supervisor's first start of its processes (`watcher.daemon.supervisor`).

An exec'd child imports the daemon again: 0.35-0.45 s of CPU (byte-compiled), and more while process 0
is already busy beside it (process 1 started 0.4-0.9 s after process 0 in `make bench`'s 0 ms runs). A
fork has everything imported. It is safe only before the threads that could hold a lock at the fork
start: the supervisor forks before its listeners and process 0's share, when its only other thread is
the signal relay's, which waits in a read and holds none. A child restarted later is exec'd.

In the child, before `main`: the environment is replaced by `env` (as exec would), SIGTERM, SIGINT and
SIGHUP are blocked from before the fork until `in_child` has undone the parent's handling of them (its
wake-up pipe, which would relay the child's signals to the parent), and `main`'s exit code ends the
process (`os._exit`: nothing of the parent's runs in it, no atexit, no `finally` of the parent's stack).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping

from watcher.errors import EXIT_FAILED

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class Forked:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def start(cls, main: Callable[[], int], env: Mapping[str, str], in_child: Callable[[], None]) -> Forked:
        """Fork; the child runs `in_child()` then `main()` and exits with its code (1 if it raised)."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()   # what is buffered would be written twice
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:   # the child: never returns
            code = EXIT_FAILED
            try:
                os.environ.clear()
                os.environ.update(env)
                in_child()
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                code = main()
            except BaseException:   # noqa: BLE001 - a bug: say it as a crashed process would, and exit
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return cls(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; raises subprocess.TimeoutExpired (as Popen.wait) if it runs `timeout` longer."""
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        try:
            fd = os.pidfd_open(self.pid)   # readable once the process has exited
        except OSError:   # before Linux 5.3: as Popen.wait, polling
            return self._poll_until(time.monotonic() + (timeout if timeout is not None else float("inf")))
        try:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
        finally:
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _poll_until(self, deadline: float) -> int:
        delay = 0.0005
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired([str(self.pid)], 0.0)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:   # never a pid that was reaped, and may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
