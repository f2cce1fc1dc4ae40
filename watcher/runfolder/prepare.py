"""Turn a validated run folder into the exact files to PUT, spooling only what must be transformed.

Sent as they are, with no copy: json/text input and output, valid UTF-8 logs, metrics, statistics
and assets that already carry their top-level key. Written to a spool file first (so that the PUT
can declare a Content-Length and a retry can resend the same bytes): multi-file archives, logs with
invalid UTF-8, statistics/assets that need wrapping.

Spool files live in one directory the daemon owns, are named `spool-*`, and belong to the
`PreparedRun` that made them: leaving its `with` block deletes them, whatever happened.
`clean_spool` removes what a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from watcher.errors import SpoolFull, StateError
from watcher.runfolder.archive import copy_utf8, is_utf8, open_member, write_archive, write_wrapped
from watcher.runfolder.folder import Artifact, Member, RunFolder
from watcher.runfolder.rundir import RunDir

SPOOL_PREFIX = "spool-"


@dataclass(frozen=True)
class Upload:
    """What to PUT for one artifact: `path` is the original file, or a spool file when `spooled`;
    `member` is the inspected original file (read through the open folder, never by `path`)."""

    role: str
    path: Path
    size: int
    spooled: bool
    member: Member | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PreparedRun:
    """The uploads of one run, in the order of `RunFolder.artifacts`; owns its spool files.

    Use as a context manager: leaving it deletes every spool file it created, even on error.
    """

    uploads: tuple[Upload, ...]
    warnings: tuple[str, ...]
    spool_files: tuple[Path, ...] = field(default=(), repr=False)
    dir: RunDir | None = field(default=None, repr=False)

    def upload(self, role: str) -> Upload | None:
        """The upload for `role`, if the folder has that artifact."""
        return next((u for u in self.uploads if u.role == role), None)

    def open(self, upload: Upload) -> BinaryIO:
        """A reader of exactly the bytes to PUT for `upload`. Raises `FolderChanged` when an original
        file is not the inspected one any more, `OSError` for a spool file that cannot be read."""
        if upload.spooled or upload.member is None:
            return open(upload.path, "rb")
        assert self.dir is not None
        return open_member(self.dir, upload.member)

    def close(self) -> None:
        """Delete the spool files (idempotent; a file already gone is fine)."""
        _remove(self.spool_files)

    def __enter__(self) -> PreparedRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prepare(folder: RunFolder, spool_dir: Path) -> PreparedRun:
    """Decide, for every artifact of `folder`, which bytes are uploaded, writing spool files as needed.

    In: a folder from `inspect_folder`; the spool directory (created if missing).
    Out: a `PreparedRun` (uploads in artifact order; warnings such as
    "logs.txt: 3 invalid UTF-8 sequences replaced").
    Raises: `StateError("spool directory <dir>: <strerror>")` when a spool file cannot be created or
    written (EROFS, EACCES, ...), `SpoolFull` (a `StateError` saying how many bytes the artifact needs at
    most and how many are free) for ENOSPC and EDQUOT; `FolderChanged` when a file vanished or changed
    while read; `InvalidFolder` for a file we may not read or invalid JSON. On any error, every
    spool file created so far is deleted before the error propagates.
    """
    spool = _Spool(spool_dir)
    uploads: list[Upload] = []
    warnings: list[str] = []
    try:
        for artifact in folder.artifacts:
            uploads.append(_prepare_artifact(artifact, folder.handle, spool, warnings))
    except BaseException:
        _remove(spool.files)
        raise
    return PreparedRun(uploads=tuple(uploads), warnings=tuple(warnings), spool_files=tuple(spool.files),
                       dir=folder.handle)


def clean_spool(spool_dir: Path) -> int:
    """Remove leftover `spool-*` files from `spool_dir` (at start-up). Out: how many were removed.

    A missing directory holds nothing. Raises: `StateError` when the directory cannot be listed or a
    file cannot be removed.
    """
    removed = 0
    try:
        with os.scandir(spool_dir) as it:
            for entry in it:
                if entry.name.startswith(SPOOL_PREFIX) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    except FileNotFoundError:
        return removed
    except OSError as e:
        raise StateError(f"spool directory {spool_dir}: {e.strerror or e}") from e
    return removed


def _prepare_artifact(artifact: Artifact, d: RunDir, spool: _Spool, warnings: list[str]) -> Upload:
    role, path = artifact.role, artifact.path
    if role in ("input", "output") and artifact.format == "multi-file":
        return spool.write(role, ".tar.gz", lambda dest: write_archive(d, artifact.members, dest),
                           archive_bound(artifact.members), f"{role} (as an archive)")
    member = artifact.members[0]
    if role == "logs":
        with open_member(d, member) as src:
            valid = is_utf8(src)
        if not valid:
            replaced: list[int] = []

            def fill(dest: BinaryIO) -> None:
                with open_member(d, member) as src:
                    replaced.append(copy_utf8(src, dest))

            upload = spool.write(role, ".txt", fill, 3 * member.ident.size, role)   # U+FFFD is 3 bytes
            warnings.append(f"{path.name}: {replaced[0]} invalid UTF-8 sequences replaced")
            return upload
    if artifact.wrap is not None:
        key = artifact.wrap

        def wrapped(dest: BinaryIO) -> None:
            with open_member(d, member) as src:
                write_wrapped(src, key, dest)

        return spool.write(role, ".json", wrapped, member.ident.size + len(key) + 16, role)
    return Upload(role=role, path=path, size=member.ident.size, spooled=False, member=member)


class _Spool:
    """Creates spool files in one directory and remembers them, so that they can all be removed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []

    def write(self, role: str, suffix: str, fill: Callable[[BinaryIO], object], needed: int, what: str) -> Upload:
        """Create a spool file and let `fill` write it (at most `needed` bytes, for `what`). Source-file
        problems arrive as `FolderError` (see `archive.py`), so an `OSError` here is the spool's own: it
        becomes `StateError`, `SpoolFull` (with `needed` and the space left) when space ran out; the
        partial file is removed first."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.directory, prefix=SPOOL_PREFIX, suffix=suffix)
        except OSError as e:
            raise _state_error(self.directory, e, what, needed) from e
        path = self.directory / Path(name).name  # keeps the caller's Path type
        self.files.append(path)
        try:
            with os.fdopen(fd, "wb") as dest:
                fill(dest)
                dest.flush()
                size = os.fstat(dest.fileno()).st_size
        except OSError as e:
            _remove([path])
            raise _state_error(self.directory, e, what, needed) from e
        return Upload(role=role, path=path, size=size, spooled=True)


def archive_bound(members: Sequence[Member]) -> int:
    """The most bytes the gzip'd tar of `members` can take: each file rounded up to tar's 512-byte
    blocks with its (pax) header, the end of the archive, and gzip's worst-case growth."""
    entries = sum(-(-m.ident.size // 512) * 512 + 1536 + len(m.arcname.encode()) for m in members)
    tar = -(-(entries + 1024) // 10240) * 10240   # two zero blocks end it; padded to a 10 KiB record
    return tar + tar // 3000 + 64


def _state_error(directory: Path, e: OSError, what: str, needed: int) -> StateError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFull(str(directory), e.strerror or str(e), what, needed, _free(directory))
    return StateError(f"spool directory {directory}: {e.strerror or e}")


def _free(directory: Path) -> int | None:
    """Bytes an unprivileged process may still write on `directory`'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _remove(paths: tuple[Path, ...] | list[Path]) -> None:
    # Best effort: this runs while another error propagates, which must not be masked; whatever
    # stays behind is removed by `clean_spool` at the next start.
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
