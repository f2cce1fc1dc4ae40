"""The `POST .../runs` body within the API's limits: the name cut, the user's description cut to leave
room for the token line, which is never cut (characters, as Python counts them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from helpers import write_folder

from watcher.cloud.tracker import Limits, description_with_token, run_body, run_name
from watcher.config import TOKEN_LINE_LENGTH, FilesConfig, FormatConfig
from watcher.runfolder.folder import RunFolder, inspect_folder

TOKEN = "0123456789abcdef" * 2
LINE = f"nextmv-watcher:{TOKEN}"
IDS = {"input": "upload-in", "output": "upload-out"}


def folder(root: Path, name: str, status: dict[str, object] | None = None) -> RunFolder:
    files: dict[str, str | bytes] = {"input.json": b"{}", "output.json": b"{}"}
    if status is not None:
        files["status.json"] = json.dumps(status)
    return inspect_folder(write_folder(root, name, files, marker=None), FilesConfig(), FormatConfig())


def test_the_token_line_is_49_characters_with_its_blank_line() -> None:
    assert len("\n\n" + LINE) == TOKEN_LINE_LENGTH == 49


@pytest.mark.parametrize(("description", "limit", "expected"), [
    (None, 256, LINE),
    ("", 256, LINE),
    ("short", 256, f"short\n\n{LINE}"),
    ("x" * 207, 256, f"{'x' * 207}\n\n{LINE}"),          # exactly fits
    ("x" * 300, 256, f"{'x' * 207}\n\n{LINE}"),
    ("x" * 300, 49, LINE),                                # no room left: the token line alone
    ("x" * 300, 50, f"x\n\n{LINE}"),
    ("é" * 300, 100, f"{'é' * 51}\n\n{LINE}"),           # characters, not bytes
])
def test_the_description_fits_the_limit_and_keeps_the_token_line_whole(
        description: str | None, limit: int, expected: str) -> None:
    text = description_with_token(description, TOKEN, limit)
    assert text == expected
    assert len(text) <= limit
    assert text.endswith(LINE)


def test_a_long_name_is_cut_to_the_limit_in_characters() -> None:
    assert run_name("n" * 200, 128) == "n" * 128
    assert run_name("ü" * 130, 128) == "ü" * 128
    assert run_name("short", 128) == "short"


def test_a_200_character_folder_and_a_300_character_description_make_a_body_within_128_and_256(
        tmp_path: Path) -> None:
    run = folder(tmp_path, "f" * 200, {"description": "d" * 300})
    body = run_body(run, IDS, TOKEN, Limits(max_name_length=128, max_description_length=256))
    assert body["name"] == "f" * 128
    assert len(body["description"]) == 256
    assert body["description"] == f"{'d' * 207}\n\n{LINE}"


def test_the_limits_come_from_the_limits_given(tmp_path: Path) -> None:
    run = folder(tmp_path, "run-1", {"name": "a name of 19 chars.", "description": "d" * 60})
    body = run_body(run, IDS, TOKEN, Limits(max_name_length=10, max_description_length=59))
    assert body["name"] == "a name of "
    assert body["description"] == f"{'d' * 10}\n\n{LINE}"


def test_a_body_within_the_limits_is_unchanged(tmp_path: Path) -> None:
    run = folder(tmp_path, "run-1", {"description": "what this run was"})
    with structlog.testing.capture_logs() as events:
        body = run_body(run, IDS, TOKEN)
    assert (body["name"], body["description"]) == ("run-1", f"what this run was\n\n{LINE}")
    assert events == []
