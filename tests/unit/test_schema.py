"""The state files' schema: what this version writes, what it reads (0.1's files included), and that a
file written by a newer nextmv-watcher is never trusted (`watcher.runfolder.schema`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import write_config, write_folder
from worker_harness import T0, Harness

from watcher.config import load_config
from watcher.daemon import aftercare
from watcher.daemon.index import NEWER_SCHEMA, Stage
from watcher.errors import InvalidFolder, NewerState, StateError
from watcher.runfolder.markers import FAILED, JOURNAL, STATE_FILES, TRACKED, Intent, Journal, StateStore, UploadRecord
from watcher.runfolder.scan import scan_all, table
from watcher.runfolder.schema import SCHEMA, check, first_newer, schema_of


def test_this_version_writes_schema_1() -> None:
    assert SCHEMA == 1


@pytest.mark.parametrize(("data", "schema"), [({}, 1), ({"run_id": "r"}, 1), ({"schema": 1}, 1), ({"schema": 7}, 7)])
def test_a_file_without_schema_is_schema_1(data: dict[str, Any], schema: int) -> None:
    """0.1 wrote no `schema`: its files are schema 1."""
    assert schema_of(data, "f/.nextmv-journal.json") == schema


@pytest.mark.parametrize("value", [0, -1, "1", 1.0, 1.5, True, None, [1]])
def test_a_schema_that_is_not_a_whole_number_from_1_is_a_state_error(value: object) -> None:
    with pytest.raises(StateError, match=r"f/\.nextmv-tracked\.json: schema .* is not a whole number from 1"):
        schema_of({"schema": value}, "f/.nextmv-tracked.json")


def test_check_passes_this_version_s_files_and_0_1_s() -> None:
    for data in ({"run_id": "r"}, {"run_id": "r", "schema": 1}):
        assert check(data, "/runs/a", ".nextmv-tracked.json") is data


def test_check_refuses_a_newer_file_naming_it_and_its_schema() -> None:
    with pytest.raises(NewerState) as exc:
        check({"schema": 99, "run_id": "r"}, "/runs/a", ".nextmv-tracked.json")
    assert (exc.value.folder, exc.value.name, exc.value.schema) == ("/runs/a", ".nextmv-tracked.json", 99)
    assert exc.value.problem == ".nextmv-tracked.json written by a newer nextmv-watcher (schema 99)"
    assert str(exc.value) == "/runs/a: .nextmv-tracked.json written by a newer nextmv-watcher (schema 99); left alone"


def test_first_newer_finds_the_first_newer_file_and_leaves_unreadable_ones_to_their_readers() -> None:
    files: dict[str, Exception | None] = {
        "a": None,                                              # absent or readable
        "b": StateError("not valid JSON"),                      # its reader says so when it acts on it
        "c": InvalidFolder("/runs/x", "c is a FIFO"),           # not ours: its reader fails the folder
        "d": NewerState("/runs/x", "d", 2),
        "e": NewerState("/runs/x", "e", 3),
    }

    def read(name: str) -> None:
        error = files[name]
        if error is not None:
            raise error

    found = first_newer(read, list(files))
    assert found is not None and (found.name, found.schema) == ("d", 2)
    assert first_newer(read, ["a", "b", "c"]) is None


# --- the store: what it writes, what it reads -------------------------------------------------------


NEWER_TRACKED = {"schema": 99, "run_id": "run-from-the-future", "tracked_at": "2030-01-01T00:00:00.000Z"}


@pytest.fixture
def folder(run: Path) -> Path:
    """The conftest's empty run folder."""
    return run


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def raw(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / name).read_bytes())


def test_every_state_file_carries_the_schema_at_its_top_level(store: StateStore, folder: Path) -> None:
    store.mark_tracked(folder, "run-1", "app", 1.0, name="n", token="t")
    store.mark_failed(folder, "bad", 1, 1.0, reason="invalid")
    store.save_journal(folder, Journal(attempts=2, application_id="app", lookups_inconclusive=1,
                                       uploads={"input": UploadRecord("up-1", 1.0, {"input.json": [1, 2, 3]})},
                                       intents=[Intent("t" * 32, 1.0)]))
    for name in STATE_FILES:
        assert raw(folder, name)["schema"] == SCHEMA


def test_new_journal_fields_go_at_the_top_level_so_0_1_can_read_it(store: StateStore, folder: Path) -> None:
    """0.1 builds `UploadRecord(**rec)` and `Intent(**i)`, refusing unknown keys there, and ignores
    unknown top-level keys: so intents and uploads keep exactly 0.1's keys."""
    store.save_journal(folder, Journal(attempts=1, application_id="app", repeats=1, lookups_inconclusive=2,
                                       state_error="disk full", last_error="x",
                                       uploads={"input": UploadRecord("up-1", 1.0, {"input.json": [1, 2, 3]})},
                                       intents=[Intent("t" * 32, 1.0)]))
    data = raw(folder, JOURNAL)
    assert [set(i) for i in data["intents"]] == [{"token", "created_at"}]
    assert [set(u) for u in data["uploads"].values()] == [{"upload_id", "obtained_at", "fingerprint"}]
    assert set(data) - {"attempts", "next_attempt_at", "last_error", "uploads", "intents"} == {
        "schema", "repeats", "application_id", "lookups_inconclusive", "state_error"}


