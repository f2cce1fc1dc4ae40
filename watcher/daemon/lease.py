"""The lease keeper: one background thread that renews every claim this process holds.

A claim's lease (`watcher.runfolder.claims`) runs out unless renewed; the keeper renews each held claim every
third of the lease, so a long upload keeps its folder. A claim that was lost (taken over, released)
is skipped, never raised: its holder finds out when it verifies the claim before the POST.
"""

from __future__ import annotations

import contextlib
import threading

from watcher.errors import ClaimLost, StateError
from watcher.runfolder.claims import Claim, Claims


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
            with contextlib.suppress(ClaimLost, StateError, OSError, ValueError):
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
