"""daemonlock: one daemon per state directory, the holder named when a second one is refused.

flock(2) locks belong to an open file description, so two acquisitions in one process conflict as two
processes would; that the kernel releases the lock when a daemon dies is shown with the real daemon
(tests/e2e/test_admin.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from watcher.daemon.daemonlock import LOCK_NAME, DaemonLock
from watcher.errors import StateDirInUse


def test_a_second_lock_on_one_state_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = DaemonLock.acquire(state, config="/etc/a.yaml")
    try:
        with pytest.raises(StateDirInUse) as refused:
            DaemonLock.acquire(state, config="/etc/b.yaml")
    finally:
        first.release()

    exc = refused.value
    assert (exc.state_dir, exc.pid, exc.config) == (str(state), os.getpid(), "/etc/a.yaml")
    assert str(exc) == (f"state_dir {state} is in use by another daemon (pid {os.getpid()}, config /etc/a.yaml); "
                        "daemons on one host need their own state_dir")


def test_a_released_lock_or_a_file_left_behind_does_not_block(tmp_path: Path) -> None:
    state = tmp_path / "state"
    DaemonLock.acquire(state, config="/etc/a.yaml").release()

    second = DaemonLock.acquire(state, config="/etc/b.yaml")
    second.release()

    assert (state / LOCK_NAME).exists()
    assert json.loads((state / LOCK_NAME).read_text()) == {"pid": os.getpid(), "config": "/etc/b.yaml"}


def test_other_state_dirs_are_independent(tmp_path: Path) -> None:
    a = DaemonLock.acquire(tmp_path / "a", config="a")
    b = DaemonLock.acquire(tmp_path / "b", config="b")
    a.release()
    b.release()


def test_a_holder_that_wrote_nothing_is_named_as_unknown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    held = DaemonLock.acquire(state, config="/etc/a.yaml")
    (state / LOCK_NAME).write_text("")   # between its open and its write
    try:
        with pytest.raises(StateDirInUse) as refused:
            DaemonLock.acquire(state, config="/etc/b.yaml")
    finally:
        held.release()
    assert (refused.value.pid, refused.value.config) == (None, None)
    assert "(pid ?, config ?)" in str(refused.value)


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (state / LOCK_NAME).symlink_to(target)

    with pytest.raises(OSError):
        DaemonLock.acquire(state, config="a")
    assert target.read_text() == "keep"