def test_files_written_by_0_1_read_as_they_are(store: StateStore, folder: Path) -> None:
    (folder / TRACKED).write_text('{"run_id": "r-0.1", "application_id": "app", "tracked_at": "2026-11-25T00:00:00Z"}')
    (folder / JOURNAL).write_text('{"attempts": 2, "next_attempt_at": null, "last_error": "HTTP 503", "uploads": {}, '
                                  '"intents": [{"token": "' + "a" * 32 + '", "created_at": 5.0}]}')
    assert store.tracked(folder) == {"run_id": "r-0.1", "application_id": "app", "tracked_at": "2026-11-25T00:00:00Z"}
    journal = store.journal(folder)
    assert (journal.attempts, [i.token for i in journal.intents]) == (2, ["a" * 32])
    assert first_newer(lambda name: store.read(folder, name), STATE_FILES) is None


@pytest.mark.parametrize("name", STATE_FILES)
def test_a_file_of_a_newer_version_is_never_trusted(store: StateStore, folder: Path, name: str) -> None:
    (folder / name).write_text(json.dumps({**NEWER_TRACKED, "attempts": 0}))
    with pytest.raises(NewerState, match=rf"{name} written by a newer nextmv-watcher \(schema 99\)"):
        store.read(folder, name)
    found = first_newer(lambda n: store.read(folder, n), STATE_FILES)
    assert found is not None and (found.name, found.schema) == (name, 99)


def test_a_newer_marker_still_says_the_folder_is_finished(store: StateStore, folder: Path) -> None:
    """Never tracked again: a marker's existence is enough, whatever its schema."""
    (folder / TRACKED).write_text(json.dumps(NEWER_TRACKED))
    assert store.finished(folder) == "tracked"
    assert store.quick_state(folder) == "tracked"


@pytest.mark.parametrize("name", [FAILED, JOURNAL])
def test_retry_leaves_a_newer_version_s_failure_alone(store: StateStore, folder: Path, name: str) -> None:
    (folder / FAILED).write_text(json.dumps({"error": "bad", "attempts": 1, "failed_at": "x", "reason": "invalid"}))
    (folder / name).write_text(json.dumps({"schema": 2, "error": "bad", "attempts": 1}))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(NewerState):
        store.clear_failure(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- the daemon's worker, scan and after-tracking ---------------------------------------------------


FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"value": 7}'}


def snapshot(folder: Path) -> tuple[int, dict[str, bytes]]:
    """The directory's mtime (a claim made and removed changes it) and every file's bytes."""
    return folder.stat().st_mtime_ns, {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", [JOURNAL, TRACKED, FAILED])
def test_the_worker_leaves_a_newer_version_s_folder_alone_and_says_so_once(
        tmp_path: Path, watched: Path, name: str) -> None:
    h = Harness(tmp_path, watched)
    folder = write_folder(watched, "from-the-future", FILES)
    (folder / name).write_text(json.dumps({**NEWER_TRACKED, "intents": [{"token": "t", "created_at": 1, "new": 1}]}))
    before = snapshot(folder)
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
        again = h.step(folder)   # a full reconcile offers it again
    assert (found.stage, found.reason, found.detail) == (
        Stage.FINISHED, NEWER_SCHEMA, f"{name} written by a newer nextmv-watcher (schema 99)")
    assert again == found
    assert [(e["event"], e["log_level"], e["file"], e["schema"]) for e in events] == [
        ("state_newer", "warning", name, 99)]
    assert h.tracker.calls == 0
    assert snapshot(folder) == before, "never claimed or changed"
    assert h.index.left_alone() == [(folder, found.detail)]
    assert h.index.is_finished(folder, folder.stat().st_ino)
    assert h.outcomes.totals() == {"tracked": 0, "failed": 0, "retried": 0}


def test_scan_shows_a_newer_version_s_folder(tmp_path: Path, watched: Path) -> None:
    h = Harness(tmp_path, watched)
    folder = write_folder(watched, "from-the-future", FILES)
    (folder / TRACKED).write_text(json.dumps(NEWER_TRACKED))
    ordinary = write_folder(watched, "today", FILES)
    reports = list(scan_all(h.config, h.store, T0))
    assert [(r.folder, r.state, r.reason) for r in reports] == [
        (str(folder), "newer", ".nextmv-tracked.json written by a newer nextmv-watcher (schema 99); left alone by "
                               "this version"),
        (str(ordinary), "pending", "complete; waiting to be tracked")]
    assert table(reports)[-1] == "0 tracked, 0 failed, 1 pending, 0 incomplete, 0 invalid, 1 newer"
    assert table(reports[1:])[-1] == "0 tracked, 0 failed, 1 pending, 0 incomplete, 0 invalid"


def test_after_tracking_and_retention_leave_a_newer_version_s_folder_where_it_is(
        tmp_path: Path, watched: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    config = load_config(write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", [(watched, "app-1")],
                                      tmp_path / "state", after_tracking="move", done_path=str(done),
                                      retention_days=1))
    folder = write_folder(watched, "from-the-future", FILES)
    (folder / TRACKED).write_text(json.dumps({**NEWER_TRACKED, "tracked_at": "2000-01-01T00:00:00.000Z"}))
    before = snapshot(folder)
    with structlog.testing.capture_logs() as events:
        assert aftercare.after_tracked_logged(folder, config) is False   # the start-up scan's resume
        assert aftercare.sweep_retention(config, T0) == 0
    assert snapshot(folder) == before
    assert os.listdir(done) == []
    assert [(e["event"], e["log_level"], e["file"]) for e in events] == [("state_newer", "warning", TRACKED)]
