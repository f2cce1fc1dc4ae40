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

from watcher.errors import FolderChanged, InvalidFolder
from watcher.runfolder.archive import CHUNK_SIZE, copy_utf8, is_utf8, open_member, write_archive, write_wrapped
from watcher.runfolder.folder import Member
from watcher.runfolder.rundir import Ident, Limits, RunDir


def build_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def members(d: RunDir, rel: str) -> list[Member]:
    return [Member(arcname, real, Ident.of(st)) for arcname, real, st in d.walk(rel, Limits())]


def one(d: RunDir, rel: str) -> Member:
    real, st = d.resolve(rel)
    return Member(rel, real, Ident.of(st))


def archive_bytes(run: Path, rel: str = "input") -> bytes:
    buf = io.BytesIO()
    with RunDir.open(run) as d:
        write_archive(d, members(d, rel), buf)
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


# --- write_archive ----------------------------------------------------------------------------------


def test_archive_round_trips_names_and_content(tmp_path: Path) -> None:
    build_tree(tmp_path / "run" / "input", TREE)
    (tmp_path / "run" / "input" / "empty-dir").mkdir()
    assert extract(archive_bytes(tmp_path / "run")) == TREE


def test_archive_is_byte_identical_for_the_same_content(tmp_path: Path) -> None:
    build_tree(tmp_path / "one" / "input", TREE)
    build_tree(tmp_path / "two" / "input", TREE)
    for path in (tmp_path / "two").rglob("*"):
        os.utime(path, (12345, 12345))
        path.chmod(0o600 if path.is_file() else 0o700)
    first = archive_bytes(tmp_path / "one")
    assert archive_bytes(tmp_path / "one") == first
    assert archive_bytes(tmp_path / "two") == first


def test_gzip_header_has_no_mtime_and_no_file_name(tmp_path: Path) -> None:
    build_tree(tmp_path / "run" / "input", {"a": b"a"})
    with open(tmp_path / "named.tar.gz", "wb") as dest, RunDir.open(tmp_path / "run") as d:
        write_archive(d, members(d, "input"), dest)
    data = (tmp_path / "named.tar.gz").read_bytes()
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] & 0x08 == 0  # FNAME flag
    assert data[4:8] == b"\0\0\0\0"
    assert len(gzip.decompress(data)) % tarfile.RECORDSIZE == 0


