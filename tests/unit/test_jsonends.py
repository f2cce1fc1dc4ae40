"""The bounded JSON-completeness check: whole small files parsed, big files judged by their ends only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.errors import FolderChanged
from watcher.runfolder.jsonends import WINDOW, ends_complete, json_file_complete
from watcher.runfolder.rundir import RunDir

# --- ends_complete: bytes in, a verdict out ----------------------------------------------------------


@pytest.mark.parametrize("doc", [b'{"solutions": [{"done": true}]}', b"[1, 2]", b'"text"', b"42", b"-0.5e3",
                                 b"true", b"null", b"{}", b'\xef\xbb\xbf{"bom": 1}'])
def test_a_complete_document_is_complete(doc: bytes) -> None:
    assert ends_complete(doc, None)


@pytest.mark.parametrize("doc", [b'{"solutions": [', b'{"solutions": [{"done": true}]', b'{"a": "unterminated',
                                 b"[1, 2,", b'{"a": 1}{"b"', b""])
def test_a_truncated_document_is_not(doc: bytes) -> None:
    assert not ends_complete(doc, None)


@pytest.mark.parametrize("blanks", [b"\n", b" \t\r\n\n", b"    "])
def test_blanks_around_a_document_do_not_matter(blanks: bytes) -> None:
    assert ends_complete(blanks + b'{"a": [1]}' + blanks, None)
    assert not ends_complete(blanks, None), "blanks only are no document"


def test_bytes_that_are_not_utf8_inside_strings_do_not_make_it_incomplete() -> None:
    assert ends_complete(b'{"name": "caf\xe9"}', None)


def test_a_big_document_is_judged_by_its_first_and_last_bytes() -> None:
    assert ends_complete(b'  {"solutions": [{"a": 1},', b'{"z": 2}]}\n')
    assert ends_complete(b"[1,", b"2]")
    assert not ends_complete(b'{"solutions": [', b'{"z": 2},')
    assert not ends_complete(b'{"solutions": [', b'{"z": 2}]')   # ends with ']' but opened with '{'
    assert not ends_complete(b"[1,", b"2")
    assert not ends_complete(b'"a long string', b'ends with an escaped quote \\"')
    assert ends_complete(b'"a long string', b'ends with an escaped backslash \\\\"')
    assert not ends_complete(b"<xml>", b"</xml>")


# --- json_file_complete: through the open run folder ----------------------------------------------


def _file(tmp_path: Path, name: str, data: bytes) -> RunDir:
    folder = tmp_path / "runs" / "run-1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return RunDir.open(folder)


def test_a_small_file_is_parsed_whole(tmp_path: Path) -> None:
    with _file(tmp_path, "output.json", b'{"a": [1, 2]}\n') as d:
        assert json_file_complete(d, "output.json")
    with _file(tmp_path, "output.json", b'{"a": [1, 2') as d:
        assert not json_file_complete(d, "output.json")


def test_a_file_of_two_windows_is_still_parsed_whole(tmp_path: Path) -> None:
    # 2 * WINDOW bytes: both ends would cover it, so a bad middle is seen.
    doc = b"[" + b" " * (2 * WINDOW - 4) + b"x]\n"
    assert len(doc) == 2 * WINDOW
    with _file(tmp_path, "output.json", doc) as d:
        assert not json_file_complete(d, "output.json")


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.timeout(20)
def test_a_huge_file_is_read_only_at_its_ends(tmp_path: Path) -> None:
    # 8 GiB, sparse: its middle is NUL bytes, which no JSON parser would accept; only its ends are read.
    folder = tmp_path / "runs" / "run-1"
    folder.mkdir(parents=True)
    size = 8 << 30
    with open(folder / "output.json", "wb") as f:
        f.write(b'{"solutions": [')
        f.seek(size - len(b'{"done": true}]}\n'))
        f.write(b'{"done": true}]}\n')
    with RunDir.open(folder) as d:
        before = _bytes_read()
        assert json_file_complete(d, "output.json")
        read = _bytes_read() - before
    assert read <= 2 * WINDOW + 4096
    with open(folder / "output.json", "r+b") as f:   # now cut short: its last bytes are NULs
        f.truncate(size - 100)
    with RunDir.open(folder) as d:
        assert not json_file_complete(d, "output.json")


def test_what_is_not_a_regular_file_is_left_to_inspection(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "run-1"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "output.json")
    with RunDir.open(folder) as d:
        assert json_file_complete(d, "output.json"), "never opened (a FIFO would block)"


def test_a_vanished_file_is_a_change(tmp_path: Path) -> None:
    with _file(tmp_path, "input.json", b"{}") as d:
        os.unlink(d.path / "input.json")
        with pytest.raises(FolderChanged, match=r"input\.json vanished"):
            json_file_complete(d, "input.json")
