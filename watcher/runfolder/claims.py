"""One process at a time per folder: an exclusive claim file with a lease.

`.nextmv-claim` holds `{"host", "pid", "id", "lease_until"}` and appears with its full content or not
at all: it is written to a temporary file that is then hard-linked into place relative to the open
run folder (`DirHandle.create_complete`; `link(2)` fails when a claim exists). Where the filesystem
refuses hard links (SMB) it is created O_EXCL and written in place, so a competitor may read it empty
or partial: a claim file that is not a complete record and is younger than the lease (by its mtime)
is held by someone, never taken for corrupt; an older one is stale. A claim is taken over when its
lease has expired, when it belongs to a process on this host that no longer exists, or when the file
is not one of ours at all (a FIFO, a symlink, a stranger's file: `Claim.replaced` then says what it
was, and the folder is invalid). A claim that cannot be written (disk full) leaves nothing behind.
A holder renews its lease while it works (`watcher.daemon.lease.LeaseKeeper` does it) and checks
with `verify()` that the claim is still its own right before the one step that must never run twice
(POST runs).

A `Claim` keeps the directory it lives in open, so a renewal always writes into the folder that was
claimed; a per-claim lock keeps renewals and the release from overlapping.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.config import DAEMON_PREFIX
from watcher.errors import ClaimLost, FolderError, StateError, UnsafeStateFile
from watcher.runfolder.dirhandle import DirHandle
from watcher.runfolder.markers import MAX_STATE_BYTES, UNWRITABLE, StateStore, decode_state, opened, trusted_owners
from watcher.runfolder.rundir import RunDir

CLAIM = f"{DAEMON_PREFIX}claim"


@dataclass
class Claim:
    """A held claim. `place` is the open directory holding the claim file (the run folder, or its
    fallback directory when the folder is read-only); `replaced` names what was in the way, if the
    claim file found there was not one of ours."""

    folder: Path
    claim_id: str
    place: DirHandle
    replaced: str | None = None
    owns_place: bool = False
    released: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> Path:
        return self.place.path / CLAIM


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """Creates, checks, renews and releases claim files. Thread-safe."""

    def __init__(self, *, lease_seconds: float = 60.0, clock: Callable[[], float],
                 host: str | None = None, pid: int | None = None, store: StateStore | None = None) -> None:
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.store = store

    @property
    def owners(self) -> frozenset[int]:
        """Whose claim files are trusted: the store's owners (they follow a reload)."""
        return self.store.owners if self.store is not None else trusted_owners()

    def _record(self, claim_id: str) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "id": claim_id,
                           "lease_until": self.clock() + self.lease_seconds}).encode()

    def _read(self, place: DirHandle, name: str = CLAIM) -> dict[str, Any] | None:
        """The claim record in `place`, None when there is none. Raises UnsafeStateFile, StateError."""
        try:
            data = place.read_state(name, limit=MAX_STATE_BYTES, owners=self.owners)
        except OSError as exc:
            raise StateError(f"{place.label}: cannot read claim: {exc.strerror}") from None
        return None if data is None else decode_state(data, f"{place.label}/{name}")

    def holder(self, folder: DirHandle | Path) -> dict[str, object] | None:
        """The current claim's content, or None (for messages)."""
        try:
            with opened(folder) as d:
                return self._read(d)
        except UnsafeStateFile as exc:
            return {"host": "?", "pid": 0, "id": "unsafe", "lease_until": 0, "problem": exc.problem}
        except StateError:
            return {"host": "?", "pid": 0, "id": "corrupt", "lease_until": 0}

    def _is_stale(self, record: dict[str, object]) -> bool:
        lease_until = record.get("lease_until")
        if not isinstance(lease_until, int | float) or lease_until < self.clock():
            return True
        pid = record.get("pid")
        return record.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self, folder: DirHandle | Path) -> Claim | None:
        """Claim the open `folder` (a path is opened and kept open by the claim), taking over a stale
        claim or a claim file that is not ours. None when another live process holds it.
        Raises StateError when the claim file cannot be written."""
        if isinstance(folder, Path):
            try:
                d: DirHandle = RunDir.open(folder)
            except FolderError as exc:
                raise StateError(f"{folder}: cannot claim: {exc.problem}") from None
            try:
                claim = self._acquire(d, owns=True)
            except BaseException:
                d.close()
                raise
            if claim is None:
                d.close()
            return claim
        return self._acquire(folder, owns=False)

    def _acquire(self, d: DirHandle, *, owns: bool) -> Claim | None:
        place = d
        claim: Claim | None = None
        claim_id = uuid.uuid4().hex
        replaced: str | None = None
        try:
            for _ in range(3):
                try:
                    place.create_complete(CLAIM, self._record(claim_id))
                except FileExistsError:
                    try:
                        current = self._read(place)
                    except UnsafeStateFile as exc:
                        replaced, current = exc.reason, None
                    except StateError:
                        if self._being_written(place):
                            return None
                        current = {"id": "corrupt"}
                    if current is not None and not self._is_stale(current):
                        return None
                    if not self._take_over(place, claim_id, current):
                        return None
                    continue
                except OSError as exc:
                    if exc.errno in UNWRITABLE and place is d and self.store is not None:
                        place = self._fallback(d)
                        continue
                    raise StateError(f"{d.label}: cannot create claim: {exc.strerror}") from None
                # No fsync: a claim only matters while its process lives; after a crash it is stale anyway.
                claim = Claim(folder=d.path, claim_id=claim_id, place=place, replaced=replaced,
                              owns_place=owns or place is not d)
                return claim
            return None
        finally:
            if place is not d and (claim is None or owns):
                (place if claim is None else d).close()

    def _being_written(self, place: DirHandle) -> bool:
        """Whether a claim file that is not a complete record may still be being written by its creator
        (on a filesystem without hard links): it was modified less than a lease ago (either way, for
        clocks that differ between hosts). Such a claim is held, never corrupt."""
        try:
            st = place.lstat(CLAIM)
        except OSError:
            return True   # cannot tell: wait rather than take a live claim
        return st is not None and abs(self.clock() - st.st_mtime) < self.lease_seconds

    def _fallback(self, d: DirHandle) -> DirHandle:
        assert self.store is not None
        try:
            return DirHandle.open_own(self.store.fallback_dir(d), create=True, label=d.label)
        except OSError as exc:
            raise StateError(f"{d.label}: cannot prepare claim: {exc.strerror}") from None

    def _take_over(self, place: DirHandle, claim_id: str, current: dict[str, Any] | None) -> bool:
        """Move the stale (or foreign) claim aside under a unique name, then check it was the one we
        judged: if a competitor replaced it in between, we moved a live claim and must give up."""
        aside = f"{CLAIM}.stale-{claim_id}"
        try:
            place.rename(CLAIM, aside)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise StateError(f"{place.label}: cannot take over claim: {exc.strerror}") from None
        try:
            st = place.lstat(aside)
            moved = self._read(place, aside) if st is not None and stat.S_ISREG(st.st_mode) else None
        except (UnsafeStateFile, StateError, OSError):
            moved = None
        with contextlib.suppress(OSError):
            place.unlink(aside)
        return not (moved is not None and current is not None and moved.get("id") != current.get("id"))

    def verify(self, claim: Claim) -> None:
        """Raise ClaimLost unless `claim` is still ours and its lease has not run out."""
        with claim.lock:
            self._verify(claim)

    def _verify(self, claim: Claim) -> None:
        if claim.released:
            raise ClaimLost(f"{claim.folder}: claim was released")
        try:
            current = self._read(claim.place)
        except (StateError, UnsafeStateFile):
            current = None
        if current is None or current.get("id") != claim.claim_id:
            raise ClaimLost(f"{claim.folder}: claim was taken over by another process")
        lease_until = current.get("lease_until")
        if not isinstance(lease_until, int | float) or lease_until < self.clock():
            raise ClaimLost(f"{claim.folder}: claim lease expired")

    def renew(self, claim: Claim) -> None:
        """Extend the lease of a claim that is still ours. Raises ClaimLost otherwise."""
        with claim.lock:
            self._verify(claim)
            try:
                claim.place.write_atomic(CLAIM, self._record(claim.claim_id))
            except OSError as exc:
                raise StateError(f"{claim.folder}: cannot renew claim: {exc.strerror}") from None

    def release(self, claim: Claim) -> None:
        """Remove the claim if it is still ours; never raises. The claim cannot be used afterwards."""
        with claim.lock:
            if claim.released:
                return
            claim.released = True
            try:
                current = self._read(claim.place)
                if current is not None and current.get("id") == claim.claim_id:
                    os.unlink(CLAIM, dir_fd=claim.place.fileno())
            except (OSError, StateError, UnsafeStateFile):
                pass
            if claim.owns_place:
                claim.place.close()
