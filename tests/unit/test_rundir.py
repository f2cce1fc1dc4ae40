"""The run-folder handle attacked as a hostile producer would: symlinks that leave the folder, FIFOs and
sockets where files belong, files swapped between inspection and use, trees built to exhaust the walk.

Real directories (tmp_path). Every test also checks that no descriptor was left open."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from hostile_fs import (
    SECRET,
    OpenCounter,
    deep_dirs,
    loaded_fifo,
    put,
    unix_socket,
)

from watcher.config import FilesConfig, FormatConfig
from watcher.errors import FolderChanged, InvalidFolder
from watcher.runfolder.archive import MemberReader, open_member
from watcher.runfolder.folder import Member, fingerprint, inspect_folder, verify_fingerprint
from watcher.runfolder.rundir import MAX_PATH_BYTES, MAX_SYMLINKS, Ident, Limits, RunDir

pytestmark = pytest.mark.usefixtures("no_fd_leak")

Entry = tuple[str, os.stat_result]


def walked(run: Path, rel: str = "input", limits: Limits | None = None) -> list[tuple[str, str]]:
    with RunDir.open(run) as d:
        return [(arcname, real) for arcname, real, _ in d.walk(rel, limits or Limits())]


def inspected(d: RunDir, rel: str) -> tuple[str, Ident]:
    real, st = d.resolve(rel)
    return real, Ident.of(st)


# --- RunDir.open -----------------------------------------------------------------------------------


def test_open_holds_the_folder_itself(run: Path) -> None:
    with RunDir.open(run) as d:
        st = run.stat()
        assert (d.dev, d.ino) == (st.st_dev, st.st_ino)
        assert d.label == str(run)
    assert d.closed


@pytest.mark.parametrize("target", ["run-1", "/etc"])
def test_a_symlinked_folder_is_refused_not_followed(run: Path, target: str) -> None:
    link = run.parent / "run-link"
    link.symlink_to(target)
    with pytest.raises(FolderChanged, match=r"not a directory"):
        RunDir.open(link)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("plant", ["file", "fifo", "socket"])
def test_a_non_directory_is_refused_without_blocking(run: Path, plant: str) -> None:
    path = run.parent / "run-2"
    if plant == "file":
        path.write_bytes(b"x")
    elif plant == "fifo":
        os.mkfifo(path)   # nobody writes: opening it for reading would block
    with unix_socket(path) if plant == "socket" else contextlib.nullcontext(), \
            pytest.raises(FolderChanged, match=r"not a directory"):
        RunDir.open(path)


def test_a_vanished_folder_is_folder_changed(run: Path) -> None:
    with pytest.raises(FolderChanged, match=r"vanished"):
        RunDir.open(run.parent / "gone")


# --- resolve ---------------------------------------------------------------------------------------


def test_relative_and_absolute_links_inside_the_folder_resolve_to_real_paths(run: Path) -> None:
    put(run, {"data/real.json": b"{}"})
    (run / "rel.json").symlink_to("data/real.json")
    (run / "abs.json").symlink_to(run / "data" / "real.json")
    (run / "data" / "up.json").symlink_to("../rel.json")     # a chain, through '..', still inside
    (run / "datalink").symlink_to("data")
    with RunDir.open(run) as d:
        for rel in ("rel.json", "abs.json", "data/up.json", "datalink/real.json", "./data//real.json"):
            real, st = d.resolve(rel)
            assert real == "data/real.json", rel
            assert (st.st_ino, stat.S_ISREG(st.st_mode)) == ((run / "data/real.json").stat().st_ino, True)
        assert d.resolve("datalink")[0] == "data"


def test_an_absolute_link_naming_the_folder_by_its_real_path_is_inside(run: Path, tmp_path: Path) -> None:
    put(run, {"real.json": b"{}"})
    alias = tmp_path / "alias"
    alias.symlink_to(run.parent)                               # the watched path, configured via a symlink
    (run / "abs.json").symlink_to(run / "real.json")           # names the folder by its real path
    with RunDir.open(alias / "run-1") as d:
        assert d.resolve("abs.json")[0] == "real.json"


@pytest.mark.parametrize("target", [
    "../run-2/input.json",            # a sibling folder
    "data/../../run-2/input.json",    # '..' past the top, after a descent
    "../run-1/../../secret.key",
])
def test_a_relative_link_climbing_out_is_invalid(run: Path, target: str) -> None:
    put(run, {"data/x": b""})
    put(run.parent, {"run-2/input.json": b"other team"})
    (run / "input.json").symlink_to(target)
    with RunDir.open(run) as d, pytest.raises(InvalidFolder, match=r"input.json: symlink points outside"):
        d.resolve("input.json")


def test_an_absolute_link_outside_is_invalid_even_with_the_folder_name_as_prefix(run: Path, secret: Path) -> None:
    evil = run.parent / "run-1-evil"
    put(evil, {"input.json": b"other team"})
    (run / "a").symlink_to(secret)
    (run / "b").symlink_to(evil / "input.json")                # "/.../run-1" is a prefix of "/.../run-1-evil"
    (run / "c").symlink_to(str(run) + "/../run-1-evil/input.json")
    with RunDir.open(run) as d:
        for name in ("a", "b", "c"):
            with pytest.raises(InvalidFolder, match=rf"{name}: symlink points outside"):
                d.resolve(name)


@pytest.mark.parametrize("target", ["missing.json", "file.txt/inner", "missing-dir/x"])
def test_a_broken_link_is_invalid_naming_the_label(run: Path, target: str) -> None:
    put(run, {"file.txt": b""})
    (run / "x").symlink_to(target)
    with RunDir.open(run) as d, pytest.raises(InvalidFolder, match=r"input/x: broken symlink"):
        d.resolve("x", "input/x")


def test_symlink_loops_are_invalid(run: Path) -> None:
    (run / "a").symlink_to("b")
    (run / "b").symlink_to("a")
    (run / "self").symlink_to("self")
    (run / "deep").symlink_to("deep/x")
    with RunDir.open(run) as d:
        for name in ("a", "self", "deep"):
            with pytest.raises(InvalidFolder, match=r"loop"):
                d.resolve(name)


def test_at_most_40_links_are_followed(run: Path) -> None:
    put(run, {"file": b"x"})
    n = MAX_SYMLINKS + 1
    for i in range(n):     # l0 -> l1 -> ... -> l40 -> file: 41 links from l0, 40 from l1
        (run / f"l{i}").symlink_to(f"l{i + 1}" if i < n - 1 else "file")
    with RunDir.open(run) as d:
        assert d.resolve("l1")[0] == "file"
        with pytest.raises(InvalidFolder, match=r"loop"):
            d.resolve("l0")


def test_a_missing_entry_that_is_no_link_is_file_not_found(run: Path) -> None:
    with RunDir.open(run) as d, pytest.raises(FileNotFoundError):
        d.resolve("nothing/here")


def test_resolving_a_long_path_opens_each_directory_once_not_once_per_component(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer's link to a 2,000-level path took 12 s to resolve (every component reopened the path
    from the top); one symlink per input file made that hours."""
    depth = 400
    deep = deep_dirs(run, depth)
    (run / "link").symlink_to(deep)
    with RunDir.open(run) as d:
        opens = OpenCounter(monkeypatch)
        real, st = d.resolve("link")
    assert real == deep and stat.S_ISDIR(st.st_mode)
    assert opens.calls <= 2 * depth


