"""A 429's Retry-After hold shared by the processes of one daemon (`processes` > 1).

The API's limit is taken to be the key's, so a 429 that one process gets must hold every process's API
calls. The hold's end (a clock time, `time.time`: every process reads the same clock) lives in an
8-byte file in the state directory, mapped into each process's memory: reading it, before every API
call, costs no system call. A process that gets a 429 raises the end under an flock of the file (and a lock of its own,
for its threads) (the
end only ever moves later); a read that meets a write half done reads again.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

FILE_NAME = "api-hold"
_DOUBLE = struct.Struct("d")


class SharedHold:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(state_dir / FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if os.fstat(fd).st_size < _DOUBLE.size:
                os.ftruncate(fd, _DOUBLE.size)   # zeros: no hold
            self._map = mmap.mmap(fd, _DOUBLE.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._threads = threading.Lock()   # an flock does not keep apart threads sharing the descriptor

    def until(self) -> float:
        """When the hold ends (0.0: there has been none)."""
        while True:
            first = _DOUBLE.unpack_from(self._map)[0]
            if _DOUBLE.unpack_from(self._map)[0] == first:
                return float(first)

    def extend(self, until: float) -> None:
        """Hold every process's API calls until `until` at least."""
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if until > self.until():
                    _DOUBLE.pack_into(self._map, 0, until)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
