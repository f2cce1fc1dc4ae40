"""Durable per-folder state: the tracked and failed markers and the journal.

Every write is atomic and durable (`DirHandle.write_atomic`: a temporary file with a random name
created O_EXCL|O_NOFOLLOW mode 0640, fsync, rename relative to the folder's descriptor, fsync of the
directory). A reader therefore sees the old file or the new one, never half of one, even after a
power cut; and nothing a producer planted (a symlink, a FIFO) is ever followed or opened.

Where the state lives: inside the run folder (`.nextmv-tracked.json`, `.nextmv-failed.json`,
`.nextmv-journal.json`). When the run folder cannot be written (a read-only mount, no permission),
the same files go to `<state_dir>/folders/<key>/`, where the key combines a hash of the folder's
path with its device and inode numbers and its modification time, so that a later folder that reuses
the name is not mistaken for the one that was tracked.

A state file is trusted only when it is a regular file of at most `MAX_STATE_BYTES` owned by the
daemon's user (this process's, or the owner of the state directory), root or one of `state_owners`;
anything else raises `UnsafeStateFile` (the folder is invalid, see `watcher.runfolder.rundir`). Every method
takes the open folder (`DirHandle`); a `Path` is opened for that one call (tests and one-off use).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher.config import DAEMON_PREFIX
from watcher.errors import FolderError, StateError, UnsafeStateFile
from watcher.runfolder.dirhandle import DirHandle, state_problem
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.schema import SCHEMA, check, refuse_newer

if TYPE_CHECKING:
    from watcher.config import Config

PREFIX = DAEMON_PREFIX
TRACKED = f"{PREFIX}tracked.json"
FAILED = f"{PREFIX}failed.json"
JOURNAL = f"{PREFIX}journal.json"
STATE_FILES = (TRACKED, FAILED, JOURNAL)
MAX_STATE_BYTES = 256 * 1024
# errno values that mean "this folder cannot hold our files": fall back to the state directory.
UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
Folder = DirHandle | Path


def utc_iso(ts: float) -> str:
    """ISO 8601 UTC with millisecond precision and a Z suffix."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """The POSIX time of an ISO 8601 timestamp (a trailing Z is accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` (one of our own directories) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (see `DirHandle.write_atomic`). Raises OSError."""
    with DirHandle.open_own(path.parent) as d:
        d.write_atomic(path.name, data)


def trusted_owners(extra: Collection[int] = (), state_dir: Path | None = None) -> frozenset[int]:
    """Whose state files are ours: this process's user, root, the owner of `state_dir` (the daemon's
    user, when an admin runs a command as root), and `extra` (config `state_owners`)."""
    owners = {os.geteuid(), 0, *extra}
    if state_dir is not None:
        with contextlib.suppress(OSError):
            owners.add(state_dir.stat().st_uid)
    return frozenset(owners)


def decode_state(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in a state file's bytes; anything else (impossible for our atomic writes unless
    someone edited it) raises StateError."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise StateError(f"{where}: not valid JSON (edited by hand?)") from None
    if not isinstance(value, dict):
        raise StateError(f"{where}: not a JSON object (edited by hand?)")
    return value


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
    earliest wall-clock time of the next one; `repeats` how often `last_error`, an I/O error reading
    the folder, came back in a row; `application_id` the application its uploads and intents were
    made for (a reload may move the folder to another one). `uploads` holds finished uploads by role. `intents`
    lists every POST that may have created the run; while it is non-empty the run must be looked up
    before anything is posted again. `lookups_inconclusive` counts the look-ups in a row that could
    not see every run that could match (`last_error` says why); it sets their backoff and is reset by
    a conclusive one (absent from older journals: 0). `state_error`: why the last attempt could not
    write our own state (disk full), for `scan`; the next attempt's saves drop it.
    """

    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    repeats: int = 0
    application_id: str | None = None
    uploads: dict[str, UploadRecord] = field(default_factory=dict)
    intents: list[Intent] = field(default_factory=list)
    lookups_inconclusive: int = 0
    state_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "state_error" or v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        try:
            return cls(
                attempts=int(data.get("attempts", 0)),
                next_attempt_at=data.get("next_attempt_at"),
                last_error=data.get("last_error"),
                repeats=int(data.get("repeats", 0)),
                application_id=data.get("application_id"),
                uploads={role: UploadRecord(**rec) for role, rec in data.get("uploads", {}).items()},
                intents=[Intent(**i) for i in data.get("intents", [])],
                lookups_inconclusive=int(data.get("lookups_inconclusive", 0)),
                state_error=data.get("state_error"),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"journal has an unexpected shape: {exc}") from None

    @property
    def is_empty(self) -> bool:
        """Nothing worth keeping: no attempts, uploads or intents (whatever application it names)."""
        return replace(self, state_error=None) == Journal(application_id=self.application_id)


class StateStore:
    """Reads and writes the state files of run folders, in the folder or in the fallback directory."""

    def __init__(self, state_dir: Path, owners: Collection[int] = ()) -> None:
        self.state_dir = state_dir
        self.fallback_root = state_dir / "folders"
        self.owners = trusted_owners(owners, state_dir)
        self._fallback_checked_at = -1e9
        self._fallback_exists = False

    @classmethod
    def of(cls, config: Config) -> StateStore:
        """The store of a configuration: its state directory, its `state_owners`."""
        return cls(config.state_dir, config.state_owners)

    def _has_fallbacks(self) -> bool:
        """Whether any folder's state lives in the state directory; checked at most once a second, since
        a scan asks for every one of 100,000 folders (and we set it ourselves when we create one)."""
        now = time.monotonic()
        if now - self._fallback_checked_at > 1.0:
            self._fallback_exists = self.fallback_root.is_dir()
            self._fallback_checked_at = now
        return self._fallback_exists

    def fallback_dir(self, folder: Folder) -> Path:
        """Where `folder`'s state goes when the folder itself is not writable."""
        try:
            with opened(folder) as d:
                st = d.fstat()
                path = d.path
        except FolderError as exc:
            raise StateError(f"{folder}: cannot open: {exc.problem}") from None
        # The folder's mtime is part of the key: a new folder reusing the name (even the inode, which
        # filesystems hand out again) has a different one, while a finished read-only folder keeps its own.
        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        return self.fallback_root / f"{digest}-{st.st_dev}-{st.st_ino}-{st.st_mtime_ns}"

    @contextlib.contextmanager
    def _places(self, d: DirHandle, *, create: bool = False) -> Iterator[list[DirHandle]]:
        """The folder and, when it exists (or `create`), its fallback directory, opened."""
        places = [d]
        if create or self._has_fallbacks():
            try:
                path = self.fallback_dir(d)
                if create:
                    self._fallback_exists = True
                places.append(DirHandle.open_own(path, create=create, label=d.label))
            except FileNotFoundError:
                pass
            except (OSError, StateError) as exc:
                if create:
                    raise StateError(f"{d.label} is not writable and neither is {self.fallback_root}: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            yield places
        finally:
            for place in places[1:]:
                place.close()

    def read(self, folder: Folder, name: str) -> dict[str, Any] | None:
        """The state file `name` of `folder`, wherever it lives, or None.
        Raises UnsafeStateFile (not ours), NewerState (a newer version's), StateError (unreadable, not JSON)."""
        with opened(folder) as d, self._places(d) as places:
            for place in places:
                try:
                    data = place.read_state(name, limit=MAX_STATE_BYTES, owners=self.owners)
                except UnsafeStateFile:
                    raise
                except OSError as exc:
                    raise StateError(f"{d.label}: cannot read {name}: {exc.strerror}") from None
                if data is not None:
                    return check(decode_state(data, f"{d.label}/{name}"), d.label, name)
        return None

    def write(self, folder: Folder, name: str, data: dict[str, Any]) -> Path:
        """Write a state file, with our `schema`, atomically; fall back to the state directory when the folder
        is read-only. Whatever else holds the name (a directory, a FIFO a producer made) is replaced. Returns
        where it was written. Raises StateError (disk full, both places unwritable)."""
        payload = json.dumps({**data, "schema": SCHEMA}, indent=1, sort_keys=True).encode()
        with opened(folder) as d:
            try:
                _replace(d, name, payload, self.owners)
                return d.path / name
            except OSError as exc:
                if exc.errno not in UNWRITABLE:
                    raise StateError(f"{d.label}: cannot write {name}: {exc.strerror}") from None
            with self._places(d, create=True) as places:
                try:
                    _replace(places[-1], name, payload, self.owners)
                except OSError as exc:
                    raise StateError(f"{d.label} is not writable and neither is {places[-1].path}: "
                                     f"{exc.strerror}") from None
                return places[-1].path / name

    def remove(self, folder: Folder, name: str, *, durable: bool = True) -> bool:
        """Remove a state file wherever it is; True when one was removed. `durable=False` skips the
        directory fsync, for removals that may safely be undone by a power cut. A read-only folder
        that does not hold the file is no error (unlink(2) says EROFS before it looks for the name).
        Raises StateError when a file that is there cannot be removed."""
        removed = False
        with opened(folder) as d, self._places(d) as places:
            for place in places:
                try:
                    if place.unlink(name):
                        removed = True
                        if durable:
                            place.sync()
                except OSError as exc:
                    if exc.errno in UNWRITABLE and _absent(place, name):
                        continue
                    raise StateError(f"{place.label}: cannot remove {name}: {exc.strerror}") from None
        return removed

    def finished(self, folder: Folder) -> str | None:
        """'tracked' or 'failed' when that marker exists and is ours, else None. A marker is never
        half-written, so its existence is enough (no read). Raises UnsafeStateFile when a marker name is
        taken by something that is not ours and no marker of ours says the folder is finished."""
        unsafe: UnsafeStateFile | None = None
        with opened(folder) as d, self._places(d) as places:
            for name, state in ((TRACKED, "tracked"), (FAILED, "failed")):
                for place in places:
                    try:
                        st = place.lstat(name)
                    except OSError:
                        continue
                    if st is None:
                        continue
                    problem = state_problem(st, limit=MAX_STATE_BYTES, owners=self.owners)
                    if problem is None:
                        return state
                    unsafe = unsafe or UnsafeStateFile(d.label, name, problem, uid=st.st_uid)
        if unsafe is not None:
            raise unsafe
        return None

    def quick_state(self, folder: Path) -> str | None:
        """'tracked', 'failed' or None, from lstat by path alone: two stats per folder, so that a scan
        of 100,000 folders stays cheap. A hint only (a worker checks again through the open folder);
        a marker name taken by something that is not ours reads as None."""
        places = [os.fspath(folder)]
        if self._has_fallbacks():
            with contextlib.suppress(StateError):
                places.append(os.fspath(self.fallback_dir(folder)))
        for name, state in ((TRACKED, "tracked"), (FAILED, "failed")):
            for place in places:
                try:
                    st = os.lstat(f"{place}/{name}")
                except OSError:
                    continue
                if state_problem(st, limit=MAX_STATE_BYTES, owners=self.owners) is None:
                    return state
        return None

    def clear_failure(self, folder: Folder) -> bool:
        """Forget a failure (`nextmv-watcher retry`): remove the failed marker and reset the attempt count.
        Open intents stay, so that a run a POST may have created is looked up before anything is posted
        again. False when there was no failed marker. A journal that is not ours is left alone (the
        daemon finds it again and says so). Raises NewerState (a newer version's folder), StateError, FolderError."""
        with opened(folder) as d:
            refuse_newer(lambda name: self.read(d, name), STATE_FILES)
            if not self.remove(d, FAILED):
                return False
            try:
                journal = self.journal(d)
            except UnsafeStateFile:
                return True
            journal.attempts, journal.next_attempt_at, journal.last_error, journal.repeats = 0, None, None, 0
            if journal.is_empty:
                self.remove(d, JOURNAL)
            else:
                self.save_journal(d, journal)
        return True

    # The three files, by meaning.

    def tracked(self, folder: Folder) -> dict[str, Any] | None:
        return self.read(folder, TRACKED)

    def failed(self, folder: Folder) -> dict[str, Any] | None:
        return self.read(folder, FAILED)

    def mark_tracked(self, folder: Folder, run_id: str, application_id: str, now: float,
                     **extra: Any) -> None:
        self.write(folder, TRACKED, {"run_id": run_id, "application_id": application_id,
                                     "tracked_at": utc_iso(now), **extra})

    def mark_failed(self, folder: Folder, error: str, attempts: int, now: float, **extra: Any) -> None:
        self.write(folder, FAILED, {"error": error, "attempts": attempts, "failed_at": utc_iso(now), **extra})

    def journal(self, folder: Folder) -> Journal:
        data = self.read(folder, JOURNAL)
        return Journal() if data is None else Journal.from_json(data)

    def save_journal(self, folder: Folder, journal: Journal) -> None:
        self.write(folder, JOURNAL, journal.to_json())

    def clear_journal(self, folder: Folder) -> None:
        # Not durable on purpose: it follows a durable marker, and a journal that comes back after a
        # power cut is ignored because the marker says the folder is finished.
        self.remove(folder, JOURNAL, durable=False)


def _replace(d: DirHandle, name: str, payload: bytes, owners: Collection[int]) -> None:
    """Write `name` in `d`; a directory a producer made under our name is removed first. Run as root (an
    admin's command), a file of one of `owners` keeps its owner and mode."""
    try:
        d.write_atomic(name, payload, keep_owner=owners)
    except IsADirectoryError:
        d.unlink(name)
        d.write_atomic(name, payload)


def _absent(place: DirHandle, name: str) -> bool:
    """Whether `place` holds no entry `name` (False when that cannot be told)."""
    with contextlib.suppress(OSError):
        return place.lstat(name) is None
    return False


@contextlib.contextmanager
def opened(folder: Folder) -> Iterator[DirHandle]:
    """`folder` itself when it is open; a path is opened for the duration (see `RunDir.open`).
    Raises StateError when a path cannot be opened."""
    if isinstance(folder, DirHandle):
        yield folder
        return
    try:
        d = RunDir.open(folder)
    except FolderError as exc:
        raise StateError(f"{folder}: cannot open: {exc.problem}") from None
    with d:
        yield d
