"""Is a JSON file whole? Judged from at most its first and last 64 KiB, never by reading it all.

Settle mode's safety net where filesystem events cannot say that a producer is still writing a file
(it opened the file before the daemon watched the folder; a watched path with `polling: true`): a
`.json` artifact that is not complete JSON is taken as still being written (see
`watcher.runfolder.completion`).

- A file of at most `2 * WINDOW` bytes is read whole (the two windows would cover it anyway) and must
  parse as JSON. Bytes that are not UTF-8 do not make it incomplete (that is not this check's business).
- A larger file is judged by its ends: its first non-blank byte opens a JSON value and its last
  non-blank byte closes that same kind of value (`{`...`}`, `[`...`]`, `"`...`"`, a number, `true`,
  `false`, `null`). A file cut right after an inner `}` or `]` passes: this is a fallback, not a
  parser; the open/close events are what tells a writer that keeps its file open.
- An empty file, or one of blanks only, is not complete.

`ends_complete` is pure (bytes in, a verdict out); `json_file_complete` reads the ends of a file of an
open run folder (`RunDir`: resolved by us, opened `O_NOFOLLOW|O_NONBLOCK`, checked against what was
looked at), seeking to each end, so it never reads more than `2 * WINDOW` bytes.
"""

from __future__ import annotations

import json
import os
import stat

from watcher.errors import FolderChanged
from watcher.runfolder.rundir import Ident, RunDir

WINDOW = 64 * 1024
BLANKS = b" \t\r\n"
BOM = b"\xef\xbb\xbf"
_CLOSERS = {ord("{"): b"}", ord("["): b"]", ord('"'): b'"', ord("t"): b"e", ord("f"): b"e", ord("n"): b"l",
            **{c: b"0123456789" for c in b"-0123456789"}}


def ends_complete(head: bytes, tail: bytes | None) -> bool:
    """Whether a JSON document looks whole. `tail` None: `head` is the whole file (parsed); else `head`
    and `tail` are its first and last bytes (judged by its ends, see the module docstring)."""
    if head.startswith(BOM):
        head = head[len(BOM):]
    if tail is None:
        if not head.strip(BLANKS):
            return False
        try:
            json.loads(head.decode("utf-8", "replace"))
        except RecursionError:
            return _ends_match(head, head)   # too deep to parse here: judged by its ends
        except ValueError:
            return False
        return True
    return _ends_match(head, tail)


def _ends_match(head: bytes, tail: bytes) -> bool:
    first, last = head.lstrip(BLANKS), tail.rstrip(BLANKS)
    if not first or not last:
        return False
    closers = _CLOSERS.get(first[0])
    if closers is None or last[-1] not in closers:
        return False
    if first[0] == ord('"'):   # the closing quote must not be escaped
        escapes = len(last[:-1]) - len(last[:-1].rstrip(b"\\"))
        return escapes % 2 == 0
    return True


def json_file_complete(d: RunDir, name: str) -> bool:
    """Whether the root entry `name` of the open run folder is complete JSON, reading at most its first
    and last `WINDOW` bytes. Anything that is not a regular file is not judged here (True: inspection
    decides about it).

    Raises `FolderChanged` when the file changed since it was looked at, or vanished (it is being
    written); `InvalidFolder` for a symlink leaving the folder or a file we may not read."""
    try:
        rel, st = d.resolve(name)
    except (FileNotFoundError, NotADirectoryError):
        raise FolderChanged(d.label, f"{name} vanished") from None
    if not stat.S_ISREG(st.st_mode):
        return True
    fd = d.open_file(rel, Ident.of(st))
    try:
        size = st.st_size
        if size <= 2 * WINDOW:
            head, tail = _read_at(fd, size, 0, d.label, name), None
        else:
            head, tail = _read_at(fd, WINDOW, 0, d.label, name), _read_at(fd, WINDOW, size - WINDOW, d.label, name)
    finally:
        os.close(fd)
    return ends_complete(head, tail)


def _read_at(fd: int, n: int, offset: int, label: str, name: str) -> bytes:
    """`n` bytes at `offset` of our own descriptor (a seek and reads: `os.pread` is not in every
    filesystem layer we test on)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise FolderChanged(label, f"{name} shrank while read")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
