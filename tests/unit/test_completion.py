"""Completion: the marker mode and the settle mode, with time injected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.config import CompletionConfig, FilesConfig
from watcher.errors import FolderChanged
from watcher.runfolder.completion import Activity, Completion, check_completion

FILES = FilesConfig(
    input=("input.json", "input.*", "input/"),
    output=("output.json", "output.*", "output/"),
    logs=("logs.txt", "logs.log"),
    status="status.json",
)
MARKER = CompletionConfig(marker="DONE", settle_seconds=5.0)
SETTLE = CompletionConfig(marker=None, settle_seconds=5.0)
ROOT = Path("/watch/run-1")
T0 = 1_700_000_000.0


def write(fs: FakeFilesystem, rel: str, mtime: float = T0, content: str = "{}") -> Path:
    """Create `rel` under ROOT with `mtime`; directories created on the way get `mtime` too."""
    path = ROOT / rel
    new_dirs = [p for p in path.parents if ROOT in p.parents and not p.exists()]
    if rel.endswith("/"):
        fs.create_dir(path)
    else:
        fs.create_file(path, contents=content)
    for p in [path, *new_dirs]:
        os.utime(p, (mtime, mtime))
    return path


def check(now: float, completion: CompletionConfig = SETTLE) -> Completion:
    return check_completion(ROOT, FILES, completion, now)


# --- marker mode ----------------------------------------------------------------------------------


def test_marker_mode_waits_for_the_marker_whatever_the_time(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0 - 3600)
    write(fs, "output.json", T0 - 3600)
    assert check(T0, MARKER) == Completion(False, "waiting for marker DONE", None)


def test_marker_mode_is_complete_once_the_marker_exists_even_if_just_written(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0)
    write(fs, "DONE", T0, content="")
    assert check(T0, MARKER) == Completion(True, "marker DONE present", None)


def test_marker_mode_needs_no_input_to_be_complete(fs: FakeFilesystem) -> None:
    # Inspection, not completion, reports a folder without input.
    write(fs, "DONE", T0, content="")
    assert check(T0, MARKER).complete


def test_marker_mode_on_a_vanished_folder_raises_folder_changed(fs: FakeFilesystem) -> None:
    fs.create_dir("/watch")
    with pytest.raises(FolderChanged, match="run folder vanished"):
        check(T0, MARKER)


# --- settle mode ----------------------------------------------------------------------------------


def test_settle_mode_without_input(fs: FakeFilesystem) -> None:
    write(fs, "output.json", T0 - 100)
    write(fs, ".input.json", T0 - 100)
    write(fs, "input.json.part", T0 - 100)
    assert check(T0) == Completion(False, "no input yet", None)


def test_settle_mode_without_output_or_status(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0 - 100)
    write(fs, "logs.txt", T0 - 100)
    assert check(T0) == Completion(False, "no output or status yet", None)


@pytest.mark.parametrize("result", ["output.json", "output/", "status.json"])
def test_settle_mode_waits_for_settle_seconds(fs: FakeFilesystem, result: str) -> None:
    write(fs, "input.json", T0 - 10)
    write(fs, result, T0)
    assert check(T0 + 1.2) == Completion(False, "settling (changed 1.2 s ago)", T0 + 5.0)
    assert check(T0 + 4.999).recheck_at == T0 + 5.0
    assert check(T0 + 5.0) == Completion(True, "settled", None)
    assert check(T0 + 60).complete


def test_the_newest_entry_anywhere_in_the_tree_counts(fs: FakeFilesystem) -> None:
    write(fs, "input/a/b/deep.csv", T0 + 7)
    os.utime(ROOT / "input", (T0 - 50, T0 - 50))
    os.utime(ROOT / "input" / "a", (T0 - 50, T0 - 50))
    write(fs, "output.json", T0)
    result = check(T0 + 8)
    assert (result.complete, result.recheck_at) == (False, T0 + 12)
    assert check(T0 + 12).complete


def test_a_subdirectory_own_mtime_counts(fs: FakeFilesystem) -> None:
    write(fs, "input/a.csv", T0)
    write(fs, "output.json", T0)
    os.utime(ROOT / "input", (T0 + 3, T0 + 3))  # a file was deleted from input/
    assert check(T0 + 6).recheck_at == T0 + 8


def test_a_file_still_being_written_under_a_temporary_name_counts(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0)
    write(fs, "output.json", T0)
    write(fs, "output.csv.part", T0 + 4)
    assert check(T0 + 6) == Completion(False, "settling (changed 2.0 s ago)", T0 + 9)


def test_the_daemon_files_and_the_folder_itself_do_not_count(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0)
    write(fs, "output.json", T0)
    write(fs, ".nextmv-claim", T0 + 100)
    write(fs, ".nextmv-state/", T0 + 100)
    os.utime(ROOT, (T0 + 100, T0 + 100))
    assert check(T0 + 5) == Completion(True, "settled", None)


def test_nextmv_names_below_the_root_do_count(fs: FakeFilesystem) -> None:
    write(fs, "input/.nextmv-looking.csv", T0 + 100)
    os.utime(ROOT / "input", (T0, T0))
    write(fs, "output.json", T0)
    assert check(T0 + 5).recheck_at == T0 + 105


def test_symlinked_directories_are_not_followed(fs: FakeFilesystem) -> None:
    fs.create_file("/elsewhere/busy.csv")
    os.utime("/elsewhere/busy.csv", (T0 + 500, T0 + 500))
    write(fs, "input.json", T0)
    write(fs, "output.json", T0)
    fs.create_symlink(ROOT / "ext", "/elsewhere")
    os.utime(ROOT / "ext", (T0, T0), follow_symlinks=False)
    assert check(T0 + 5).complete


def test_settle_mode_uses_configured_names(fs: FakeFilesystem) -> None:
    files = FilesConfig(input=("problem/",), output=("plan.csv",), logs=("run.log",), status="done.json")
    write(fs, "input.json", T0)
    write(fs, "output.json", T0)
    assert check_completion(ROOT, files, SETTLE, T0 + 10) == Completion(False, "no input yet", None)
    write(fs, "problem/p.csv", T0)
    write(fs, "done.json", T0, content="{}")
    assert check_completion(ROOT, files, SETTLE, T0 + 10).complete


def test_settle_mode_on_a_vanished_folder_raises_folder_changed(fs: FakeFilesystem) -> None:
    fs.create_dir("/watch")
    with pytest.raises(FolderChanged, match="run folder vanished"):
        check(T0)


@pytest.mark.timeout(10)
def test_a_fifo_is_looked_at_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / "input.json").write_text("{}")
    os.mkfifo(root / "output.json")
    for name in ("input.json", "output.json"):
        os.utime(root / name, (T0, T0))
    assert check_completion(root, FILES, SETTLE, T0 + 5).complete


# --- settle mode: a writer caught mid-file (issue 11) --------------------------------------------


def test_a_file_open_holds_the_folder_however_old(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0 - 3600)
    write(fs, "output.csv", T0 - 3600, content="a,b\n1,")
    busy = Activity(open_files=("output.csv",))
    result = check_completion(ROOT, FILES, SETTLE, T0, busy)
    assert (result.complete, result.reason, result.poll) == \
        (False, "output.csv is open (not closed since it was opened)", True)
    two = check_completion(ROOT, FILES, SETTLE, T0, Activity(open_files=("logs.txt", "output.csv")))
    assert two.reason == "logs.txt is open (not closed since it was opened), and 1 more"
    assert check_completion(ROOT, FILES, SETTLE, T0, Activity()).complete


def test_a_file_closed_after_writing_restarts_the_settle_time(fs: FakeFilesystem) -> None:
    # A writer that kept the file's modification time (cp -p, a restored mtime) still counts, by its close.
    write(fs, "input.json", T0 - 3600)
    write(fs, "output.json", T0 - 3600)
    closed = Activity(last_write=T0 - 1)
    assert check_completion(ROOT, FILES, SETTLE, T0, closed) == Completion(False, "settling (changed 1.0 s ago)",
                                                                           T0 + 4)
    assert check_completion(ROOT, FILES, SETTLE, T0 + 4, closed).complete


def test_a_marker_ignores_open_files(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0)
    write(fs, "DONE", T0, content="")
    assert check_completion(ROOT, FILES, MARKER, T0, Activity(open_files=("output.csv",))).complete


@pytest.mark.parametrize(("name", "files"), [
    ("output.json", FILES), ("input.json", FILES), ("status.json", FILES), ("metrics.json", FILES),
    ("statistics.json", FILES), ("assets.json", FILES), ("plan.JSON", FilesConfig(output=("plan.*",)))])
def test_a_settled_json_file_that_is_not_complete_json_is_still_being_written(
        fs: FakeFilesystem, name: str, files: FilesConfig) -> None:
    others = {"input.json": "{}", "output.json": "{}"} if files is FILES else {"input.json": "{}"}
    for rel, content in {**others, name: '{"solutions": ['}.items():
        write(fs, rel, T0 - 100, content=content)
    result = check_completion(ROOT, files, SETTLE, T0)
    assert result == Completion(False, f"{name} is not complete JSON", None, poll=True)
    (ROOT / name).write_text('{"solutions": [1]}\n')
    os.utime(ROOT / name, (T0 - 100, T0 - 100))
    assert check_completion(ROOT, files, SETTLE, T0).complete


def test_json_is_judged_only_once_settled(fs: FakeFilesystem) -> None:
    write(fs, "input.json", T0)
    write(fs, "output.json", T0, content="{")
    assert check(T0 + 1).reason == "settling (changed 1.0 s ago)"
    assert check(T0 + 5).reason == "output.json is not complete JSON"


@pytest.mark.parametrize(("cut", "others"), [
    ("output.csv", ["input.json"]), ("output.txt", ["input.json"]), ("logs.txt", ["input.json", "output.json"]),
    ("input.jsonl", ["output.json"])])
def test_files_that_are_not_json_are_not_judged_by_their_content(fs: FakeFilesystem, cut: str,
                                                                 others: list[str]) -> None:
    for rel in others:
        write(fs, rel, T0 - 100)
    write(fs, cut, T0 - 100, content='{"cut": [')
    assert check(T0).complete


def test_files_inside_input_and_output_directories_are_not_parsed(fs: FakeFilesystem) -> None:
    write(fs, "input/a.json", T0 - 100, content='{"cut": [')
    write(fs, "output/b.json", T0 - 100, content="[")
    result = check(T0)
    assert result.complete
    assert result.dirs == ("input", "output"), "the directories a watch should cover"
