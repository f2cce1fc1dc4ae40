"""StateStore: atomic marker and journal files, in the run folder or, when it is read-only, in the state dir."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyfakefs import helpers
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.errors import StateError
from watcher.runfolder.markers import (
    FAILED,
    JOURNAL,
    TRACKED,
    Intent,
    Journal,
    StateStore,
    UploadRecord,
    atomic_write,
    parse_iso,
    utc_iso,
)

RUNS = Path("/runs")
STATE = Path("/var/lib/nextmv-watcher")


@pytest.fixture
def folder(fs: FakeFilesystem) -> Path:
    fs.create_dir(RUNS / "run-1")
    fs.create_dir(STATE)
    os.chmod(STATE, 0o777)  # writable by the unprivileged user of some tests
    return RUNS / "run-1"


@pytest.fixture
def store(folder: Path) -> StateStore:
    return StateStore(STATE, owners=[1000])   # the ordinary user of some tests writes state too


@contextlib.contextmanager
def as_user(uid: int = 1000) -> Iterator[None]:
    """Act as an ordinary user inside pyfakefs, so that the root-owned run folder is read-only.
    (helpers.reset_ids() cannot be used to switch back: under pyfakefs it reads the faked uid.)"""
    saved = helpers.get_uid()
    helpers.set_uid(uid)
    try:
        yield
    finally:
        helpers.set_uid(saved)


@pytest.fixture
def unprivileged(fs: FakeFilesystem) -> Iterator[None]:
    with as_user():
        yield


def a_journal() -> Journal:
    return Journal(
        attempts=2,
        next_attempt_at=1700000100.5,
        last_error="HTTP 503",
        uploads={"input": UploadRecord("up-in", 1700000000.25, {"input.json": [12, 1, 2]}),
                 "output": UploadRecord("up-out", 1700000001.0, {"output/a.csv": [3, 4, 5]})},
        intents=[Intent("a" * 32, 1700000002.0), Intent("b" * 32, 1700000003.0)],
    )


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(folder: Path) -> None:
    target = folder / "x.json"
    atomic_write(target, b'{"v": 1}')
    atomic_write(target, b'{"v": 2}')

    assert target.read_bytes() == b'{"v": 2}'
    assert os.listdir(folder) == ["x.json"]


def test_a_failed_atomic_write_raises_and_leaves_no_temporary_file(folder: Path, unprivileged: None) -> None:
    with pytest.raises(PermissionError):
        atomic_write(folder / "x.json", b"{}")

    assert os.listdir(folder) == []


# --- markers and journal -------------------------------------------------------------------------


def test_markers_are_written_in_the_folder_and_read_back(store: StateStore, folder: Path) -> None:
    store.mark_tracked(folder, "run-9", "app", 1700000000.0, name="n", token="t")
    store.mark_failed(folder, "bad input", 3, 1700000060.0)

    assert json.loads((folder / TRACKED).read_text()) == {
        "run_id": "run-9", "application_id": "app", "tracked_at": "2023-11-14T22:13:20.000Z",
        "name": "n", "token": "t", "schema": 1}
    assert store.tracked(folder) == json.loads((folder / TRACKED).read_text())
    assert store.failed(folder) == {"error": "bad input", "attempts": 3, "failed_at": "2023-11-14T22:14:20.000Z",
                                    "schema": 1}
    assert sorted(os.listdir(folder)) == [FAILED, TRACKED]


def test_a_folder_without_state_reads_as_nothing(store: StateStore, folder: Path) -> None:
    assert store.tracked(folder) is None
    assert store.failed(folder) is None
    assert store.journal(folder) == Journal()
    assert store.journal(folder).is_empty


def test_the_journal_round_trips_through_its_file(store: StateStore, folder: Path) -> None:
    journal = a_journal()

    store.save_journal(folder, journal)

    assert store.journal(folder) == journal
    assert not store.journal(folder).is_empty


def test_journal_json_round_trip_keeps_uploads_and_intents() -> None:
    journal = a_journal()

    again = Journal.from_json(json.loads(json.dumps(journal.to_json())))

    assert again == journal
    assert again.uploads["output"].fingerprint == {"output/a.csv": [3, 4, 5]}
    assert [i.token for i in again.intents] == ["a" * 32, "b" * 32]


@pytest.mark.parametrize("data", [
    {"uploads": {"input": {"upload_id": "u"}}},
    {"intents": [{"token": "t", "created_at": 1, "extra": 2}]},
    {"attempts": "many"},
    {"uploads": ["input"]},
])
def test_a_journal_of_the_wrong_shape_is_a_state_error(data: dict[str, object]) -> None:
    with pytest.raises(StateError, match="unexpected shape"):
        Journal.from_json(data)


@pytest.mark.parametrize("content", [b'{"run_id": "r"', b"[1, 2]", b"\xff\xfe", b""])
def test_reading_a_corrupt_state_file_is_a_state_error(
        store: StateStore, folder: Path, fs: FakeFilesystem, content: bytes) -> None:
    fs.create_file(folder / TRACKED, contents=content)

    with pytest.raises(StateError, match=TRACKED):
        store.tracked(folder)


def test_remove_deletes_the_file_and_reports_whether_it_existed(store: StateStore, folder: Path) -> None:
    store.save_journal(folder, a_journal())

    assert store.remove(folder, JOURNAL) is True
    assert not (folder / JOURNAL).exists()
    assert store.remove(folder, JOURNAL) is False
    store.clear_journal(folder)  # clearing an absent journal is fine
    assert store.journal(folder) == Journal()


def test_writing_into_a_vanished_folder_is_a_state_error(store: StateStore, folder: Path) -> None:
    with pytest.raises(StateError, match="run folder vanished"):
        store.mark_tracked(RUNS / "gone", "r", "app", 0.0)


# --- fallback for read-only folders ----------------------------------------------------------------


def test_a_read_only_folder_keeps_its_state_in_the_state_dir(
        store: StateStore, folder: Path, unprivileged: None) -> None:
    where = store.write(folder, TRACKED, {"run_id": "r1"})

    assert where.parent.parent == STATE / "folders"
    assert where == store.fallback_dir(folder) / TRACKED
    assert os.listdir(folder) == []
    assert store.tracked(folder) == {"run_id": "r1", "schema": 1}
    assert os.listdir(where.parent) == [TRACKED]  # no temporary file left beside it


def test_the_fallback_journal_round_trips_and_can_be_removed(
        store: StateStore, folder: Path, unprivileged: None) -> None:
    journal = a_journal()
    store.save_journal(folder, journal)

    assert store.journal(folder) == journal
    store.clear_journal(folder)
    assert store.journal(folder) == Journal()
    assert not (store.fallback_dir(folder) / JOURNAL).exists()


def test_a_new_folder_reusing_the_name_does_not_see_the_old_fallback_marker(
        store: StateStore, folder: Path, fs: FakeFilesystem) -> None:
    with as_user():
        old_marker = store.write(folder, TRACKED, {"run_id": "old"})
    assert store.tracked(folder) == {"run_id": "old", "schema": 1}
    old_inode = folder.stat().st_ino
    os.rmdir(folder)
    fs.create_dir(folder)
    assert folder.stat().st_ino != old_inode

    assert store.tracked(folder) is None
    assert old_marker.exists()


def test_a_marker_in_the_folder_wins_over_a_fallback_one(
        store: StateStore, folder: Path) -> None:
    with as_user():
        store.write(folder, TRACKED, {"run_id": "fallback"})
    store.write(folder, TRACKED, {"run_id": "in-folder"})

    assert store.tracked(folder) == {"run_id": "in-folder", "schema": 1}
    assert store.remove(folder, TRACKED) is True
    assert store.tracked(folder) is None  # both copies were removed


def test_when_neither_place_is_writable_the_error_says_so(folder: Path, fs: FakeFilesystem) -> None:
    fs.create_dir("/locked")
    os.chmod("/locked", 0o755)
    store = StateStore(Path("/locked"))
    with as_user(), pytest.raises(StateError, match="not writable and neither is"):
        store.write(folder, TRACKED, {"run_id": "r"})


# --- timestamps ----------------------------------------------------------------------------------


def test_utc_iso_has_milliseconds_and_a_z() -> None:
    assert utc_iso(1700000000.123) == "2023-11-14T22:13:20.123Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("ts", [0.0, 1700000000.123, 1999999999.999])
def test_parse_iso_inverts_utc_iso(ts: float) -> None:
    assert parse_iso(utc_iso(ts)) == pytest.approx(ts, abs=1e-6)


def test_parse_iso_accepts_offsets() -> None:
    assert parse_iso("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_iso("2023-11-14T22:13:20.5Z") == 1700000000.5
