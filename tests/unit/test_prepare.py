"""Preparing uploads: what is sent as it is, what is spooled, and that spool files never leak."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pyfakefs import helpers
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.config import FilesConfig, FormatConfig
from watcher.errors import FolderChanged, InvalidFolder, SpoolFull, StateError
from watcher.runfolder.folder import RunFolder, inspect_folder
from watcher.runfolder.prepare import Upload, clean_spool, prepare

FILES = FilesConfig(
    input=("input.json", "input.*", "input/"),
    output=("output.json", "output.*", "output/"),
    logs=("logs.txt", "logs.log"),
    status="status.json",
)
ROOT = Path("/watch/run-1")
SPOOL = Path("/state/spool")


def make(
    fs: FakeFilesystem, entries: Mapping[str, str | bytes], formats: FormatConfig | None = None,
) -> RunFolder:
    for name, content in entries.items():
        if isinstance(content, bytes):
            fs.create_file(ROOT / name, contents=content)
        else:
            fs.create_file(ROOT / name, contents=content, encoding="utf-8")
    return inspect_folder(ROOT, FILES, formats or FormatConfig())


def spool_files() -> list[str]:
    return sorted(os.listdir(SPOOL)) if SPOOL.exists() else []


def untar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, mode="r:gz") as tar:
        result = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            result[m.name] = f.read()
        return result


@pytest.fixture
def unprivileged(fs: FakeFilesystem) -> Iterator[None]:
    helpers.set_uid(1000)
    yield
    helpers.reset_ids()


def test_json_files_are_sent_as_they_are_without_any_copy(fs: FakeFilesystem) -> None:
    run = make(fs, {"input.json": "not json at all", "output.json": '{"x": 1}', "logs.txt": "fine ✓\n",
                    "metrics.json": '{"m": 1}', "statistics.json": '{"statistics": {}}',
                    "assets.json": '{"assets": []}'})
    with prepare(run, SPOOL) as prepared:
        assert prepared.uploads == tuple(
            Upload(a.role, a.path, a.path.stat().st_size, spooled=False) for a in run.artifacts)
        assert prepared.warnings == ()
    assert not SPOOL.exists()


def test_a_directory_is_spooled_as_an_archive_and_removed_afterwards(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "input/sub/.b": "b", "output.json": "{}"})
    with prepare(run, SPOOL) as prepared:
        upload = prepared.upload("input")
        assert upload is not None
        assert upload.spooled
        assert upload.path.parent == SPOOL
        assert upload.path.name.startswith("spool-")
        assert upload.path.name.endswith(".tar.gz")
        assert upload.size == upload.path.stat().st_size
        assert untar(upload.path) == {"a.csv": b"a", "sub/.b": b"b"}
        assert prepared.upload("output") == Upload("output", ROOT / "output.json", 2, spooled=False)
        assert prepared.upload("logs") is None
    assert spool_files() == []


@pytest.mark.parametrize(
    ("entry", "formats"), [("input.csv", None), ("input.json", FormatConfig(input="multi-file"))],
)
def test_a_single_multi_file_input_is_a_one_file_archive(
    fs: FakeFilesystem, entry: str, formats: FormatConfig | None,
) -> None:
    run = make(fs, {entry: "a,b\n", "output.json": "{}"}, formats)
    with prepare(run, SPOOL) as prepared:
        upload = prepared.upload("input")
        assert upload is not None
        assert untar(upload.path) == {entry: b"a,b\n"}


def test_text_format_is_sent_as_it_is(fs: FakeFilesystem) -> None:
    run = make(fs, {"input.txt": "plain", "output.json": "{}"}, FormatConfig(input="text"))
    with prepare(run, SPOOL) as prepared:
        assert prepared.upload("input") == Upload("input", ROOT / "input.txt", 5, spooled=False)


def test_logs_with_invalid_utf8_are_spooled_fixed_with_a_warning(fs: FakeFilesystem) -> None:
    run = make(fs, {"input.json": "{}", "logs.txt": b"start \xff\xfe middle \xe2\x82 end \xef\xbf\xbd\n"})
    with prepare(run, SPOOL) as prepared:
        logs = prepared.upload("logs")
        assert logs is not None
        assert logs.spooled
        assert logs.path.read_bytes() == "start \ufffd\ufffd middle \ufffd end \ufffd\n".encode()
        assert logs.size == len(logs.path.read_bytes())
        assert prepared.warnings == ("logs.txt: 3 invalid UTF-8 sequences replaced",)
    assert spool_files() == []


def test_zero_byte_files(fs: FakeFilesystem) -> None:
    run = make(fs, {"input.json": "", "output/empty.csv": "", "logs.txt": ""})
    with prepare(run, SPOOL) as prepared:
        assert prepared.upload("input") == Upload("input", ROOT / "input.json", 0, spooled=False)
        assert prepared.upload("logs") == Upload("logs", ROOT / "logs.txt", 0, spooled=False)
        output = prepared.upload("output")
        assert output is not None
        assert untar(output.path) == {"empty.csv": b""}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("statistics.json", '{"run": {"duration": 1.5}}', {"statistics": {"run": {"duration": 1.5}}}),
        ("assets.json", '[{"name": "a"}]', {"assets": [{"name": "a"}]}),
    ],
)
def test_statistics_and_assets_are_wrapped_when_needed(
    fs: FakeFilesystem, name: str, content: str, expected: dict[str, object],
) -> None:
    run = make(fs, {"input.json": "{}", "metrics.json": '{"m": 1}', name: content})
    role = name.removesuffix(".json")
    with prepare(run, SPOOL) as prepared:
        upload = prepared.upload(role)
        assert upload is not None
        assert upload.spooled
        assert json.loads(upload.path.read_bytes()) == expected
        assert prepared.upload("metrics") == Upload("metrics", ROOT / "metrics.json", 8, spooled=False)
    assert spool_files() == []


def test_uploads_follow_the_artifact_order(fs: FakeFilesystem) -> None:
    run = make(fs, {"assets.json": "[]", "metrics.json": "{}", "statistics.json": "{}", "logs.log": "l",
                    "output/o.csv": "o", "input/i.csv": "i"})
    with prepare(run, SPOOL) as prepared:
        roles = ["input", "output", "logs", "statistics", "metrics", "assets"]
        assert [u.role for u in prepared.uploads] == roles
        assert [u.spooled for u in prepared.uploads] == [True, True, False, True, False, True]
        assert len(spool_files()) == 4
    assert spool_files() == []


def test_the_spool_files_go_even_when_the_upload_fails(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "output/b.csv": "b"})
    with pytest.raises(RuntimeError), prepare(run, SPOOL):
        assert len(spool_files()) == 2
        raise RuntimeError("upload failed")
    assert spool_files() == []


def test_an_error_half_way_leaves_no_spool_file(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "output.json": "{}", "statistics.json": "{}"})
    (ROOT / "statistics.json").write_text("{broken")
    with pytest.raises(FolderChanged, match=r"statistics.json changed since it was inspected"):
        prepare(run, SPOOL)
    assert SPOOL.exists()
    assert spool_files() == []


def test_a_member_vanishing_before_archiving_is_folder_changed(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "input/b.csv": "b", "output.json": "{}"})
    os.remove(ROOT / "input" / "b.csv")
    with pytest.raises(FolderChanged, match=r"b.csv vanished"):
        prepare(run, SPOOL)
    assert spool_files() == []


def test_a_json_file_vanishing_is_folder_changed(fs: FakeFilesystem) -> None:
    run = make(fs, {"input.json": "{}", "output.json": "{}"})
    os.remove(ROOT / "output.json")
    with prepare(run, SPOOL) as prepared:
        upload = prepared.upload("output")
        assert upload is not None
        with pytest.raises(FolderChanged, match=r"output.json vanished"):
            prepared.open(upload)


def test_a_full_spool_disk_says_how_many_bytes_it_needs_and_leaves_nothing(fs: FakeFilesystem) -> None:
    fs.add_mount_point("/state", total_size=600)
    big = random.Random(3).randbytes(16384)  # gzip cannot shrink it below 600 bytes
    run = make(fs, {"input/a.bin": big, "output.json": "{}"})
    with pytest.raises(SpoolFull, match=r"spool directory /state/spool: No space left on device: "
                                        r"input \(as an archive\) needs up to [\d,]+ bytes") as caught:
        prepare(run, SPOOL)
    assert spool_files() == []
    with prepare(run, Path("/elsewhere")) as prepared:   # what it took where there was room
        upload = prepared.upload("input")
        assert upload is not None
    assert upload.size <= caught.value.needed <= 2 * upload.size


@pytest.mark.usefixtures("unprivileged")
def test_a_read_only_spool_directory_is_a_state_error(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "output.json": "{}"})
    fs.create_dir(SPOOL)
    os.chmod(SPOOL, 0o500)
    with pytest.raises(StateError, match=r"spool directory /state/spool: Permission denied"):
        prepare(run, SPOOL)
    assert spool_files() == []


@pytest.mark.usefixtures("unprivileged")
def test_an_unreadable_member_is_invalid_folder_not_state_error(fs: FakeFilesystem) -> None:
    run = make(fs, {"input/a.csv": "a", "output.json": "{}"})
    os.chmod(ROOT / "input" / "a.csv", 0)
    with pytest.raises(InvalidFolder, match=r"a.csv: permission denied"):
        prepare(run, SPOOL)
    assert spool_files() == []


def test_a_real_filesystem_archive_equals_the_files(tmp_path: Path) -> None:
    root = tmp_path / "Lauf 1 ä"
    files = {f"d{i % 3}/f{i}.csv": f"{i}\n".encode() for i in range(50)}
    for rel, content in files.items():
        (root / "input" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "input" / rel).write_bytes(content)
    (root / "output.json").write_text("{}")
    run = inspect_folder(root, FILES, FormatConfig())
    with prepare(run, tmp_path / "spool") as prepared:
        upload = prepared.upload("input")
        assert upload is not None
        assert untar(upload.path) == files
        again = io.BytesIO(upload.path.read_bytes())
    with prepare(run, tmp_path / "spool") as prepared2:
        upload2 = prepared2.upload("input")
        assert upload2 is not None
        assert upload2.path.read_bytes() == again.getvalue()
    assert list((tmp_path / "spool").iterdir()) == []


def test_clean_spool_removes_only_spool_files(fs: FakeFilesystem) -> None:
    for name in ("spool-abc.tar.gz", "spool-def.txt", "keep.txt"):
        fs.create_file(SPOOL / name)
    fs.create_dir(SPOOL / "spool-dir")
    assert clean_spool(SPOOL) == 2
    assert spool_files() == ["keep.txt", "spool-dir"]
    assert clean_spool(SPOOL) == 0


def test_clean_spool_of_a_missing_directory(fs: FakeFilesystem) -> None:
    assert clean_spool(Path("/nowhere")) == 0
