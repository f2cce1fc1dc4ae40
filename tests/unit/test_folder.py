"""The run-folder contract: candidates, status.json, status decision, formats, symlinks, fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import python_for
from pyfakefs import helpers
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.config import FilesConfig, FormatConfig
from watcher.errors import FolderChanged, InvalidFolder
from watcher.runfolder.folder import (
    Artifact,
    RunFolder,
    find_candidates,
    fingerprint,
    inspect_folder,
    read_member,
    verify_fingerprint,
)
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.runjson import BIG_JSON_BYTES, json_turn

FILES = FilesConfig(
    input=("input.json", "input.*", "input/"),
    output=("output.json", "output.*", "output/"),
    logs=("logs.txt", "logs.log"),
    status="status.json",
)
AUTO = FormatConfig()
ROOT = Path("/watch/run-1")
NOBODY = 65534


def make(fs: FakeFilesystem, entries: Mapping[str, str | bytes], root: Path = ROOT) -> Path:
    """Create `entries` under `root`: a name ending in '/' is a directory, else a file with that content."""
    fs.create_dir(root)
    for name, content in entries.items():
        if name.endswith("/"):
            fs.create_dir(root / name)
        elif isinstance(content, bytes):
            fs.create_file(root / name, contents=content)
        else:
            fs.create_file(root / name, contents=content, encoding="utf-8")
    return root


def problem_of(excinfo: pytest.ExceptionInfo[InvalidFolder]) -> str:
    assert excinfo.value.folder == str(ROOT)
    return excinfo.value.problem


def invalid(
    path: Path = ROOT, *, files: FilesConfig = FILES, formats: FormatConfig = AUTO, marker: str | None = None
) -> str:
    with pytest.raises(InvalidFolder) as excinfo:
        inspect_folder(path, files, formats, marker)
    return problem_of(excinfo)


def candidates(names: tuple[str, ...], **kwargs: Any) -> list[str]:
    with RunDir.open(ROOT) as d:
        return find_candidates(d, d.entries(), names, **kwargs)


@pytest.fixture
def unprivileged(fs: FakeFilesystem) -> Iterator[None]:
    """Run as an ordinary user inside pyfakefs, so that file permissions are enforced."""
    helpers.set_uid(1000)
    yield
    helpers.reset_ids()


# --- candidates ---------------------------------------------------------------------------------


def test_input_json_is_sent_as_json(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "not even json", "output.json": "{}"})
    run = inspect_folder(ROOT, FILES, AUTO)
    assert run.artifact("input") == Artifact("input", ROOT / "input.json", False, "json")
    assert run.artifact("output") == Artifact("output", ROOT / "output.json", False, "json")
    assert [a.role for a in run.artifacts] == ["input", "output"]


def test_input_with_other_extension_is_a_one_file_archive(fs: FakeFilesystem) -> None:
    make(fs, {"input.csv": "a,b\n", "output.xlsx": b"PK"})
    run = inspect_folder(ROOT, FILES, AUTO)
    inp = run.artifact("input")
    assert inp is not None
    assert (inp.format, inp.is_dir) == ("multi-file", False)
    assert inp.named_members() == [("input.csv", ROOT / "input.csv")]
    out = run.artifact("output")
    assert out is not None
    assert out.format == "multi-file"


def test_input_directory_lists_every_regular_file_sorted_dotfiles_included(fs: FakeFilesystem) -> None:
    make(fs, {"input/b.csv": "b", "input/a/z.csv": "z", "input/.hidden": "h", "input/a/.cfg": "c",
              "input/empty/": "", "output/result.json": "{}"})
    run = inspect_folder(ROOT, FILES, AUTO)
    inp = run.artifact("input")
    assert inp is not None
    assert (inp.is_dir, inp.format) == (True, "multi-file")
    assert [name for name, _ in inp.named_members()] == [".hidden", "a/.cfg", "a/z.csv", "b.csv"]
    assert inp.member_paths() == [ROOT / "input" / n for n in (".hidden", "a/.cfg", "a/z.csv", "b.csv")]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"input.json": "{}", "input/x": "1"}, "ambiguous input: input.json, input/"),
        ({"input.json": "{}", "input.csv": "1"}, "ambiguous input: input.csv, input.json"),
        ({"input.json": "{}", "output.json": "{}", "output/x": "1"},
         "ambiguous output: output.json, output/"),
        ({"input.json": "{}", "output.csv": "1", "output.txt": "2"},
         "ambiguous output: output.csv, output.txt"),
        ({"input.json": "{}", "logs.txt": "a", "logs.log": "b"}, "ambiguous logs: logs.log, logs.txt"),
    ],
)
def test_more_than_one_candidate_is_ambiguous(
    fs: FakeFilesystem, entries: dict[str, str], message: str,
) -> None:
    make(fs, entries)
    assert invalid() == message


@pytest.mark.parametrize("junk", ["input.json.tmp", "input.part", "input.json~", ".input.json.swp",
                                  ".#input.json", "output.json.part", "logs.txt~", ".nextmv-claim",
                                  ".nextmv-input.json"])
def test_temporary_editor_and_daemon_files_are_never_candidates(fs: FakeFilesystem, junk: str) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "logs.txt": "l", junk: "junk"})
    run = inspect_folder(ROOT, FILES, AUTO)
    assert [a.path.name for a in run.artifacts] == ["input.json", "output.json", "logs.txt"]


def test_a_dotfile_alone_is_no_input(fs: FakeFilesystem) -> None:
    make(fs, {".input.json": "{}", "input.json.tmp": "{}"})
    assert invalid() == "no input (expected one of: input.json, input.*, input/)"


def test_marker_and_daemon_files_are_excluded_even_by_a_catch_all_pattern(fs: FakeFilesystem) -> None:
    make(fs, {"DONE": "", ".nextmv-state.json": "{}", "data.csv": "1", "status.json": "{}",
              "metrics.json": "{}"})
    exclude = {"status.json", "metrics.json"}
    assert candidates(("*",), marker="DONE", exclude=exclude) == ["data.csv"]
    files = FilesConfig(input=("*",), output=("result/",), logs=("logs.txt",), status="status.json")
    run = inspect_folder(ROOT, files, AUTO, marker="DONE")
    assert run.artifact("input") == Artifact("input", ROOT / "data.csv", False, "multi-file")
    assert run.artifact("metrics") is not None


def test_the_marker_is_excluded_by_name(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "input.done": ""})
    assert candidates(FILES.input, marker="input.done") == ["input.json"]
    assert candidates(FILES.input, marker=None) == ["input.done", "input.json"]


def test_directory_names_only_match_directories_and_file_names_only_files(fs: FakeFilesystem) -> None:
    make(fs, {"input": "a file named like the directory", "output.d/x": "1"})
    assert candidates(FILES.input, marker=None) == []
    assert candidates(FILES.output, marker=None) == []
    assert candidates(("output*/",), marker=None) == ["output.d/"]


def test_configured_names_replace_the_defaults(fs: FakeFilesystem) -> None:
    make(fs, {"problem.json": "{}", "solution/plan.csv": "p", "input.json": "{}", "run.log": "ok"})
    files = FilesConfig(input=("problem.json",), output=("solution/",), logs=("*.log",), status="result.json")
    run = inspect_folder(ROOT, files, AUTO)
    assert [(a.role, a.path.name, a.format) for a in run.artifacts] == [
        ("input", "problem.json", "json"), ("output", "solution", "multi-file"), ("logs", "run.log", "text")]
    assert run.status == "succeeded"


def test_an_entry_matching_two_roles_is_invalid(fs: FakeFilesystem) -> None:
    make(fs, {"data.json": "{}"})
    files = FilesConfig(input=("data.json",), output=("*.json",), logs=("logs.txt",), status="status.json")
    assert invalid(files=files) == "data.json matches both input and output"


def test_logs_may_not_be_a_directory(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "logs/x": "1"})
    files = FilesConfig(input=FILES.input, output=FILES.output, logs=("logs/",), status="status.json")
    assert invalid(files=files) == "logs: logs/ is a directory, expected a file"


# --- status decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "status", "error"),
    [
        ({"input.json": "{}", "output.json": "{}"}, "succeeded", None),
        ({"input.json": "{}"}, "failed", None),
        ({"input.json": "{}", "logs.txt": "crash"}, "failed", None),
        ({"input.json": "{}", "output.json": "{}", "status.json": '{"error": "boom"}'}, "failed", "boom"),
        ({"input.json": "{}", "output.json": "{}", "status.json": '{"status": "failed"}'}, "failed", None),
        ({"input.json": "{}", "status.json": '{"status": "failed", "error": "x"}'}, "failed", "x"),
        ({"input.json": "{}", "output/": "", "status.json": "{}"}, "succeeded", None),
    ],
)
def test_status_decision(fs: FakeFilesystem, entries: dict[str, str], status: str, error: str | None) -> None:
    make(fs, entries)
    run = inspect_folder(ROOT, FILES, AUTO)
    assert (run.status, run.error_message) == (status, error)


def test_succeeded_without_output_is_invalid(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "status.json": '{"status": "succeeded"}'})
    assert invalid() == "status succeeded but no output"


def test_status_json_fields_reach_the_run(fs: FakeFilesystem) -> None:
    status = {"status": "succeeded", "duration": 1234, "name": "nightly", "description": "d",
              "instance_id": "inst-1", "batch_experiment_id": "exp-1", "options": {"solve.duration": "1s"}}
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": json.dumps(status)})
    run = inspect_folder(ROOT, FILES, AUTO)
    assert (run.name, run.description, run.duration_ms, run.instance_id, run.batch_experiment_id) == (
        "nightly", "d", 1234, "inst-1", "exp-1")
    assert run.options == {"solve.duration": "1s"}
    assert run.status_file == ROOT / "status.json"


def test_without_status_json_the_name_is_the_folder_name(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}"})
    run = inspect_folder(ROOT, FILES, AUTO)
    assert (run.name, run.description, run.duration_ms, run.options, run.status_file) == (
        "run-1", None, None, {}, None)


def test_zero_duration_is_fine(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": '{"duration": 0}'})
    assert inspect_folder(ROOT, FILES, AUTO).duration_ms == 0


# --- status.json validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"foo": 1}', 'unknown key "foo"'),
        ('{"status": "done"}', '"status" must be "succeeded" or "failed"'),
        ('{"status": null}', '"status" must be "succeeded" or "failed"'),
        ('{"duration": "12"}', '"duration" must be an integer number of milliseconds'),
        ('{"duration": true}', '"duration" must be an integer number of milliseconds'),
        ('{"duration": 1.5}', '"duration" must be an integer number of milliseconds'),
        ('{"duration": 1e3}', '"duration" must be an integer number of milliseconds'),
        ('{"duration": -1}', '"duration" must be an integer number of milliseconds, not negative'),
        ('{"status": "failed", "error": 3}', '"error" must be a string'),
        ('{"name": null}', '"name" must be a string'),
        ('{"description": []}', '"description" must be a string'),
        ('{"instance_id": 1}', '"instance_id" must be a string'),
        ('{"instance_id": ""}', '"instance_id" must not be empty'),
        ('{"batch_experiment_id": {}}', '"batch_experiment_id" must be a string'),
        ('{"options": ["a"]}', '"options" must be an object of strings to strings'),
        ('{"options": {"a": 1}}', '"options.a" must be a string'),
        ('{"status": "succeeded", "error": "x"}', '"error" is only allowed when "status" is "failed"'),
    ],
)
def test_status_json_keys_are_validated(fs: FakeFilesystem, content: str, message: str) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": content})
    problem = invalid()
    assert problem.startswith("status.json: ")
    assert message in problem


def test_status_json_duration_message_is_exact(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": '{"duration": "5s"}'})
    assert invalid() == 'status.json: "duration" must be an integer number of milliseconds'


def test_status_json_reports_every_problem_at_once(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": '{"nme": "x", "duration": "1"}'})
    problem = invalid()
    assert 'unknown key "nme"' in problem
    assert '"duration" must be' in problem


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "status.json: invalid JSON"),
        (b"", "status.json: invalid JSON"),
        (b'{"duration": NaN}', "status.json: invalid JSON"),
        (b"[1, 2]", "status.json: must be a JSON object, got an array"),
        (b'"succeeded"', "status.json: must be a JSON object, got a string"),
        (b'{"name": "caf\xe9"}', "status.json: not valid UTF-8"),
        (b"\xff\xfe{\x00}\x00", "status.json: not valid UTF-8"),
        (b" " * (1024 * 1024) + b"{}", "status.json: bigger than 1 MiB"),
    ],
)
def test_status_json_must_be_a_small_utf8_json_object(
    fs: FakeFilesystem, content: bytes, message: str,
) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": content})
    assert invalid().startswith(message)


def test_status_json_of_exactly_1_mib_is_accepted(fs: FakeFilesystem) -> None:
    content = b"{}" + b" " * (1024 * 1024 - 2)
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": content})
    assert inspect_folder(ROOT, FILES, AUTO).status == "succeeded"


def test_status_json_directory_is_invalid(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "status.json/": ""})
    assert invalid() == "status.json: is a directory, expected a JSON file"


# --- metrics, statistics, assets ------------------------------------------------------------------


def test_extra_files_come_after_logs_in_a_fixed_order(fs: FakeFilesystem) -> None:
    make(fs, {"assets.json": "[]", "metrics.json": '{"m": 1}', "statistics.json": '{"s": 1}',
              "logs.log": "l", "output.json": "{}", "input.json": "{}"})
    run = inspect_folder(ROOT, FILES, AUTO)
    assert [(a.role, a.format) for a in run.artifacts] == [
        ("input", "json"), ("output", "json"), ("logs", "text"),
        ("statistics", "json"), ("metrics", "json"), ("assets", "json")]


@pytest.mark.parametrize("name", ["metrics.json", "statistics.json", "assets.json"])
def test_extra_files_must_be_valid_json(fs: FakeFilesystem, name: str) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", name: "{oops"})
    assert invalid().startswith(f"{name}: invalid JSON")


@pytest.mark.parametrize(
    ("name", "content", "wrap"),
    [
        ("statistics.json", '{"statistics": {"run": {"duration": 1}}}', None),
        ("statistics.json", '{"run": {"duration": 1}}', "statistics"),
        ("statistics.json", "42", "statistics"),
        ("assets.json", '{"assets": []}', None),
        ("assets.json", '[{"content": "x"}]', "assets"),
        ("assets.json", '{"statistics": 1}', "assets"),
        ("metrics.json", '{"metrics": 1}', None),
    ],
)
def test_statistics_and_assets_are_wrapped_unless_they_carry_their_key(
        fs: FakeFilesystem, name: str, content: str, wrap: str | None) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", name: content})
    artifact = inspect_folder(ROOT, FILES, AUTO).artifact(name.removesuffix(".json"))
    assert artifact is not None
    assert artifact.wrap == wrap


@pytest.mark.parametrize("content", [b"{", b"", b"NaN", b'{"a": Infinity}', b"\xff", b"[" * 100_000])
def test_invalid_json_in_an_extra_file_is_invalid_naming_the_file(fs: FakeFilesystem, content: bytes) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "assets.json": content})
    assert invalid().startswith("assets.json: ")


def test_metrics_must_be_an_object(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "metrics.json": "[1]"})
    assert invalid() == "metrics.json: must be a JSON object"


# --- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "fmt", "expected"),
    [
        ("input.json", "auto", "json"),
        ("input.json", "multi-file", "multi-file"),
        ("input.json", "text", "text"),
        ("input.csv", "auto", "multi-file"),
        ("input.csv", "json", "json"),
        ("input.txt", "text", "text"),
        ("input/", "auto", "multi-file"),
        ("input/", "multi-file", "multi-file"),
    ],
)
def test_format_overrides(fs: FakeFilesystem, entry: str, fmt: str, expected: str) -> None:
    make(fs, {entry: "x", "output.json": "{}"})
    run = inspect_folder(ROOT, FILES, FormatConfig(input=fmt))
    inp = run.artifact("input")
    assert inp is not None
    assert inp.format == expected
    if not inp.is_dir:
        assert inp.member_paths() == [ROOT / entry]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_single_file_formats_refuse_a_directory(fs: FakeFilesystem, fmt: str) -> None:
    make(fs, {"input.json": "{}", "output/x.csv": "1"})
    expected = f"format {fmt} needs a single file, output/ is a directory"
    assert invalid(formats=FormatConfig(output=fmt)) == expected
    make(fs, {"input/x.csv": "1"}, root=Path("/watch/run-2"))
    with pytest.raises(InvalidFolder, match=rf"format {fmt} needs a single file, input/ is a directory"):
        inspect_folder(Path("/watch/run-2"), FILES, FormatConfig(input=fmt))


def test_zero_byte_files_are_fine(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "", "output/empty.csv": "", "logs.txt": ""})
    run = inspect_folder(ROOT, FILES, AUTO)
    out = run.artifact("output")
    assert out is not None
    assert out.member_paths() == [ROOT / "output" / "empty.csv"]
    assert [a.role for a in run.artifacts] == ["input", "output", "logs"]


# --- symlinks -------------------------------------------------------------------------------------


def test_symlink_inside_the_folder_is_followed(fs: FakeFilesystem) -> None:
    make(fs, {"data/real.json": "{}", "output.json": "{}", "shared/part.csv": "p", "input2/x": ""})
    fs.create_symlink(ROOT / "input.json", ROOT / "data" / "real.json")
    run = inspect_folder(ROOT, FILES, AUTO)
    assert run.artifact("input") == Artifact("input", ROOT / "input.json", False, "json")


def test_symlinks_inside_an_input_directory_are_listed_under_the_link_name(fs: FakeFilesystem) -> None:
    make(fs, {"input/a.csv": "a", "shared/part.csv": "p", "more/x.csv": "x", "output.json": "{}"})
    fs.create_symlink(ROOT / "input" / "link.csv", "../shared/part.csv")
    fs.create_symlink(ROOT / "input" / "sub", ROOT / "more")
    inp = inspect_folder(ROOT, FILES, AUTO).artifact("input")
    assert inp is not None
    assert inp.named_members() == [("a.csv", ROOT / "input/a.csv"), ("link.csv", ROOT / "input/link.csv"),
                                   ("sub/x.csv", ROOT / "input/sub/x.csv")]


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("input.json", "input.json: symlink points outside the run folder"),
        ("input/x.json", "input/x.json: symlink points outside the run folder"),
        ("input", "input/: symlink points outside the run folder"),
        ("status.json", "status.json: symlink points outside the run folder"),
        ("metrics.json", "metrics.json: symlink points outside the run folder"),
    ],
)
def test_symlink_outside_the_folder_is_invalid(fs: FakeFilesystem, link: str, message: str) -> None:
    fs.create_file("/etc/secret.json", contents="{}")
    fs.create_dir("/etc/secrets")
    make(fs, {"output.json": "{}"} | ({} if link.startswith("input") else {"input.json": "{}"}))
    if link == "input/x.json":
        fs.create_dir(ROOT / "input")
    fs.create_symlink(ROOT / link, "/etc/secrets" if link == "input" else "/etc/secret.json")
    assert invalid() == message


def test_symlink_escaping_through_dotdot_is_outside(fs: FakeFilesystem) -> None:
    make(fs, {"input/ok.csv": "1", "output.json": "{}"})
    fs.create_file("/watch/other-run/input.json", contents="{}")
    fs.create_symlink(ROOT / "input" / "x.json", "../../other-run/input.json")
    assert invalid() == "input/x.json: symlink points outside the run folder"


@pytest.mark.parametrize("link", ["input.json", "input/x.json", "logs.txt"])
def test_broken_symlink_is_invalid(fs: FakeFilesystem, link: str) -> None:
    make(fs, {"output.json": "{}"} | ({"input/": ""} if link.startswith("input/") else {})
         | ({"input.json": "{}"} if link == "logs.txt" else {}))
    fs.create_symlink(ROOT / link, ROOT / "missing.json")
    assert invalid() == f"{link}: broken symlink"


def test_symlink_loop_in_an_input_directory_is_invalid(fs: FakeFilesystem) -> None:
    make(fs, {"input/a/x.csv": "1", "output.json": "{}"})
    fs.create_symlink(ROOT / "input" / "a" / "back", "..")
    assert invalid() == "input/a/back: symlink loop"


# --- vanished, permissions --------------------------------------------------------------------------


def test_a_vanished_folder_is_folder_changed(fs: FakeFilesystem) -> None:
    fs.create_dir("/watch")
    with pytest.raises(FolderChanged, match=r"run folder vanished"):
        inspect_folder(ROOT, FILES, AUTO)


@pytest.mark.usefixtures("unprivileged")
def test_unreadable_status_json_is_invalid(fs: FakeFilesystem) -> None:
    make(fs, {"input.json": "{}", "output.json": "{}", "status.json": "{}"})
    os.chmod(ROOT / "status.json", 0)
    assert invalid() == "status.json: permission denied"


def test_unreadable_input_directory_is_invalid(tmp_path: Path) -> None:
    """On a real filesystem (pyfakefs answers ENOTDIR where Linux says EACCES), as an ordinary user."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="nextmv-unreadable-"))
    try:
        base.chmod(0o755)
        root = base / "run-1"
        (root / "input").mkdir(parents=True)
        (root / "input" / "x.csv").write_text("1")
        (root / "output.json").write_text("{}")
        (root / "input").chmod(0)
        code = ("import sys; from pathlib import Path; from watcher.config import FilesConfig, FormatConfig;"
                "from watcher.errors import InvalidFolder; from watcher.runfolder.folder import inspect_folder\n"
                "try:\n inspect_folder(Path(sys.argv[1]), FilesConfig(input=('input.json','input.*','input/'),"
                " output=('output.json','output.*','output/'), logs=('logs.txt',), status='status.json'),"
                " FormatConfig())\nexcept InvalidFolder as e:\n print(e.problem)")
        if os.geteuid() == 0:
            python = python_for(NOBODY)
            if python is None:
                pytest.skip("no Python that an unprivileged user can run with this project")
            cmd, env = python
            out = subprocess.run([*cmd, "-c", code, str(root)], capture_output=True, text=True, check=True,
                                 timeout=60, user=NOBODY, group=NOBODY, env={**os.environ, **env}, cwd="/")
        else:
            out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                                 check=True, timeout=60)
        assert out.stdout.strip() == "input: permission denied"
    finally:
        (base / "run-1" / "input").chmod(0o755)
        shutil.rmtree(base)


