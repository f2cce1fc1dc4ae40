"""The body of a presigned PUT: exactly the bytes its Content-Length declares, or `FolderChanged`.

A presigned PUT declares its length up front (S3 refuses chunked bodies). A source that gives more
or fewer bytes than declared (a file that grew, shrank or was replaced while it was read) is a file
that changed during its upload: an expected condition, retried later from the start, never a bug.
`counted` stops such a body itself, before the HTTP library sees a byte too many or finds one
missing; should the library notice first anyway (h11's `LocalProtocolError` "Too much data" / "Too
little data for declared Content-Length", which httpx does not translate), `library_noticed` turns
it into the same `FolderChanged` once the source's `fstat` shows its size changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

import h11

from watcher.errors import FolderChanged

CHUNK = 1 << 20
# What the HTTP library raises for a body whose length is not the declared one.
LENGTH_MISMATCH = (h11.LocalProtocolError,)


class Source:
    """One PUT's source, named for messages: `folder` (the run folder) and `label` (the artifact)."""

    def __init__(self, f: BinaryIO, size: int, folder: str, label: str) -> None:
        self.f = f
        self.size = size
        self.folder = folder
        self.label = label

    def now(self) -> int | None:
        """The source file's size now (`fstat`), None when it is not a file."""
        try:
            return os.fstat(self.f.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            return None

    def changed(self, what: str) -> FolderChanged:
        now = self.now()
        detail = f"{self.size:,} bytes declared" + ("" if now is None else f", {now:,} now")
        return FolderChanged(self.folder, f"{self.label} {what} while being uploaded ({detail})")


def counted(source: Source, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The source's bytes from its start, in chunks, exactly `source.size` of them. Raises FolderChanged
    as soon as it gives a byte more, or ends early; whatever reading raises propagates."""
    source.f.seek(0)
    left = source.size
    # Never more than one byte past the size: a read of CHUNK allocates CHUNK first (26 against 4 us
    # a small artifact), and that byte is enough to tell a file that grew.
    while chunk := source.f.read(min(CHUNK, left + 1)):
        if len(chunk) > left:
            raise source.changed("grew")
        left -= len(chunk)
        if progress is not None:
            progress(len(chunk))
        yield chunk
    if left:
        raise source.changed("shrank")


def library_noticed(source: Source, exc: BaseException) -> FolderChanged | None:
    """`exc` as a changed source when it is the HTTP library's length mismatch and the source's size is
    not the declared one any more; None otherwise (then it is a bug, raised as it is)."""
    if not isinstance(exc, LENGTH_MISMATCH):
        return None
    now = source.now()
    if now is None or now == source.size:
        return None
    return source.changed("grew" if now > source.size else "shrank")
