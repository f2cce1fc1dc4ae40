"""After tracking, attacked: the producer swaps its folder's name for a symlink to another team's folder
(or for another directory) between tracking and the move or delete, plants FIFOs, symlinks and set-uid
files for a copy across filesystems, and trees too deep for a recursive removal. Nothing outside the
tracked folder may be moved, copied or deleted; errors are StateError, never a traceback.

Real directories in tmp_path; the other filesystem is /dev/shm (a tmpfs here)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import TRACKED, marker, write_folder
from hostile_fs import SECRET, TOO_DEEP, deep_dirs, loaded_fifo

from watcher.config import Config
from watcher.daemon import aftercare
from watcher.errors import StateError
from watcher.runfolder.markers import StateStore
from watcher.runfolder.rundir import RunDir

pytestmark = pytest.mark.usefixtures("no_fd_leak")

NOW = 1_800_000_000.0
FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output/solution.json": b'{"value": 7}'}
MakeConfig = Callable[..., Config]


@pytest.fixture
def other_team(tmp_path: Path) -> Path:
    """Another team's tracked folder, in its own watched path: nothing may touch it."""
    folder = write_folder(tmp_path / "team-b", "their-run", {"input.json": SECRET, "output.json": b"{}"})
    StateStore(tmp_path / "state").mark_tracked(folder, "run-b", "app-b", NOW)
    return folder


