"""SharedFile: one holder of `exclusive()` across threads and processes, re-entered by its holder."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from watcher.daemon.sharedfile import SharedFile


def _flock_free(path: Path) -> bool:
    """Whether another open file description (as another process has) can take the flock now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)   # closing the only descriptor of the description drops its flock
    return True


def test_the_file_is_created_zero_filled_and_mapped(tmp_path: Path) -> None:
    shared = SharedFile(tmp_path / "state", "x", 16)
    assert shared.view is not None and bytes(shared.view) == b"\0" * 16
    shared.view[0:1] = b"\1"
    assert (tmp_path / "state" / "x").read_bytes()[:1] == b"\1"
    shared.close()
    unmapped = SharedFile(tmp_path / "state", "y", 0)
    assert unmapped.view is None
    unmapped.close()


def test_the_flock_is_held_until_the_holders_last_exit(tmp_path: Path) -> None:
    shared = SharedFile(tmp_path, "turn", 0)
    assert _flock_free(tmp_path / "turn")
    with shared.exclusive():
        assert not _flock_free(tmp_path / "turn")
        with shared.exclusive():   # the holder enters again: no deadlock
            assert not _flock_free(tmp_path / "turn")
        assert not _flock_free(tmp_path / "turn"), "the inner exit must not drop the outer holder's flock"
    assert _flock_free(tmp_path / "turn")


def test_threads_of_one_process_are_kept_apart(tmp_path: Path) -> None:
    shared = SharedFile(tmp_path, "turn", 0)
    entered = threading.Event()

    def other() -> None:
        with shared.exclusive():
            entered.set()

    with shared.exclusive():
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.2), "a second thread got in while the first held it"
    assert entered.wait(10)
    thread.join(10)
    assert not thread.is_alive()
