"""One process at a time per folder: an exclusive claim file with a lease.

`.nextmv-claim` is created with O_EXCL and holds `{"host", "pid", "id", "lease_until"}`.
A claim is taken over when its lease has expired, or when it belongs to a process on this
host that no longer exists. A holder renews its lease while it works (see `LeaseKeeper`)
and checks with `verify()` that the claim is still its own right before the one step that
must never run twice (POST runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watcher.errors import ClaimLost, StateError
from watcher.state import atomic_write, read_json_file

CLAIM = ".nextmv-claim"


@dataclass(frozen=True)
class Claim:
    folder: Path
    claim_id: str
    path: Path


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
                 host: str | None = None, pid: int | None = None,
                 fallback_dir: Callable[[Path], Path] | None = None) -> None:
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self._fallback_dir = fallback_dir

    def _path(self, folder: Path) -> Path:
        if self._fallback_dir is not None and not os.access(folder, os.W_OK):
            place = self._fallback_dir(folder)
            place.mkdir(parents=True, exist_ok=True)
            return place / CLAIM
        return folder / CLAIM

    def _record(self, claim_id: str) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "id": claim_id,
                           "lease_until": self.clock() + self.lease_seconds}).encode()

    def holder(self, folder: Path) -> dict[str, object] | None:
        """The current claim's content, or None."""
        try:
            return read_json_file(self._path(folder))
        except StateError:
            return {"host": "?", "pid": 0, "id": "corrupt", "lease_until": 0}

    def _is_stale(self, record: dict[str, object]) -> bool:
        lease_until = record.get("lease_until")
        if not isinstance(lease_until, int | float) or lease_until < self.clock():
            return True
        pid = record.get("pid")
        return record.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self, folder: Path) -> Claim | None:
        """Claim `folder`, taking over a stale claim. None when another live process holds it.
        Raises StateError when the claim file cannot be written."""
        try:
            path = self._path(folder)
        except OSError as exc:
            raise StateError(f"{folder}: cannot prepare claim: {exc.strerror}") from None
        claim_id = uuid.uuid4().hex
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                current = self.holder(folder)
                if current is not None and not self._is_stale(current):
                    return None
                # Move the stale claim aside under a unique name, then check it was the stale one:
                # if a competitor replaced it in between, we moved a live claim and must give up.
                aside = path.with_name(f"{CLAIM}.stale-{claim_id}")
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StateError(f"{folder}: cannot take over claim: {exc.strerror}") from None
                try:
                    moved = read_json_file(aside) if aside.exists() else None
                except StateError:  # the corrupt claim that holder() reported as stale
                    moved = {"id": "corrupt"}
                with contextlib.suppress(OSError):
                    aside.unlink()
                if moved is not None and current is not None and moved.get("id") != current.get("id"):
                    return None
                continue
            except FileNotFoundError:
                raise StateError(f"{folder}: folder vanished while claiming") from None
            except OSError as exc:
                raise StateError(f"{folder}: cannot create claim: {exc.strerror}") from None
            # No fsync: a claim only matters while its process lives; after a crash it is stale anyway.
            try:
                os.write(fd, self._record(claim_id))
            finally:
                os.close(fd)
            return Claim(folder=folder, claim_id=claim_id, path=path)
        return None

    def verify(self, claim: Claim) -> None:
        """Raise ClaimLost unless `claim` is still ours and its lease has not run out."""
        try:
            current = read_json_file(claim.path)
        except StateError:
            current = None
        if current is None or current.get("id") != claim.claim_id:
            raise ClaimLost(f"{claim.folder}: claim was taken over by another process")
        lease_until = current.get("lease_until")
        if not isinstance(lease_until, int | float) or lease_until < self.clock():
            raise ClaimLost(f"{claim.folder}: claim lease expired")

    def renew(self, claim: Claim) -> None:
        """Extend the lease of a claim that is still ours. Raises ClaimLost otherwise."""
        self.verify(claim)
        try:
            atomic_write(claim.path, self._record(claim.claim_id))
        except OSError as exc:
            raise StateError(f"{claim.folder}: cannot renew claim: {exc.strerror}") from None

    def release(self, claim: Claim) -> None:
        """Remove the claim if it is still ours; never raises."""
        try:
            current = read_json_file(claim.path)
            if current is not None and current.get("id") == claim.claim_id:
                claim.path.unlink()
        except (OSError, StateError):
            pass


class LeaseKeeper:
    """Renews every held claim from one background thread, every third of the lease."""

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.claim_id] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.claim_id, None)

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for claim in held:
            with contextlib.suppress(ClaimLost, StateError, OSError):
                self.claims.renew(claim)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.claims.lease_seconds / 3):
            self.renew_all()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