def test_a_link_made_of_dotdot_chains_is_refused_before_it_costs_much(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'d/..' repeated at the bottom of a deep tree: each '..' reopens the path from the top."""
    deep = deep_dirs(run, 300)
    (run / deep / "loopy").symlink_to("/".join(["..", "d"] * 800))   # 4,000 bytes: a valid target
    with RunDir.open(run) as d:
        opens = OpenCounter(monkeypatch)
        with pytest.raises(InvalidFolder, match=r"too deep"):
            d.resolve(f"{deep}/loopy")
    assert opens.calls <= 2 * MAX_PATH_BYTES


# --- walk ------------------------------------------------------------------------------------------


def test_walk_lists_every_regular_file_sorted_by_arcname_dotfiles_included(run: Path) -> None:
    put(run, {"input/b.csv": b"b", "input/a/z.json": b"z", "input/a/.hidden": b"h", "input/A.txt": b"A",
              "shared/s.csv": b"s"})
    (run / "input" / "linked").symlink_to("../shared")          # a symlinked subdirectory inside the folder
    (run / "input" / "file-link.csv").symlink_to("b.csv")
    assert walked(run) == [("A.txt", "input/A.txt"), ("a/.hidden", "input/a/.hidden"), ("a/z.json", "input/a/z.json"),
                           ("b.csv", "input/b.csv"), ("file-link.csv", "input/b.csv"),
                           ("linked/s.csv", "shared/s.csv")]


@pytest.mark.parametrize("link", [".", "..", "../../input", "<the folder by its absolute path>"])
def test_walk_refuses_a_symlink_loop(run: Path, link: str) -> None:
    put(run, {"input/a/x": b""})
    (run / "input" / "a" / "loop").symlink_to(run if link.startswith("<") else link)
    with pytest.raises(InvalidFolder, match=r"input/a/loop(/input)?: symlink loop"):
        walked(run)


@pytest.mark.timeout(20)
def test_walk_refuses_a_fifo_and_a_socket_without_opening_them(run: Path) -> None:
    put(run, {"input/ok.csv": b"", "output/ok.csv": b""})
    with loaded_fifo(run / "input" / "pipe") as untouched:
        with pytest.raises(InvalidFolder, match=r"input/pipe: not a regular file or directory \(FIFO\)"):
            walked(run)
        assert untouched()
    with unix_socket(run / "output" / "sock"), \
            pytest.raises(InvalidFolder, match=r"output/sock: not a regular file or directory \(socket\)"):
        walked(run, "output")


def test_walk_refuses_a_device(run: Path) -> None:
    put(run, {"input/ok.csv": b""})
    try:
        os.mknod(run / "input" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    with pytest.raises(InvalidFolder, match=r"input/null: .*\(character device\)"):
        walked(run)


def test_walk_caps_the_number_of_files_naming_the_config_key(run: Path) -> None:
    put(run, {"input/a": b"", "input/b": b"", "input/sub/c": b""})
    assert len(walked(run, limits=Limits(max_files=3))) == 3
    with pytest.raises(InvalidFolder, match=r"input: more than 2 files \(files.max_archive_files\)"):
        walked(run, limits=Limits(max_files=2))


def test_walk_caps_the_depth_naming_the_config_key(run: Path) -> None:
    put(run, {"input/a/b/f": b""})
    assert walked(run, limits=Limits(max_depth=2)) == [("a/b/f", "input/a/b/f")]
    put(run, {"input/a/b/c/f": b""})
    with pytest.raises(InvalidFolder, match=r"input: deeper than 2 directories \(files.max_archive_depth\)"):
        walked(run, limits=Limits(max_depth=2))


def test_walk_caps_the_path_length_at_4096_bytes_with_a_short_message(run: Path) -> None:
    (run / "input").mkdir()
    deep_dirs(run / "input", 17, "x" * 250)   # 17 * 251 bytes: each name fine, the path too long
    with pytest.raises(InvalidFolder, match=rf"path longer than {MAX_PATH_BYTES} bytes") as err:
        walked(run, limits=Limits(max_depth=64))
    assert len(str(err.value)) < 300


@pytest.mark.timeout(30)
def test_walk_bounds_the_directories_a_symlink_lattice_makes_it_visit(run: Path) -> None:
    """Every level holds two links to the next: 2**30 paths to walk and no file to count."""
    levels = 30
    for i in range(levels):
        (run / f"l{i}").mkdir()
    for i in range(levels - 1):
        for name in ("a", "b"):
            (run / f"l{i}" / name).symlink_to(f"../l{i + 1}")
    (run / "input").symlink_to("l0")
    with pytest.raises(InvalidFolder, match=r"input: more than 1000 directories \(files.max_archive_files\)"):
        walked(run, limits=Limits(max_files=1000))


def test_a_directory_swapped_for_a_symlink_between_listing_and_descending_is_never_followed(
        run: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(run, {"input/sub/ok.csv": b"ok"})
    outside = secret.parent / "other-team"
    put(outside, {"key.csv": SECRET})
    real_list = RunDir._list

    def swap_after_listing(self: RunDir, real: str, dev_ino: tuple[int, int], label: str) -> list[Entry]:
        entries = real_list(self, real, dev_ino, label)
        if real == "input":
            (run / "input" / "sub").rename(run / "input" / ".old")
            (run / "input" / "sub").symlink_to(outside)
        return entries

    monkeypatch.setattr(RunDir, "_list", swap_after_listing)
    with pytest.raises(FolderChanged, match=r"input/sub"):
        walked(run)


def test_a_directory_swapped_for_another_between_listing_and_descending_is_folder_changed(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(run, {"input/sub/ok.csv": b"ok", "elsewhere/key.csv": b"not this"})
    real_list = RunDir._list

    def swap_after_listing(self: RunDir, real: str, dev_ino: tuple[int, int], label: str) -> list[Entry]:
        entries = real_list(self, real, dev_ino, label)
        if real == "input":
            (run / "input" / "sub").rename(run / "old")
            (run / "elsewhere").rename(run / "input" / "sub")
        return entries

    monkeypatch.setattr(RunDir, "_list", swap_after_listing)
    with pytest.raises(FolderChanged, match=r"input/sub was replaced"):
        walked(run)


def test_walk_of_a_file_is_not_a_directory(run: Path) -> None:
    put(run, {"input.json": b"{}"})
    with pytest.raises(NotADirectoryError):
        walked(run, "input.json")


# --- open_file / read_file -------------------------------------------------------------------------


def test_open_file_reads_the_inspected_file(run: Path) -> None:
    put(run, {"input/a/data.csv": b"1,2,3"})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "input/a/data.csv")
        fd = d.open_file(real, ident)
        try:
            assert os.read(fd, 100) == b"1,2,3"
        finally:
            os.close(fd)
        assert d.read_file(real, ident) == b"1,2,3"


def test_a_file_swapped_for_a_symlink_to_the_secret_is_never_read(run: Path, secret: Path) -> None:
    put(run, {"logs.txt": b"x" * len(SECRET)})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "logs.txt")
        (run / "logs.txt").unlink()
        (run / "logs.txt").symlink_to(secret)
        with pytest.raises(FolderChanged, match=r"logs.txt was replaced"):
            d.read_file(real, ident)


def test_a_file_swapped_for_a_symlink_to_a_loaded_fifo_is_never_opened(run: Path, tmp_path: Path) -> None:
    put(run, {"logs.txt": b"log"})
    with RunDir.open(run) as d, loaded_fifo(tmp_path / "pipe") as untouched:
        real, ident = inspected(d, "logs.txt")
        (run / "logs.txt").unlink()
        (run / "logs.txt").symlink_to(tmp_path / "pipe")
        with pytest.raises(FolderChanged):
            d.open_file(real, ident)
        assert untouched()


def test_a_directory_on_the_path_swapped_for_a_symlink_is_never_followed(run: Path, tmp_path: Path) -> None:
    put(run, {"input/sub/data.csv": b"x" * len(SECRET)})
    put(tmp_path, {"other/data.csv": SECRET})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "input/sub/data.csv")
        (run / "input" / "sub").rename(run / "input" / ".moved")
        (run / "input" / "sub").symlink_to(tmp_path / "other")
        with pytest.raises(FolderChanged, match=r"input/sub/data.csv was replaced"):
            d.read_file(real, ident)


def test_a_hardlink_to_another_file_of_the_same_size_and_mtime_is_folder_changed(run: Path) -> None:
    put(run, {"logs.txt": b"public", "private.txt": b"secret"})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "logs.txt")
        os.utime(run / "private.txt", ns=(ident.mtime_ns, ident.mtime_ns))
        (run / "logs.txt").unlink()
        os.link(run / "private.txt", run / "logs.txt")
        with pytest.raises(FolderChanged, match=r"logs.txt changed since it was inspected"):
            d.read_file(real, ident)


@pytest.mark.timeout(20)
def test_a_fifo_swapped_in_is_folder_changed_and_never_read(run: Path) -> None:
    put(run, {"logs.txt": b"log"})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "logs.txt")
        (run / "logs.txt").unlink()
        with loaded_fifo(run / "logs.txt") as untouched:
            with pytest.raises(FolderChanged, match=r"logs.txt is no longer a regular file \(FIFO\)"):
                d.read_file(real, ident)
            assert untouched()
        os.mkfifo(run / "silent")     # and one nobody writes to: opening it must not block
        (run / "logs.txt").unlink()
        (run / "silent").rename(run / "logs.txt")
        with pytest.raises(FolderChanged, match=r"FIFO"):
            d.open_file(real, ident)


def test_a_socket_swapped_in_is_folder_changed_naming_the_file(run: Path) -> None:
    put(run, {"logs.txt": b"log"})
    with RunDir.open(run) as d:
        real, ident = inspected(d, "logs.txt")
        (run / "logs.txt").unlink()
        with unix_socket(run / "logs.txt"), pytest.raises(FolderChanged, match=r"logs.txt"):
            d.open_file(real, ident)


@pytest.mark.parametrize("change", ["grow", "shrink", "touch", "vanish"])
def test_a_file_changed_after_inspection_is_folder_changed(run: Path, change: str) -> None:
    put(run, {"output.json": b'{"v": 1}'})
    path = run / "output.json"
    with RunDir.open(run) as d:
        real, ident = inspected(d, "output.json")
        if change == "grow":
            path.write_bytes(b'{"v": 1}' + SECRET)
        elif change == "shrink":
            os.truncate(path, 2)
        elif change == "touch":
            os.utime(path, ns=(ident.mtime_ns + 10**9, ident.mtime_ns + 10**9))
        else:
            path.unlink()
        with pytest.raises(FolderChanged, match=r"output.json"):
            d.read_file(real, ident)


# --- newest_mtime ----------------------------------------------------------------------------------


def test_newest_mtime_never_follows_symlinks_and_skips_our_files(run: Path, secret: Path) -> None:
    put(run, {"input.json": b"{}", ".nextmv-journal.json": b"{}"})
    os.utime(run / "input.json", (1000, 1000))
    os.utime(run / ".nextmv-journal.json", (5000, 5000))
    (run / "key").symlink_to(secret)
    os.utime(run / "key", (2000, 2000), follow_symlinks=False)
    os.utime(secret, (9000, 9000))
    with RunDir.open(run) as d:
        assert d.newest_mtime(".nextmv-", now=0.0, max_entries=100) == 2000


def test_newest_mtime_costs_at_most_its_budget_on_a_deep_chain(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep_dirs(run, 600)
    with RunDir.open(run) as d:
        opens = OpenCounter(monkeypatch)
        d.newest_mtime(".nextmv-", now=0.0, max_entries=500)
    assert opens.calls <= 2 * 500


# --- MemberReader: exactly the inspected bytes --------------------------------------------------------


def member(d: RunDir, rel: str) -> Member:
    real, ident = inspected(d, rel)
    return Member(rel, real, ident)


def test_a_member_reads_exactly_its_inspected_size_and_rereads_after_seek_0(run: Path) -> None:
    content = bytes(range(256)) * 1000
    put(run, {"input/data.bin": content})
    with RunDir.open(run) as d:
        m = member(d, "input/data.bin")
        with MemberReader(d, m) as raw:
            assert raw.readall() == content
            assert raw.seek(0) == 0
            assert raw.read(10) == content[:10]
            assert raw.readall() == content[10:]
        with open_member(d, m) as buffered:   # what uploads use: seek(0) for a retried PUT
            assert buffered.read() == content
            buffered.seek(0)
            assert buffered.read() == content


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_a_member_changing_size_while_read_is_folder_changed(run: Path, change: str) -> None:
    put(run, {"logs.txt": b"0123456789"})
    with RunDir.open(run) as d, MemberReader(d, member(d, "logs.txt")) as raw:
        assert raw.read(4) == b"0123"
        if change == "grow":
            with open(run / "logs.txt", "ab") as f:
                f.write(SECRET)
        else:
            os.truncate(run / "logs.txt", 6)
        verb = "grew" if change == "grow" else "shrank"
        with pytest.raises(FolderChanged, match=rf"logs.txt {verb} while being read"):
            raw.readall()


def test_a_member_that_cannot_be_opened_leaves_a_reader_that_closes_cleanly(run: Path) -> None:
    """A reader whose open failed (the file was swapped) is closed when collected; that close must
    not raise AttributeError (logged as 'Exception ignored' with a traceback under -X dev)."""
    put(run, {"logs.txt": b"log"})
    with RunDir.open(run) as d:
        m = member(d, "logs.txt")
        (run / "logs.txt").unlink()
        (run / "logs.txt").symlink_to("/etc/hostname")
        with pytest.raises(FolderChanged) as err:
            MemberReader(d, m)
    tb = err.tb
    readers = []
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, MemberReader):
            readers.append(candidate)
        tb = tb.tb_next
    assert readers, "the half-built reader is reachable from the traceback"
    readers[0].close()
    assert readers[0].closed


def test_verification_walks_with_the_configured_caps_not_the_defaults(run: Path) -> None:
    """A folder valid under max_archive_depth: 100 must not be 'changed during upload' for ever
    because the re-walk used the default cap of 64."""
    (run / "input").mkdir()
    deep = deep_dirs(run / "input", 70)
    put(run, {f"input/{deep}/data.csv": b"1", "output.json": b"{}"})
    files = FilesConfig(input=("input/",), output=("output.json",), logs=(), status="status.json",
                        max_archive_depth=100)
    with RunDir.open(run) as d:
        folder = inspect_folder(d, files, FormatConfig())
        verify_fingerprint(folder, fingerprint(folder))
        assert [m.arcname for m in folder.artifacts[0].members] == [f"{deep}/data.csv"]
