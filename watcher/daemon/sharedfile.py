"""A small file of the state directory that the processes of one daemon share (`processes` > 1).

It is mapped into each process's memory (`view`: reads cost no system call) and `exclusive()` makes one
holder across threads and processes: a lock of this object's, then an flock of the file. The flock alone
would not do: it belongs to the open file description, so it does not keep apart two threads of one
process that share the descriptor. `exclusive()` may be entered again by the thread that holds it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SharedFile:
    def __init__(self, state_dir: Path, name: str, size: int) -> None:
        """Open (create, zero-filled) `state_dir`/`name` and map its first `size` bytes (0: no map)."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(state_dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.view = mmap.mmap(fd, size) if size else None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._threads = threading.RLock()
        self._depth = 0   # how many times the holding thread entered: the flock goes with the last exit

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._threads:
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
        os.close(self._fd)
