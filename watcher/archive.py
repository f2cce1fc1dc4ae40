"""Turning run-folder files into upload bytes: tar.gz archives, UTF-8 logs, wrapped JSON.

Everything here streams: no function reads a whole input, output or log file into memory
(the JSON helpers read the small metrics, statistics, assets and status files).

Errors follow one rule so that callers can tell whose fault a failure is:
- a problem with a *source* file raises `FolderError`: `FolderChanged` when it vanished,
  changed size or stopped being a regular file while read (or an I/O error: retried later),
  `InvalidFolder` when it breaks the run-folder contract (permission denied, a symlink leaving
  the run folder, a FIFO, a file name that is not UTF-8, invalid JSON);
- a problem with the *destination* (`dest`) is left as the `OSError` it is, for the caller
  (`prepare.py`) to translate into `StateError`.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from watcher.errors import FolderChanged, InvalidFolder

CHUNK_SIZE = 1 << 16
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_FFFD = "\ufffd"
_FFFD_UTF8 = _FFFD.encode("utf-8")


def archive_members(artifact_path: Path, is_dir: bool, *, root: Path | None = None) -> list[tuple[str, Path]]:
    """List what a multi-file archive of `artifact_path` holds.

    In: a file or directory of a run folder; `root` is the run folder (default: the parent).
    Out: `(arcname, path)` sorted by arcname. For a file, `[(file name, file)]`. For a directory,
    every regular file under it, recursively, dotfiles included, arcnames relative to it with '/'
    separators; a symlink resolving inside `root` is followed (a file's content is listed under the
    link's name, a directory is descended into).
    Raises: `InvalidFolder` for a symlink leaving `root`, a broken symlink or a loop, an entry that is
    neither a regular file nor a directory, or an arcname that is not valid UTF-8;
    `OSError` (FileNotFoundError, PermissionError) from the walk itself, for the caller to translate.
    """
    root_path = os.fspath(root if root is not None else artifact_path.parent)
    if not is_dir:
        _check_name(artifact_path.name, root_path, artifact_path.name)
        return [(artifact_path.name, artifact_path)]
    root_real = os.path.realpath(root_path)
    base = os.fspath(artifact_path)
    label = os.path.relpath(base, root_path)
    top = artifact_path.stat()
    found: list[tuple[str, Path]] = []
    # Iterative, so a deep tree cannot exhaust the recursion limit; `ancestors` spots symlink loops.
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (base, "", frozenset({(top.st_dev, top.st_ino)}))
    ]
    while stack:
        dir_path, prefix, ancestors = stack.pop()
        with os.scandir(dir_path) as it:
            entries = [(entry.name, entry.path) for entry in it]
        for name, path in entries:
            arcname = prefix + name
            rel = f"{label}/{arcname}"
            st = checked_stat(path, rel, folder=root_path, root_real=root_real)
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise InvalidFolder(root_path, f"{rel}: symlink loop")
                stack.append((path, arcname + "/", ancestors | {key}))
            else:
                _check_name(arcname, root_path, rel)
                found.append((arcname, artifact_path / arcname))
    found.sort(key=lambda member: member[0])
    return found


def checked_stat(path: str, rel: str, *, folder: str, root_real: str) -> os.stat_result:
    """Stat one entry of a run folder the way the contract wants it.

    In: the entry's path, its name relative to the run folder (for messages), the run folder's name
    and its real path. Out: the stat of the entry, following a symlink that resolves inside the run
    folder. Never opens anything (a FIFO would block).
    Raises: `InvalidFolder` for a symlink resolving outside the run folder, a broken symlink, or an
    entry that is neither a regular file nor a directory; `OSError` when the entry itself vanished
    or cannot be examined.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
            raise InvalidFolder(folder, f"{rel}: symlink points outside the run folder")
        try:
            st = Path(path).stat()
        except FileNotFoundError:
            raise InvalidFolder(folder, f"{rel}: broken symlink") from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise InvalidFolder(folder, f"{rel}: broken symlink (loop)") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InvalidFolder(folder, f"{rel}: not a regular file or directory ({_kind(st.st_mode)})")
    return st


def write_archive(members: list[tuple[str, Path]], dest: BinaryIO, *, folder: str | None = None) -> None:
    """Write a deterministic gzip-compressed tar of `members` to `dest`.

    In: `(arcname, path)` pairs, written in the given order; `folder` names the run folder in errors
    (default: each member's parent directory). Out: a POSIX (pax) tar stream, gzip-compressed, with
    regular-file entries only: mtime 0, uid/gid 0, no user or group name, mode 0o644; the gzip header
    has mtime 0 and no file name. The same members with the same content give the same bytes.
    Content is copied in chunks of `CHUNK_SIZE`.
    Raises: `FolderChanged` if a member vanished, is no longer a regular file, or changed size while
    read; `InvalidFolder` for an arcname that is not valid UTF-8 or a member we may not read;
    `OSError` for a failure writing `dest`.
    """
    written = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=dest, mtime=0, compresslevel=6) as gz:
        for arcname, path in members:
            where = folder if folder is not None else str(path.parent)
            written += _write_member(gz, arcname, path, where)
        # Two zero blocks end the archive; tar pads the whole to a record like `tarfile` does.
        end = 2 * _BLOCK
        end += -(written + end) % _RECORD
        gz.write(b"\0" * end)