def test_an_empty_member_list_is_an_empty_archive(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with RunDir.open(tmp_path) as d:
        write_archive(d, [], buf)
    assert extract(buf.getvalue()) == {}


def test_three_thousand_small_files(tmp_path: Path) -> None:
    files = {f"d{i % 10}/f{i:05d}.csv": f"{i}\n".encode() for i in range(3000)}
    build_tree(tmp_path / "run" / "input", files)
    with RunDir.open(tmp_path / "run") as d:
        assert [m.arcname for m in members(d, "input")] == sorted(files)
    assert extract(archive_bytes(tmp_path / "run")) == files


def test_archive_works_on_pyfakefs(fs: FakeFilesystem) -> None:
    build_tree(Path("/run/input"), {"a.csv": b"a", "b/c.csv": b"c"})
    assert extract(archive_bytes(Path("/run"))) == {"a.csv": b"a", "b/c.csv": b"c"}


def test_non_utf8_member_name_is_invalid_and_named_by_repr(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with RunDir.open(tmp_path) as d, pytest.raises(InvalidFolder, match=r"'\\udcff.csv': file name is not valid UTF-8"):
        write_archive(d, [Member("\udcff.csv", "a", one(d, "a").ident)], io.BytesIO())


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
    with RunDir.open(tmp_path) as d, pytest.raises(FolderChanged, match=rf"big.bin {message} while being read"):
        write_archive(d, [one(d, "big.bin")], dest)
    assert dest.sabotaged


def test_a_vanished_member_is_folder_changed(tmp_path: Path) -> None:
    (tmp_path / "gone.csv").write_text("x")
    with RunDir.open(tmp_path) as d:
        member = one(d, "gone.csv")
        (tmp_path / "gone.csv").unlink()
        with pytest.raises(FolderChanged, match=r"gone.csv vanished"):
            write_archive(d, [member], io.BytesIO())


def test_a_member_replaced_after_inspection_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("inspected")
    (tmp_path / "secret").write_text("not for upload")
    with RunDir.open(tmp_path) as d:
        member = one(d, "a.csv")
        (tmp_path / "a.csv").unlink()
        (tmp_path / "a.csv").symlink_to(tmp_path / "secret")
        with pytest.raises(FolderChanged, match=r"a.csv was replaced"):
            write_archive(d, [member], io.BytesIO())
        (tmp_path / "a.csv").unlink()
        os.link(tmp_path / "secret", tmp_path / "a.csv")
        with pytest.raises(FolderChanged, match=r"a.csv changed since it was inspected"):
            write_archive(d, [member], io.BytesIO())


@pytest.mark.timeout(10)
def test_a_fifo_swapped_in_for_a_member_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "pipe").write_text("x")
    with RunDir.open(tmp_path) as d:
        member = one(d, "pipe")
        (tmp_path / "pipe").unlink()
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(FolderChanged, match=r"pipe is no longer a regular file \(FIFO\)"):
            write_archive(d, [member], io.BytesIO())


# --- copy_utf8 / is_utf8 ----------------------------------------------------------------------------

MIXED = "ok é 😀 €\n".encode() * 50 + b"bad \xff here, cut \xe2\x82 there, lone \x80 end; real \xef\xbf\xbd\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 64, CHUNK_SIZE])
def test_copy_utf8_replaces_invalid_sequences_across_chunk_boundaries(
    tmp_path: Path, chunk_size: int,
) -> None:
    (tmp_path / "logs.txt").write_bytes(MIXED)
    dest = io.BytesIO()
    with RunDir.open(tmp_path) as d, open_member(d, one(d, "logs.txt")) as src:
        assert copy_utf8(src, dest, chunk_size=chunk_size) == 3
    assert dest.getvalue() == MIXED.decode("utf-8", "replace").encode()
    assert dest.getvalue().decode("utf-8").count("\ufffd") == 4  # three replacements, one genuine


@pytest.mark.parametrize(
    ("data", "count"),
    [(b"", 0), (b"plain", 0), ("\ufffd already".encode(), 0), (b"\xff\xfe", 2), (b"end cut \xf0\x9f\x98", 1)],
)
def test_copy_utf8_counts(tmp_path: Path, data: bytes, count: int) -> None:
    dest = io.BytesIO()
    assert copy_utf8(io.BytesIO(data), dest, chunk_size=2) == count
    assert dest.getvalue() == data.decode("utf-8", "replace").encode()


@pytest.mark.parametrize(
    ("data", "valid"),
    [(b"", True), ("é 😀".encode() * 10, True), (MIXED, False), (b"ok \xe2\x82", False),
     (b"\xc0\xaf", False)],
)
@pytest.mark.parametrize("chunk_size", [1, 3, CHUNK_SIZE])
def test_is_utf8(tmp_path: Path, data: bytes, valid: bool, chunk_size: int) -> None:
    (tmp_path / "logs.txt").write_bytes(data)
    with RunDir.open(tmp_path) as d, open_member(d, one(d, "logs.txt")) as src:
        assert is_utf8(src, chunk_size=chunk_size) is valid


# --- JSON ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "key", "expected"),
    [
        ('{"run": {"duration": 1}, "é": "ü"}', "statistics", {"statistics": {"run": {"duration": 1}, "é": "ü"}}),
        ('[{"content": "x"}]', "assets", {"assets": [{"content": "x"}]}),
        ('{"statistics": 1}', "assets", {"assets": {"statistics": 1}}),
        ("42", "statistics", {"statistics": 42}),
        (' \n[1, 2]\n', "assets", {"assets": [1, 2]}),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 3, CHUNK_SIZE])
def test_write_wrapped_keeps_the_documents_bytes_inside_the_wrapper(
        content: str, key: str, expected: object, chunk_size: int) -> None:
    dest = io.BytesIO()
    write_wrapped(io.BytesIO(content.encode()), key, dest, chunk_size=chunk_size)
    assert dest.getvalue() == b'{"' + key.encode() + b'":' + content.encode() + b"}"
    assert json.loads(dest.getvalue().decode("utf-8")) == expected