# --- names ----------------------------------------------------------------------------------------


def test_unicode_and_spaces_in_folder_and_file_names(fs: FakeFilesystem) -> None:
    root = Path("/watch/Lauf März 2024 #1 ☃")
    make(fs, {"input/daten ä.csv": "1", "input/日本.json": "{}", "output.json": "{}"}, root=root)
    run = inspect_folder(root, FILES, AUTO)
    assert run.name == "Lauf März 2024 #1 ☃"
    inp = run.artifact("input")
    assert inp is not None
    assert [n for n, _ in inp.named_members()] == ["daten ä.csv", "日本.json"]


def test_non_utf8_folder_name_becomes_a_replacement_character(tmp_path: Path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"run-\xff")
    os.makedirs(root)
    for name in (b"input.json", b".\xfe-dotfile", b"\xfd.tmp", b"notes-\xfc.txt"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"{}")
    run = inspect_folder(Path(os.fsdecode(root)), FILES, AUTO)
    assert run.name == "run-\ufffd"
    assert run.artifact("input") == Artifact("input", Path(os.fsdecode(root)) / "input.json", False, "json")


def test_non_utf8_member_name_is_invalid_and_named(tmp_path: Path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"run")
    os.makedirs(os.path.join(root, b"input"))
    with open(os.path.join(root, b"input", b"\xff.csv"), "wb") as f:
        f.write(b"1")
    with pytest.raises(InvalidFolder) as excinfo:
        inspect_folder(Path(os.fsdecode(root)), FILES, AUTO)
    assert excinfo.value.problem == "'input/\\udcff.csv': file name is not valid UTF-8"