def tracked(watched: Path, tmp_path: Path, name: str = "run-1", files: dict[str, str | bytes] = FILES) -> Path:
    folder = write_folder(watched, name, files)
    StateStore(tmp_path / "state").mark_tracked(folder, f"run-{name}", "app-1", NOW)
    return folder


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root` (symlinks as their target text), never following a symlink."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def swap(folder: Path, replacement: Path | None, *, symlink_to: Path | None = None) -> Path:
    """The producer moves its tracked folder away and puts something else under its name."""
    away = folder.parent / ".moved-away"
    folder.rename(away)
    if symlink_to is not None:
        folder.symlink_to(symlink_to)
    elif replacement is not None:
        replacement.rename(folder)
    return away


# --- the name swapped between tracking and acting -----------------------------------------------------

ACTIONS = ["delete", "move", "move across filesystems"]


def config_for(action: str, make_config: MakeConfig, done: Path, shm_done: Path) -> tuple[Config, Path]:
    if action == "delete":
        return make_config(after_tracking="delete"), done
    target = shm_done if action.endswith("filesystems") else done
    return make_config(after_tracking="move", done_path=str(target)), target


@pytest.mark.parametrize("action", ACTIONS)
def test_a_name_swapped_for_a_symlink_to_another_teams_folder_touches_nothing(
        action: str, make_config: MakeConfig, watched: Path, done: Path, shm_done: Path, tmp_path: Path,
        other_team: Path) -> None:
    config, target = config_for(action, make_config, done, shm_done)
    folder = tracked(watched, tmp_path)
    theirs = tree(other_team)
    with RunDir.open(folder) as d:
        ours = tree(folder)
        away = swap(folder, None, symlink_to=other_team)
        with pytest.raises(StateError, match=r"not the tracked folder|cannot move"):
            aftercare.after_tracked(folder, config, d)
    assert tree(other_team) == theirs and marker(other_team, TRACKED) is not None
    assert folder.is_symlink() and os.readlink(folder) == str(other_team)   # left as the producer made it
    assert tree(away) == ours
    assert os.listdir(target) == [] or action == "delete"
    assert sorted(os.listdir(watched)) == [".moved-away", "run-1"]


@pytest.mark.parametrize("action", ACTIONS)
def test_a_name_swapped_for_another_directory_touches_nothing(
        action: str, make_config: MakeConfig, watched: Path, done: Path, shm_done: Path, tmp_path: Path) -> None:
    config, target = config_for(action, make_config, done, shm_done)
    folder = tracked(watched, tmp_path)
    impostor = write_folder(watched, "impostor", {"input.json": b'{"not": "tracked"}'}, via_dot=False)
    expected = tree(impostor)
    with RunDir.open(folder) as d:
        ours = tree(folder)
        away = swap(folder, impostor)
        with pytest.raises(StateError, match="not the tracked folder any more"):
            aftercare.after_tracked(folder, config, d)
    assert tree(folder) == expected   # the impostor, back under the name, whole
    assert tree(away) == ours
    assert os.listdir(target) == [] or action == "delete"


def test_a_symlinked_name_is_not_opened_when_no_open_folder_is_given(
        make_config: MakeConfig, watched: Path, other_team: Path) -> None:
    (watched / "run-1").symlink_to(other_team)
    theirs = tree(other_team)
    with pytest.raises(StateError, match="cannot open"):
        aftercare.after_tracked(watched / "run-1", make_config(after_tracking="delete"))
    assert tree(other_team) == theirs


@pytest.mark.parametrize("action", ["delete", "move"])
def test_a_folder_opened_by_name_must_be_tracked_when_opened(
        action: str, make_config: MakeConfig, watched: Path, done: Path, tmp_path: Path) -> None:
    """The start-up scan judges 'tracked' by path; by the time the folder is opened the name may hold
    an untracked folder (deleted and recreated): it is not moved or deleted."""
    config = make_config(after_tracking=action, done_path=str(done))
    folder = tracked(watched, tmp_path)
    shutil.rmtree(folder)
    fresh = write_folder(watched, "run-1", {"input.json": b'{"new": true}'})
    before = tree(fresh)
    with pytest.raises(StateError, match="not tracked"):
        aftercare.after_tracked(folder, config)
    assert tree(fresh) == before
    assert os.listdir(done) == []


# --- a copy across filesystems ------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_fifo_inside_fails_the_copy_unread_and_leaves_the_folder_whole(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path) -> None:
    folder = tracked(watched, tmp_path)
    with loaded_fifo(folder / "output" / "pipe") as untouched:
        before = tree(folder)
        with pytest.raises(StateError, match=r"cannot copy.*pipe: a FIFO cannot be copied"):
            aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done)))
        assert untouched()
    assert tree(folder) == before
    assert os.listdir(shm_done) == []


def test_symlinks_are_copied_as_symlinks_never_followed(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path, other_team: Path) -> None:
    folder = tracked(watched, tmp_path)
    (folder / "output" / "theirs").symlink_to(other_team)                 # a directory outside
    (folder / "output" / "key").symlink_to(other_team / "input.json")     # a file outside
    (folder / "output" / "mine.json").symlink_to("solution.json")         # a file inside
    theirs = tree(other_team)
    assert aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done))) == "moved"
    copy = tree(shm_done / "run-1")
    assert copy["output/theirs"] == f"-> {other_team}"
    assert copy["output/key"] == f"-> {other_team / 'input.json'}"
    assert copy["output/mine.json"] == "-> solution.json"
    assert not any(isinstance(v, bytes) and SECRET in v for v in copy.values())
    assert not any(k.startswith("output/theirs/") for k in copy)
    assert tree(other_team) == theirs
    assert not folder.exists()


def test_a_copy_never_carries_set_user_or_group_id_bits(
        make_config: MakeConfig, watched: Path, shm_done: Path, tmp_path: Path) -> None:
    """The copy belongs to the daemon's user (root here): a producer's set-uid file copied with its
    mode would be a set-uid program of the daemon's user, for anyone who may run files in done_path."""
    folder = tracked(watched, tmp_path)
    (folder / "output" / "tool").write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(folder / "output" / "tool", 0o6755)
    os.chmod(folder / "output", 0o2755)
    aftercare.after_tracked(folder, make_config(after_tracking="move", done_path=str(shm_done)))
    copy = shm_done / "run-1" / "output"
    assert stat.S_IMODE(os.lstat(copy / "tool").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(copy).st_mode) == 0o755


# --- removal of what a producer made too deep ----------------------------------------------------------


def test_deleting_a_tracked_folder_holding_a_very_deep_tree(make_config: MakeConfig, watched: Path,
                                                            tmp_path: Path) -> None:
    folder = tracked(watched, tmp_path)
    (folder / "junk").mkdir()
    deep_dirs(folder / "junk", TOO_DEEP)
    assert aftercare.after_tracked(folder, make_config(after_tracking="delete")) == "deleted"
    assert os.listdir(watched) == []


def test_retention_survives_a_planted_removal_leftover_too_deep_to_recurse(
        make_config: MakeConfig, watched: Path, tmp_path: Path) -> None:
    leftover = watched / f"{aftercare.REMOVING}planted"
    leftover.mkdir()
    deep_dirs(leftover, TOO_DEEP)
    old = write_folder(watched, "old", FILES)
    StateStore(tmp_path / "state").mark_tracked(old, "run-old", "app-1", NOW - 30 * 86400.0)
    assert aftercare.sweep_retention(make_config(retention_days=7), NOW) == 1
    assert os.listdir(watched) == []
