"""Durable per-folder state: the tracked and failed markers and the journal.

Every write is atomic and durable: a temporary file beside the target, fsync,
os.replace, fsync of the directory. A reader therefore sees the old file or
the new one, never half of one, even after a power cut.

Where the state lives: inside the run folder (`.nextmv-tracked.json`,
`.nextmv-failed.json`, `.nextmv-journal.json`). When the run folder cannot be
written (a read-only mount, no permission), the same files go to
`<state_dir>/folders/<key>/`, where the key combines a hash of the folder's
path with its device and inode numbers and its modification time, so that a later folder that reuses the
name is not mistaken for the one that was tracked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.errors import StateError

PREFIX = ".nextmv-"
TRACKED = ".nextmv-tracked.json"
FAILED = ".nextmv-failed.json"
JOURNAL = ".nextmv-journal.json"
MAX_STATE_BYTES = 1 << 20
# errno values that mean "this folder cannot hold our files": fall back to the state directory.
UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def utc_iso(ts: float) -> str:
    """ISO 8601 UTC with millisecond precision and a Z suffix."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """The POSIX time of an ISO 8601 timestamp (a trailing Z is accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably. Raises OSError (callers translate it)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def read_json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it does not exist. A file that is not a JSON object
    (impossible for our atomic writes unless someone edited it) raises StateError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StateError(f"{path}: not valid JSON (edited by hand?)") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: not a JSON object (edited by hand?)")
    return data


@dataclass
class UploadRecord:
    """One artifact's upload: the id to reference, when its URL was obtained, and the files it was made from."""

    upload_id: str
    obtained_at: float
    fingerprint: dict[str, list[int]]


@dataclass
class Intent:
    """A `POST .../runs` that was (or was about to be) sent, carrying `token` in its description."""

    token: str
    created_at: float


@dataclass
class Journal:
    """Progress of one folder across attempts and restarts.

    `attempts` counts failed attempts that were the folder's own fault; `next_attempt_at` is the
    earliest wall-clock time of the next one. `uploads` holds finished uploads by role. `intents`
    lists every POST that may have created the run; while it is non-empty the run must be looked up
    before anything is posted again.
    """

    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    uploads: dict[str, UploadRecord] = field(default_factory=dict)
    intents: list[Intent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        try:
            return cls(
                attempts=int(data.get("attempts", 0)),
                next_attempt_at=data.get("next_attempt_at"),
                last_error=data.get("last_error"),
                uploads={role: UploadRecord(**rec) for role, rec in data.get("uploads", {}).items()},
                intents=[Intent(**i) for i in data.get("intents", [])],
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"journal has an unexpected shape: {exc}") from None

    @property
    def is_empty(self) -> bool:
        return self == Journal()


class StateStore:
    """Reads and writes the state files of run folders, in the folder or in the fallback directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.fallback_root = state_dir / "folders"
        self._fallback_checked_at = -1e9
        self._fallback_exists = False

    def _has_fallbacks(self) -> bool:
        """Whether any folder's state lives in the state directory; checked at most once a second, since
        a scan asks for every one of 100,000 folders (and we set it ourselves when we create one)."""
        now = time.monotonic()
        if now - self._fallback_checked_at > 1.0:
            self._fallback_exists = self.fallback_root.is_dir()
            self._fallback_checked_at = now
        return self._fallback_exists

    def fallback_dir(self, folder: Path) -> Path:
        """Where `folder`'s state goes when the folder itself is not writable."""
        try:
            st = folder.stat()
        except OSError as exc:
            raise StateError(f"{folder}: cannot stat: {exc.strerror}") from None
        # The folder's mtime is part of the key: a new folder reusing the name (even the inode, which
        # filesystems hand out again) has a different one, while a finished read-only folder keeps its own.
        digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]
        return self.fallback_root / f"{digest}-{st.st_dev}-{st.st_ino}-{st.st_mtime_ns}"

    def _locations(self, folder: Path, name: str) -> list[Path]:
        places = [folder / name]
        if self._has_fallbacks():
            with contextlib.suppress(StateError):
                places.append(self.fallback_dir(folder) / name)
        return places

    def read(self, folder: Path, name: str) -> dict[str, Any] | None:
        """The state file `name` of `folder`, wherever it lives, or None."""
        for place in self._locations(folder, name):
            data = read_json_file(place)
            if data is not None:
                return data
        return None

    def write(self, folder: Path, name: str, data: dict[str, Any]) -> Path:
        """Write a state file atomically; fall back to the state directory when the folder is read-only.
        Returns where it was written. Raises StateError (disk full, both places unwritable)."""
        payload = json.dumps(data, indent=1, sort_keys=True).encode()
        try:
            atomic_write(folder / name, payload)
            return folder / name
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise StateError(f"{folder}: cannot write {name}: {exc.strerror}") from None
        place = self.fallback_dir(folder)
        try:
            place.mkdir(parents=True, exist_ok=True)
            self._fallback_exists = True
            atomic_write(place / name, payload)
        except OSError as exc:
            raise StateError(f"{folder} is not writable and neither is {place}: {exc.strerror}") from None
        return place / name

    def remove(self, folder: Path, name: str, *, durable: bool = True) -> bool:
        """Remove a state file wherever it is; True when one was removed. `durable=False` skips the
        directory fsync, for removals that may safely be undone by a power cut."""
        removed = False
        for place in self._locations(folder, name):
            try:
                place.unlink()
                removed = True
                if durable:
                    fsync_dir(place.parent)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateError(f"{place}: cannot remove: {exc.strerror}") from None
        return removed

    def finished(self, folder: Path) -> str | None:
        """'tracked' or 'failed' when that marker exists, else None. Existence only (two stats at most
        per place), so that scanning 100,000 folders stays cheap; a marker is never half-written."""
        places = [os.fspath(folder)]
        if self._has_fallbacks():
            with contextlib.suppress(StateError):
                places.append(os.fspath(self.fallback_dir(folder)))
        for place in places:
            for name, state in ((TRACKED, "tracked"), (FAILED, "failed")):
                try:
                    os.stat(f"{place}/{name}")
                except OSError:
                    continue
                return state
        return None

    # The three files, by meaning.

    def tracked(self, folder: Path) -> dict[str, Any] | None:
        return self.read(folder, TRACKED)

    def failed(self, folder: Path) -> dict[str, Any] | None:
        return self.read(folder, FAILED)

    def mark_tracked(self, folder: Path, run_id: str, application_id: str, now: float,
                     **extra: Any) -> None:
        self.write(folder, TRACKED, {"run_id": run_id, "application_id": application_id,
                                     "tracked_at": utc_iso(now), **extra})

    def mark_failed(self, folder: Path, error: str, attempts: int, now: float, **extra: Any) -> None:
        self.write(folder, FAILED, {"error": error, "attempts": attempts, "failed_at": utc_iso(now), **extra})

    def journal(self, folder: Path) -> Journal:
        data = self.read(folder, JOURNAL)
        return Journal() if data is None else Journal.from_json(data)

    def save_journal(self, folder: Path, journal: Journal) -> None:
        self.write(folder, JOURNAL, journal.to_json())

    def clear_journal(self, folder: Path) -> None:
        # Not durable on purpose: it follows a durable marker, and a journal that comes back after a
        # power cut is ignored because the marker says the folder is finished.
        self.remove(folder, JOURNAL, durable=False)