def test_non_utf8_single_file_name_is_fine_as_json_but_not_as_an_archive(tmp_path: Path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"run")
    os.makedirs(root)
    with open(os.path.join(root, b"input.\xff"), "wb") as f:
        f.write(b"{}")
    path = Path(os.fsdecode(root))
    assert inspect_folder(path, FILES, FormatConfig(input="json")).artifact("input") is not None
    with pytest.raises(InvalidFolder, match=r"file name is not valid UTF-8"):
        inspect_folder(path, FILES, AUTO)


# --- special files (a real filesystem: pyfakefs has no FIFOs) ---------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fifo", ["input.json", "input/pipe.csv", "logs.txt", "status.json", "metrics.json"])
def test_a_fifo_is_invalid_and_never_opened(tmp_path: Path, fifo: str) -> None:
    root = tmp_path / "run"
    root.mkdir()
    if fifo.startswith("input/"):
        (root / "input").mkdir()
    elif fifo != "input.json":
        (root / "input.json").write_text("{}")
    (root / "output.json").write_text("{}")
    os.mkfifo(root / fifo)
    with pytest.raises(InvalidFolder) as excinfo:
        inspect_folder(root, FILES, AUTO)
    assert excinfo.value.problem == f"{fifo}: not a regular file or directory (FIFO)"


