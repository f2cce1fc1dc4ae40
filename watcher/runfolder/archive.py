"""Turning run-folder files into upload bytes: tar.gz archives, UTF-8 logs, wrapped JSON.

Everything here streams: no function reads a whole file into memory (statistics and assets are
wrapped as bytes, the decision whether to wrap them was made when they were inspected).
Every file is read through the open run folder (`watcher.runfolder.rundir`) and must be the file that was
inspected (`MemberReader`).

Errors follow one rule so that callers can tell whose fault a failure is:
- a problem with a *source* file raises `FolderError`: `FolderChanged` when it vanished,
  changed or stopped being the inspected regular file (or an I/O error: retried later),
  `InvalidFolder` when we may not read it or its JSON is invalid;
- a problem with the *destination* (`dest`) is left as the `OSError` it is, for the caller
  (`prepare.py`) to translate into `StateError`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import tarfile
from collections.abc import Sequence
from typing import BinaryIO

from watcher.errors import FolderChanged, FolderUnreadable
from watcher.runfolder.folder import Member, check_name
from watcher.runfolder.rundir import RunDir

CHUNK_SIZE = 1 << 16
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_FFFD = "\ufffd"
_FFFD_UTF8 = _FFFD.encode("utf-8")


class MemberReader(io.RawIOBase):
    """Reads one inspected file of a run folder from its own descriptor: exactly the size it had when
    inspected, no more and no less. A file that shrinks or grows while read raises `FolderChanged`
    (the attempt is retried later) instead of sending a truncated or overlong body. `seek(0)` rewinds,
    for a retried upload."""

    def __init__(self, d: RunDir, member: Member) -> None:
        super().__init__()
        self._fd = -1   # so that a reader whose open fails still closes cleanly when collected
        self._fd = d.open_file(member.rel, member.ident)
        self._size = member.ident.size
        self._left = self._size
        self._folder = d.label
        self._rel = member.rel

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise io.UnsupportedOperation("only seek(0) is supported")
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._left = self._size
        return 0

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left == 0:
            if self._read(1):
                raise FolderChanged(self._folder, f"{self._rel} grew while being read")
            return 0
        chunk = self._read(min(len(buffer), self._left))
        if not chunk:
            raise FolderChanged(self._folder, f"{self._rel} shrank while being read")
        buffer[:len(chunk)] = chunk
        self._left -= len(chunk)
        return len(chunk)

    def _read(self, n: int) -> bytes:
        try:
            return os.read(self._fd, n)
        except OSError as e:
            raise FolderUnreadable(self._folder, f"{self._rel}: {e.strerror or e}") from None

    def close(self) -> None:
        if not self.closed:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
        super().close()


def open_member(d: RunDir, member: Member) -> BinaryIO:
    """A reader of the inspected file `member` (see `MemberReader`). Raises `FolderChanged` when it is
    not the file that was inspected any more, `InvalidFolder` when we may not read it."""
    return io.BufferedReader(MemberReader(d, member), buffer_size=CHUNK_SIZE)


def write_archive(d: RunDir, members: Sequence[Member], dest: BinaryIO) -> None:
    """Write a deterministic gzip-compressed tar of the inspected `members` of `d` to `dest`.

    Out: a POSIX (pax) tar stream, gzip-compressed, with regular-file entries only, in the given
    order: mtime 0, uid/gid 0, no user or group name, mode 0o644; the gzip header has mtime 0 and no
    file name. The same members with the same content give the same bytes. Content is copied in
    chunks of `CHUNK_SIZE` from each file's own descriptor.
    Raises: `FolderChanged` if a member is not the inspected file any more or changed size while
    read; `InvalidFolder` for a member we may not read; `OSError` for a failure writing `dest`.
    """
    written = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=dest, mtime=0, compresslevel=6) as gz:
        for member in members:
            written += _write_member(gz, d, member)
        # Two zero blocks end the archive; tar pads the whole to a record like `tarfile` does.
        end = 2 * _BLOCK
        end += -(written + end) % _RECORD
        gz.write(b"\0" * end)


def _write_member(gz: gzip.GzipFile, d: RunDir, member: Member) -> int:
    check_name(member.arcname, d.label, member.arcname)
    size = member.ident.size
    info = tarfile.TarInfo(member.arcname)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    with open_member(d, member) as src:
        gz.write(header)
        while chunk := src.read(CHUNK_SIZE):
            gz.write(chunk)
    padding = -size % _BLOCK
    gz.write(b"\0" * padding)
    return len(header) + size + padding


def copy_utf8(src: BinaryIO, dest: BinaryIO, *, chunk_size: int = CHUNK_SIZE) -> int:
    """Stream `src` to `dest` as UTF-8, replacing each invalid sequence with U+FFFD.

    Out: how many replacements were made (0 for valid UTF-8); `dest` receives exactly
    `src.read().decode("utf-8", "replace")` encoded as UTF-8. An incremental decoder keeps multibyte
    sequences that straddle chunks intact.
    Raises: whatever reading `src` raises (`FolderChanged`); `OSError` writing `dest`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    produced = genuine = 0
    tail = b""
    while True:
        chunk = src.read(chunk_size)
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


def is_utf8(src: BinaryIO, *, chunk_size: int = CHUNK_SIZE) -> bool:
    """Whether what `src` holds is valid UTF-8, read in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    while True:
        chunk = src.read(chunk_size)
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            return False
        if not chunk:
            return True


def write_wrapped(src: BinaryIO, key: str, dest: BinaryIO, *, chunk_size: int = CHUNK_SIZE) -> None:
    """Stream the JSON document `src` (statistics or assets, validated at inspection) to `dest` wrapped
    as `{"<key>": <document>}`: the document's own bytes, unparsed and unchanged, between the two.

    Raises: whatever reading `src` raises (`FolderChanged`); `OSError` writing `dest`."""
    dest.write(b"{" + json.dumps(key).encode("utf-8") + b":")
    while chunk := src.read(chunk_size):
        dest.write(chunk)
    dest.write(b"}")
