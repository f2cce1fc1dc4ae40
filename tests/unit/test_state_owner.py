"""An admin's command run as root keeps the owner and mode of the daemon's state files it rewrites, so
that the daemon (another user) can still read them (never with execute or special bits); a file of an
untrusted owner gets no such favour.

Real files on tmp_path (ownership is the point); root only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.runfolder.markers import FAILED, JOURNAL, Intent, Journal, StateStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")

DAEMON_UID = 4321   # the daemon's user: owns the state directory
STRANGER = 4999     # a producer, say


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, DAEMON_UID, DAEMON_UID)
    return StateStore(state)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "runs" / "r1"
    path.mkdir(parents=True)
    return path


def owned(path: Path, uid: int, mode: int) -> None:
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def test_retry_as_root_keeps_the_daemons_journal_its_own(store: StateStore, folder: Path) -> None:
    store.save_journal(folder, Journal(application_id="app", attempts=10, last_error="boom",
                                       intents=[Intent("ab" * 16, 5.0)]))   # an open intent: the journal stays
    store.mark_failed(folder, "boom", 10, 1.0, reason="exhausted")
    owned(folder / JOURNAL, DAEMON_UID, 0o600)
    owned(folder / FAILED, DAEMON_UID, 0o640)

    assert store.clear_failure(folder)

    st = (folder / JOURNAL).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (DAEMON_UID, DAEMON_UID, 0o600)
    assert store.journal(folder).attempts == 0, "rewritten"


def test_a_rewrite_keeps_no_execute_or_special_bits(store: StateStore, folder: Path) -> None:
    store.save_journal(folder, Journal(application_id="app"))
    owned(folder / JOURNAL, DAEMON_UID, 0o6770)

    store.save_journal(folder, Journal(application_id="app", attempts=1))

    st = (folder / JOURNAL).stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (DAEMON_UID, 0o660)


def test_a_file_of_an_untrusted_owner_is_replaced_by_roots(store: StateStore, folder: Path) -> None:
    store.save_journal(folder, Journal(application_id="app"))
    owned(folder / JOURNAL, STRANGER, 0o666)

    store.save_journal(folder, Journal(application_id="app", attempts=1))

    st = (folder / JOURNAL).stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o640)