# --- many files -----------------------------------------------------------------------------------


def test_thousands_of_files_in_an_input_directory(fs: FakeFilesystem) -> None:
    names = sorted(f"d{i % 7}/f{i:04d}.csv" for i in range(3000))
    make(fs, {f"input/{n}": str(i) for i, n in enumerate(names)} | {"output.json": "{}"})
    inp = inspect_folder(ROOT, FILES, AUTO).artifact("input")
    assert inp is not None
    assert [n for n, _ in inp.named_members()] == names


# --- fingerprints ---------------------------------------------------------------------------------


@pytest.fixture
def tracked(fs: FakeFilesystem) -> tuple[RunFolder, dict[str, tuple[int, int, int]]]:
    make(fs, {"input/a.csv": "a", "input/b/c.csv": "c", "output.json": "{}", "status.json": "{}",
              "metrics.json": "{}"})
    run = inspect_folder(ROOT, FILES, AUTO)
    return run, fingerprint(run)


def test_fingerprint_covers_every_member_and_status_json(
    tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]],
) -> None:
    run, before = tracked
    assert sorted(before) == ["input/a.csv", "input/b/c.csv", "metrics.json", "output.json", "status.json"]
    assert before["input/a.csv"][0] == 1
    verify_fingerprint(run, before)


