"""One daemon per state directory: `run` holds `<state_dir>/daemon.lock` with flock(LOCK_EX).

Two daemons on one state directory would share its spool, its read-only folders' state and, by
default, its control socket, where admin commands would reach the wrong one. The kernel releases the
lock when the process dies, however it dies, so a file left behind never blocks a start; the pid and
configuration written inside only name the holder when a second `run` is refused (`StateDirInUse`).
`sync` and `track` do not take the lock: claims keep them apart from a running daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

from watcher.errors import StateDirInUse

LOCK_NAME = "daemon.lock"
MAX_HOLDER_BYTES = 4096


class DaemonLock:
    """The held lock; `release()` (or the process's end) lets the next daemon start."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, state_dir: Path, *, config: str) -> DaemonLock:
        """Lock `state_dir` (created if missing) for this process, recording its pid and `config`.
        Raises StateDirInUse when another process holds the lock, OSError when it cannot be taken."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            pid, holder_config = _holder(fd)
            os.close(fd)
            raise StateDirInUse(str(state_dir), pid, holder_config) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "config": config}).encode() + b"\n", 0)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def fd(self) -> int:
        """The locked descriptor (the supervisor hands it to its processes: `processes`)."""
        return self._fd

    @classmethod
    def inherited(cls, fd: int) -> None:
        """Check that `fd`, inherited from the supervisor, holds the lock (flock on the same open file
        succeeds at once; on another process's lock it would fail). Raises OSError otherwise."""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and configuration the holder wrote (None for what it did not, or not yet, write)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(os.pread(fd, MAX_HOLDER_BYTES, 0))
        if isinstance(data, dict):
            pid, config = data.get("pid"), data.get("config")
            return (pid if isinstance(pid, int) else None), (config if isinstance(config, str) else None)
    return None, None
