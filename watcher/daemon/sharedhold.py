"""A 429's Retry-After hold shared by the processes of one daemon (`processes` > 1).

The API's limit is taken to be the key's, so a 429 that one process gets must hold every process's API
calls. The hold's end (a clock time, `time.time`: every process reads the same clock) lives in an
8-byte file in the state directory, mapped into each process's memory: reading it, before every API
call, costs no system call. A process that gets a 429 raises the end under the file's
`exclusive()` (the end only ever moves later); a read that meets a write half done reads again.
"""

from __future__ import annotations

import struct
from pathlib import Path

from watcher.daemon.sharedfile import SharedFile

FILE_NAME = "api-hold"
_DOUBLE = struct.Struct("d")


class SharedHold:
    def __init__(self, state_dir: Path) -> None:
        self._file = SharedFile(state_dir, FILE_NAME, _DOUBLE.size)   # zeros: no hold
        view = self._file.view
        assert view is not None
        self._map = view

    def until(self) -> float:
        """When the hold ends (0.0: there has been none)."""
        while True:
            first = _DOUBLE.unpack_from(self._map)[0]
            if _DOUBLE.unpack_from(self._map)[0] == first:
                return float(first)

    def extend(self, until: float) -> None:
        """Hold every process's API calls until `until` at least."""
        with self._file.exclusive():
            if until > self.until():
                _DOUBLE.pack_into(self._map, 0, until)

    def close(self) -> None:
        self._file.close()
