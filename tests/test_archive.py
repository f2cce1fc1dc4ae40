"""Archives, UTF-8 copies and JSON wrapping: bytes in, bytes out."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.archive import (
    CHUNK_SIZE,
    archive_members,
    copy_utf8,
    is_utf8,
    load_json,
    wrapped_json,
    write_archive,
)
from watcher.errors import FolderChanged, InvalidFolder


def build_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def archive_bytes(directory: Path) -> bytes:
    buf = io.BytesIO()
    write_archive(archive_members(directory, True), buf)
    return buf.getvalue()


def extract(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert member.isreg(), member.name
            assert (member.mtime, member.mode, member.uid, member.gid) == (0, 0o644, 0, 0)
            assert (member.uname, member.gname) == ("", "")
            f = tar.extractfile(member)
            assert f is not None
            out[member.name] = f.read()
    return out


TREE = {
    "b.csv": b"b,1\n",
    "a/z.json": b'{"z": 1}',
    "a/.hidden": b"dot",
    "empty.txt": b"",
    "unicode ä/日本 語.txt": "héllo".encode(),
    "x" * 120 + "/long-name.csv": b"long",
    "big.bin": random.Random(1).randbytes(3 * CHUNK_SIZE + 17),
}


# --- archive_members --------------------------------------------------------------------------------


def test_archive_members_lists_every_regular_file_sorted(fs: FakeFilesystem) -> None:
    root = Path("/run/input")
    build_tree(root, TREE)
    (root / "empty-dir").mkdir()
    names = [name for name, _ in archive_members(root, True)]
    assert names == sorted(TREE)
    assert all(path == root / name for name, path in archive_members(root, True))


def test_archive_members_of_one_file_is_that_file(fs: FakeFilesystem) -> None:
    fs.create_file("/run/input.csv")
    assert archive_members(Path("/run/input.csv"), False) == [("input.csv", Path("/run/input.csv"))]


def test_archive_members_refuses_a_link_outside_the_given_root(fs: FakeFilesystem) -> None:
    fs.create_file("/run/shared/x.csv")
    fs.create_dir("/run/input")
    fs.create_symlink("/run/input/x.csv", "/run/shared/x.csv")
    assert archive_members(Path("/run/input"), True)[0][0] == "x.csv"
    with pytest.raises(InvalidFolder, match=r"x.csv: symlink points outside the run folder"):
        archive_members(Path("/run/input"), True, root=Path("/run/input"))


# --- write_archive ----------------------------------------------------------------------------------


def test_archive_round_trips_names_and_content(tmp_path: Path) -> None:
    build_tree(tmp_path / "input", TREE)
    assert extract(archive_bytes(tmp_path / "input")) == TREE


def test_archive_is_byte_identical_for_the_same_content(tmp_path: Path) -> None:
    build_tree(tmp_path / "one", TREE)
    build_tree(tmp_path / "two", TREE)
    for path in (tmp_path / "two").rglob("*"):
        os.utime(path, (12345, 12345))
        path.chmod(0o600 if path.is_file() else 0o700)
    first = archive_bytes(tmp_path / "one")
    assert archive_bytes(tmp_path / "one") == first
    assert archive_bytes(tmp_path / "two") == first


def test_gzip_header_has_no_mtime_and_no_file_name(tmp_path: Path) -> None:
    build_tree(tmp_path / "input", {"a": b"a"})
    with open(tmp_path / "named.tar.gz", "wb") as dest:
        write_archive(archive_members(tmp_path / "input", True), dest)
    data = (tmp_path / "named.tar.gz").read_bytes()
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] & 0x08 == 0  # FNAME flag
    assert data[4:8] == b"\0\0\0\0"
    assert len(gzip.decompress(data)) % tarfile.RECORDSIZE == 0


def test_an_empty_member_list_is_an_empty_archive() -> None:
    buf = io.BytesIO()
    write_archive([], buf)
    assert extract(buf.getvalue()) == {}


def test_three_thousand_small_files(tmp_path: Path) -> None:
    files = {f"d{i % 10}/f{i:05d}.csv": f"{i}\n".encode() for i in range(3000)}
    build_tree(tmp_path / "input", files)
    members = archive_members(tmp_path / "input", True)
    assert [n for n, _ in members] == sorted(files)
    assert extract(archive_bytes(tmp_path / "input")) == files


def test_archive_works_on_pyfakefs(fs: FakeFilesystem) -> None:
    build_tree(Path("/run/input"), {"a.csv": b"a", "b/c.csv": b"c"})
    assert extract(archive_bytes(Path("/run/input"))) == {"a.csv": b"a", "b/c.csv": b"c"}


def test_non_utf8_member_name_is_invalid_and_named_by_repr(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(InvalidFolder, match=r"'\\udcff.csv': file name is not valid UTF-8"):
        write_archive([("\udcff.csv", tmp_path / "a")], io.BytesIO())


class _Saboteur(io.BytesIO):
    """A destination that changes `victim` once the archive is being written."""

    def __init__(self, victim: Path, action: str) -> None:
        super().__init__()
        self.victim, self.action, self.sabotaged = victim, action, False

    def write(self, b: bytes, /) -> int:  # type: ignore[override]
        if len(b) > 1000 and not self.sabotaged:  # compressed content, not the gzip header
            self.sabotaged = True
            with open(self.victim, "r+b" if self.action == "shrink" else "ab") as f:
                if self.action == "shrink":
                    f.truncate(10)
                else:
                    f.write(b"more")
        return super().write(b)


@pytest.mark.parametrize(("action", "message"), [("shrink", "shrank"), ("grow", "grew")])
def test_a_member_changing_size_while_read_is_folder_changed(
    tmp_path: Path, action: str, message: str,
) -> None:
    victim = tmp_path / "big.bin"
    victim.write_bytes(random.Random(2).randbytes(1 << 20))  # incompressible: gzip writes while reading
    dest = _Saboteur(victim, action)
    with pytest.raises(FolderChanged, match=rf"big.bin {message} while being archived"):
        write_archive([("big.bin", victim)], dest)
    assert dest.sabotaged


def test_a_vanished_member_is_folder_changed(tmp_path: Path) -> None:
    with pytest.raises(FolderChanged, match=r"gone.csv vanished"):
        write_archive([("gone.csv", tmp_path / "gone.csv")], io.BytesIO())


@pytest.mark.timeout(10)
def test_a_fifo_member_is_never_opened_for_blocking_reads(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FolderChanged, match=r"pipe is no longer a regular file \(FIFO\)"):
        write_archive([("pipe", tmp_path / "pipe")], io.BytesIO())


# --- copy_utf8 / is_utf8 ----------------------------------------------------------------------------

MIXED = "ok é 😀 €\n".encode() * 50 + b"bad \xff here, cut \xe2\x82 there, lone \x80 end; real \xef\xbf\xbd\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 64, CHUNK_SIZE])
def test_copy_utf8_replaces_invalid_sequences_across_chunk_boundaries(
    tmp_path: Path, chunk_size: int,
) -> None:
    src = tmp_path / "logs.txt"
    src.write_bytes(MIXED)
    dest = io.BytesIO()
    assert copy_utf8(src, dest, chunk_size=chunk_size) == 3
    assert dest.getvalue() == MIXED.decode("utf-8", "replace").encode()
    assert dest.getvalue().decode("utf-8").count("\ufffd") == 4  # three replacements, one genuine


@pytest.mark.parametrize(
    ("data", "count"),
    [(b"", 0), (b"plain", 0), ("\ufffd already".encode(), 0), (b"\xff\xfe", 2), (b"end cut \xf0\x9f\x98", 1)],
)
def test_copy_utf8_counts(tmp_path: Path, data: bytes, count: int) -> None:
    src = tmp_path / "logs.txt"
    src.write_bytes(data)
    dest = io.BytesIO()
    assert copy_utf8(src, dest, chunk_size=2) == count
    assert dest.getvalue() == data.decode("utf-8", "replace").encode()


@pytest.mark.parametrize(
    ("data", "valid"),
    [(b"", True), ("é 😀".encode() * 10, True), (MIXED, False), (b"ok \xe2\x82", False),
     (b"\xc0\xaf", False)],
)
@pytest.mark.parametrize("chunk_size", [1, 3, CHUNK_SIZE])
def test_is_utf8(tmp_path: Path, data: bytes, valid: bool, chunk_size: int) -> None:
    path = tmp_path / "logs.txt"
    path.write_bytes(data)
    assert is_utf8(path, chunk_size=chunk_size) is valid


# --- JSON ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "key", "expected"),
    [
        ('{"statistics": {"run": {"duration": 1}}}', "statistics", None),
        ('{"run": {"duration": 1}, "é": "ü"}', "statistics",
         {"statistics": {"run": {"duration": 1}, "é": "ü"}}),
        ('[{"content": "x"}]', "assets", {"assets": [{"content": "x"}]}),
        ('{"assets": []}', "assets", None),
        ('{"statistics": 1}', "assets", {"assets": {"statistics": 1}}),
        ("42", "statistics", {"statistics": 42}),
    ],
)
def test_wrapped_json(fs: FakeFilesystem, content: str, key: str, expected: object) -> None:
    fs.create_file("/run/x.json", contents=content)
    result = wrapped_json(Path("/run/x.json"), key)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert json.loads(result.decode("utf-8")) == expected


def test_wrapped_json_is_compact_utf8(fs: FakeFilesystem) -> None:
    fs.create_file("/run/statistics.json", contents='{ "a" : [1, 2], "é": "ü" }')
    expected = '{"statistics":{"a":[1,2],"é":"ü"}}'.encode()
    assert wrapped_json(Path("/run/statistics.json"), "statistics") == expected


@pytest.mark.parametrize("content", [b"{", b"", b"NaN", b'{"a": Infinity}', b"\xff", b"[" * 100_000])
def test_invalid_json_is_invalid_folder_naming_the_file(fs: FakeFilesystem, content: bytes) -> None:
    fs.create_file("/run/assets.json", contents=content)
    with pytest.raises(InvalidFolder) as excinfo:
        wrapped_json(Path("/run/assets.json"), "assets")
    assert excinfo.value.folder == "/run"
    assert excinfo.value.problem.startswith("assets.json: ")


def test_load_json_size_limit(fs: FakeFilesystem) -> None:
    fs.create_file("/run/status.json", contents=b"{}" + b" " * 100)
    assert load_json(Path("/run/status.json"), folder="/run", max_bytes=102) == {}
    with pytest.raises(InvalidFolder, match=r"status.json: bigger than 101 bytes"):
        load_json(Path("/run/status.json"), folder="/run", max_bytes=101)