def _append(path: Path) -> None:
    with open(path, "a") as f:
        f.write("more")


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _replace(path: Path) -> None:
    st = path.stat()
    tmp = path.with_name("replacement.tmp")
    tmp.write_bytes(path.read_bytes())
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


@pytest.mark.parametrize("change", [_append, _touch, _replace])
@pytest.mark.parametrize("rel", ["output.json", "input/b/c.csv", "status.json"])
def test_any_change_of_a_member_is_detected(
    tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]], change: object, rel: str,
) -> None:
    run, before = tracked
    assert callable(change)
    change(ROOT / rel)
    with pytest.raises(FolderChanged) as excinfo:
        verify_fingerprint(run, before)
    assert excinfo.value.problem == f"{rel} changed during upload"


def test_a_vanished_member_is_detected(tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]]) -> None:
    run, before = tracked
    os.remove(ROOT / "input" / "a.csv")
    with pytest.raises(FolderChanged, match=r"input/a.csv vanished during upload"):
        verify_fingerprint(run, before)


def test_a_new_member_is_detected(tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]]) -> None:
    run, before = tracked
    (ROOT / "input" / "b" / "late.csv").write_text("late")
    with pytest.raises(FolderChanged, match=r"input/b/late.csv appeared during upload"):
        verify_fingerprint(run, before)


