"""After tracking (keep, move, delete) and the retention sweep, on real directories in tmp_path."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import TRACKED, marker, write_folder

from watcher.config import Config
from watcher.daemon import aftercare
from watcher.errors import StateError
from watcher.runfolder.markers import StateStore

NOW = 1_800_000_000.0
DAY = 86400.0
FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output/solution.json": b'{"value": 7}',
                                 "logs.txt": "solved\n"}

MakeConfig = Callable[..., Config]


def tracked_folder(root: Path, name: str, state_dir: Path, tracked_at: float = NOW) -> Path:
    folder = write_folder(root, name, FILES)
    StateStore(state_dir).mark_tracked(folder, f"run-{name}", "app-1", tracked_at, name=name, token="t" * 32)
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_keep_leaves_the_folder_where_it_is(make_config: MakeConfig, watched: Path, tmp_path: Path) -> None:
    folder = tracked_folder(watched, "run-1", tmp_path / "state")
    before = tree(folder)
    assert aftercare.after_tracked(folder, make_config()) == "kept"
    assert tree(folder) == before


def test_move_puts_the_whole_folder_in_done_path_under_its_name(make_config: MakeConfig, watched: Path,
                                                               done: Path, tmp_path: Path) -> None:
    folder = tracked_folder(watched, "run-1", tmp_path / "state")
    before = tree(folder)
    assert aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(done))) == "moved"
    assert visible(watched) == []
    assert tree(done / "run-1") == before
    tracked = marker(done / "run-1", TRACKED)
    assert tracked is not None and tracked["run_id"] == "run-run-1"


def test_move_onto_a_taken_name_adds_a_suffix(make_config: MakeConfig, watched: Path, done: Path,
                                              tmp_path: Path) -> None:
    config = make_config(after_tracking="move", done_path=str(done))
    (done / "run-1").mkdir()
    (done / "run-1" / "older.txt").write_text("an older run of the same name")
    (done / "run-1-1").mkdir()
    folder = tracked_folder(watched, "run-1", tmp_path / "state")
    before = tree(folder)
    assert aftercare.after_tracked(folder, config) == "moved"
    assert visible(done) == ["run-1", "run-1-1", "run-1-2"]
    assert tree(done / "run-1-2") == before
    assert (done / "run-1" / "older.txt").read_text() == "an older run of the same name"
    assert visible(done / "run-1-1") == []


def test_move_across_filesystems_copies_syncs_then_removes_the_source(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tracked_folder(watched, "run-x", tmp_path / "state")
    (folder / "output" / "link.json").symlink_to("solution.json")
    os.utime(folder / "input.json", (1_600_000_000, 1_600_000_000))
    before = tree(folder)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with structlog.testing.capture_logs() as events:
        assert aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done))) == "moved"

    assert visible(watched) == []
    moved = shm_done / "run-x"
    assert visible(shm_done) == ["run-x"]
    assert tree(moved) == before
    assert os.readlink(moved / "output" / "link.json") == "solution.json"
    assert (moved / "input.json").stat().st_mtime == 1_600_000_000   # metadata is kept
    # Every copied file and directory was fsynced (under its staging name, before the rename into place).
    synced_names = {Path(p).name for p in synced}
    for rel in ("input.json", "logs.txt", "DONE", TRACKED, "output/solution.json"):
        assert Path(rel).name in synced_names, rel
    assert "output" in synced_names and shm_done.name in synced_names
    assert any(e["event"] == "folder_moved_across_filesystems" for e in events)


def test_a_failed_cross_filesystem_copy_leaves_the_folder_whole_and_no_partial_copy(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tracked_folder(watched, "run-x", tmp_path / "state")
    before = tree(folder)
    copied: list[str] = []
    real_copy = aftercare._copy_file

    def copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
        if len(copied) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        copied.append(name)
        real_copy(src_dir, dst_dir, name, st)

    monkeypatch.setattr(aftercare, "_copy_file", copy_file)
    with pytest.raises(StateError, match="cannot copy"):
        aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done)))
    assert len(copied) == 2
    assert tree(folder) == before
    assert os.listdir(shm_done) == []


def test_a_copy_refused_for_a_fifo_says_so_in_words(make_config: MakeConfig, watched: Path, shm_done: Path,
                                                    tmp_path: Path) -> None:
    folder = tracked_folder(watched, "run-x", tmp_path / "state")
    os.mkfifo(folder / "pipe")

    with pytest.raises(StateError) as excinfo:
        aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done)))

    assert str(excinfo.value) == f"{folder}: cannot copy to {shm_done}: pipe: a FIFO cannot be copied"
    assert os.listdir(shm_done) == [] and (folder / "pipe").exists()


def test_a_source_that_cannot_be_removed_after_the_copy_keeps_only_the_source(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tracked_folder(watched, "run-x", tmp_path / "state")
    before = tree(folder)
    real_rename = os.rename
    refused: list[str] = []

    def rename(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        if src == folder.name and str(dst).startswith(aftercare.REMOVING):   # hiding the source to remove it
            refused.append(str(dst))
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(StateError, match="cannot remove"):
        aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done)))
    assert refused, "the source was copied and then could not be hidden"
    assert tree(folder) == before
    assert os.listdir(shm_done) == []


def test_delete_removes_the_folder(make_config: MakeConfig, watched: Path, tmp_path: Path) -> None:
    folder = tracked_folder(watched, "run-1", tmp_path / "state")
    other = tracked_folder(watched, "run-2", tmp_path / "state")
    assert aftercare.after_tracked(folder, make_config(after_tracking="delete")) == "deleted"
    assert os.listdir(watched) == ["run-2"]   # no hidden leftover either
    assert marker(other, TRACKED) is not None


def test_a_move_that_fails_raises_state_error_and_leaves_the_folder(make_config: MakeConfig, watched: Path,
                                                                   done: Path, tmp_path: Path) -> None:
    config = make_config(after_tracking="move", done_path=str(done))
    folder = tracked_folder(watched, "run-1", tmp_path / "state")
    shutil.rmtree(done)
    with pytest.raises(StateError):
        aftercare.after_tracked(folder, config)
    assert marker(folder, TRACKED) is not None


# --- retention -----------------------------------------------------------------------------------


def test_retention_removes_only_tracked_folders_older_than_retention_days(
        make_config: MakeConfig, watched: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = tracked_folder(watched, "old", state, tracked_at=NOW - 8 * DAY)
    recent = tracked_folder(watched, "recent", state, tracked_at=NOW - 6 * DAY)
    failed = write_folder(watched, "failed-old", FILES)
    StateStore(state).mark_failed(failed, "rejected", 1, NOW - 30 * DAY, reason="rejected")
    untracked = write_folder(watched, "untracked-old", FILES)
    os.utime(untracked, (NOW - 30 * DAY, NOW - 30 * DAY))
    hidden = watched / ".tmp-old"
    hidden.mkdir()
    StateStore(state).mark_tracked(hidden, "run-h", "app-1", NOW - 30 * DAY)

    with structlog.testing.capture_logs() as events:
        removed = aftercare.sweep_retention(make_config(retention_days=7), NOW)
    assert removed == 1
    assert not old.exists()
    assert visible(watched) == sorted([".tmp-old", "failed-old", "recent", "untracked-old"])
    assert marker(recent, TRACKED) is not None
    assert [e["folder"] for e in events if e["event"] == "retention_removed"] == [str(old)]


def test_retention_sweeps_done_path_when_folders_are_moved(make_config: MakeConfig, watched: Path, done: Path,
                                                           tmp_path: Path) -> None:
    state = tmp_path / "state"
    moved_old = tracked_folder(done, "moved-old", state, tracked_at=NOW - 3 * DAY)
    moved_new = tracked_folder(done, "moved-new", state, tracked_at=NOW - 1 * DAY)
    stranger = done / "not-ours"
    stranger.mkdir()
    config = make_config(after_tracking="move", done_path=str(done), retention_days=2)
    assert aftercare.sweep_retention(config, NOW) == 1
    assert not moved_old.exists()
    assert moved_new.exists() and stranger.exists()


def test_retention_accepts_explicit_roots_and_is_off_without_retention_days(
        make_config: MakeConfig, watched: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    folder = tracked_folder(other, "old", tmp_path / "state", tracked_at=NOW - 10 * DAY)
    assert aftercare.sweep_retention(make_config(), NOW, roots=[other]) == 0
    assert folder.exists()
    assert aftercare.sweep_retention(make_config(retention_days=1), NOW, roots=[other]) == 1
    assert not folder.exists()


def test_retention_finishes_removals_that_were_cut_short(make_config: MakeConfig, watched: Path,
                                                         tmp_path: Path) -> None:
    leftover = watched / f"{aftercare.REMOVING}0123456789abcdef"
    (leftover / "output").mkdir(parents=True)
    (leftover / "output" / "solution.json").write_text("{}")
    assert aftercare.sweep_retention(make_config(retention_days=7), NOW) == 0
    assert not leftover.exists()