def _write_member(gz: gzip.GzipFile, arcname: str, path: Path, folder: str) -> int:
    _check_name(arcname, folder, arcname)
    with open_regular(path, folder=folder, rel=arcname) as src:
        with _reading(folder, arcname):
            size = os.fstat(src.fileno()).st_size
        info = tarfile.TarInfo(arcname)
        info.size = size
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
        gz.write(header)
        remaining = size
        while remaining:
            with _reading(folder, arcname):
                chunk = src.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise FolderChanged(folder, f"{arcname} shrank while being archived")
            gz.write(chunk)
            remaining -= len(chunk)
        with _reading(folder, arcname):
            grew = src.read(1)
        if grew:
            raise FolderChanged(folder, f"{arcname} grew while being archived")
        padding = -size % _BLOCK
        gz.write(b"\0" * padding)
    return len(header) + size + padding


def copy_utf8(src: Path, dest: BinaryIO, *, chunk_size: int = CHUNK_SIZE) -> int:
    """Stream `src` to `dest` as UTF-8, replacing each invalid sequence with U+FFFD.

    In: a regular file. Out: how many replacements were made (0 for valid UTF-8); `dest` receives
    exactly `src.read_bytes().decode("utf-8", "replace")` encoded as UTF-8. An incremental decoder
    keeps multibyte sequences that straddle chunks intact.
    Raises: `FolderChanged`/`InvalidFolder` for problems reading `src`; `OSError` writing `dest`.
    """
    folder, rel = str(src.parent), src.name
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    produced = genuine = 0
    tail = b""
    with open_regular(src, folder=folder, rel=rel) as f:
        while True:
            with _reading(folder, rel):
                chunk = f.read(chunk_size)
            # U+FFFD already present in the file is not a replacement: count its encodings. `tail`
            # (2 bytes) cannot hold a whole match, so none is counted twice.
            window = tail + chunk
            genuine += window.count(_FFFD_UTF8)
            tail = window[-2:]
            text = decoder.decode(chunk, final=not chunk)
            produced += text.count(_FFFD)
            dest.write(text.encode("utf-8"))
            if not chunk:
                break
    return produced - genuine


def is_utf8(path: Path, *, chunk_size: int = CHUNK_SIZE) -> bool:
    """Whether the regular file `path` is valid UTF-8, read in chunks.

    Raises: `FolderChanged`/`InvalidFolder` for problems reading it.
    """
    folder, rel = str(path.parent), path.name
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    with open_regular(path, folder=folder, rel=rel) as f:
        while True:
            with _reading(folder, rel):
                chunk = f.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                return False
            if not chunk:
                return True


def load_json(path: Path, *, folder: str, max_bytes: int | None = None) -> object:
    """Parse the small JSON file `path` (status, metrics, statistics, assets).

    In: the file, the run folder's name for errors, an optional size limit. Out: the parsed value.
    Raises: `InvalidFolder` naming the file when it is bigger than `max_bytes`, not UTF-8, or not
    valid JSON (NaN and Infinity are not JSON); `FolderChanged`/`InvalidFolder` for problems reading.
    """
    name = path.name
    with open_regular(path, folder=folder, rel=name) as f, _reading(folder, name):
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidFolder(folder, f"{name}: bigger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidFolder(folder, f"{name}: not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise InvalidFolder(folder, f"{name}: invalid JSON ({e})") from None


def wrapped_json(path: Path, key: str) -> bytes | None:
    """The upload bytes of statistics or assets: wrapped under `key` unless already so.

    Out: None when the file is a JSON object with `key` at top level (upload it as it is); otherwise
    the compact UTF-8 bytes of `{"<key>": <content>}`.
    Raises: `InvalidFolder` naming the file for invalid JSON or invalid UTF-8.
    """
    content = load_json(path, folder=str(path.parent))
    if isinstance(content, dict) and key in content:
        return None
    return json.dumps({key: content}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@contextmanager
def open_regular(path: Path, *, folder: str, rel: str) -> Iterator[BinaryIO]:
    """Open `path` for reading only if it is a regular file; never blocks on a FIFO.

    Raises: `FolderChanged` when it vanished or is not a regular file (it was one when the folder
    was inspected), `InvalidFolder` when we may not read it.
    """
    with _reading(folder, rel):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise FolderChanged(folder, f"{rel} is no longer a regular file ({_kind(mode)})")
        f = os.fdopen(fd, "rb")
    with f:
        yield f


@contextmanager
def _reading(folder: str, rel: str) -> Iterator[None]:
    """Translate an `OSError` raised while reading a source file into our error tree."""
    try:
        yield
    except FileNotFoundError:
        raise FolderChanged(folder, f"{rel} vanished") from None
    except PermissionError:
        raise InvalidFolder(folder, f"{rel}: permission denied") from None
    except OSError as e:
        raise FolderChanged(folder, f"{rel}: {e.strerror or e}") from e


def _check_name(arcname: str, folder: str, rel: str) -> None:
    try:
        arcname.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFolder(folder, f"{rel!r}: file name is not valid UTF-8") from None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink"))
    return next((name for test, name in kinds if test(mode)), "unknown type")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")