def test_a_vanished_directory_is_detected(
    fs: FakeFilesystem, tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]],
) -> None:
    run, before = tracked
    fs.remove_object(str(ROOT / "input"))
    with pytest.raises(FolderChanged, match=r"vanished during upload"):
        verify_fingerprint(run, before)


def test_a_member_gone_since_inspection_is_folder_changed_when_read(
    tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]],
) -> None:
    run, _ = tracked
    os.remove(ROOT / "output.json")
    out = run.artifact("output")
    assert out is not None
    with pytest.raises(FolderChanged, match=r"output.json vanished"):
        read_member(run.handle, out.members[0])


def test_a_member_replaced_since_inspection_is_never_read(
    tracked: tuple[RunFolder, dict[str, tuple[int, int, int]]],
) -> None:
    run, _ = tracked
    _replace(ROOT / "output.json")
    out = run.artifact("output")
    assert out is not None
    with pytest.raises(FolderChanged, match=r"output.json changed since it was inspected"):
        read_member(run.handle, out.members[0])


def test_big_json_documents_take_turns_and_small_ones_never_wait() -> None:
    """Reading and parsing a JSON file costs many times its size; big ones are handled one at a time."""
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def big(label: str) -> None:
        with json_turn(BIG_JSON_BYTES + 1):
            order.append(f"{label} in")
            entered.set()
            release.wait(10)
            order.append(f"{label} out")

    first = threading.Thread(target=big, args=("first",))
    first.start()
    assert entered.wait(10)
    entered.clear()
    second = threading.Thread(target=big, args=("second",))
    second.start()
    with json_turn(BIG_JSON_BYTES):   # a small document does not wait for the big one
        order.append("small")
    assert not entered.wait(0.2), "a second big document started while the first held its turn"
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["first in", "small", "first out", "second in", "second out"]
