"""Find the run an earlier POST may have created, by the token in its description.

The API has no idempotency key, so a POST whose answer was lost leaves the run's existence
unknown. Each POST carries a unique token (see `tracker.py`); this module pages through the
application's run list, newest first, and stops as soon as runs are older than the oldest
open intent minus a clock-skew margin. A match needs both the token and a creation time no
earlier than that intent minus the margin. Concurrent look-ups for one application share a
single pass: a caller that started waiting before a pass began uses that pass's result.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watcher.cloud.client import NextmvClient
from watcher.config import RUN_TOKEN_PREFIX
from watcher.runfolder.markers import Intent, parse_iso

TOKEN_RE = re.compile(re.escape(RUN_TOKEN_PREFIX) + r"([0-9a-f]{32})")
MAX_PAGES = 1000


@dataclass
class _Pass:
    started_at: float
    bound: float                           # runs older than this were not looked at
    found: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (run id, created_at)


class RunLookup:
    def __init__(self, client: NextmvClient, *, clock: Callable[[], float] = time.time,
                 skew_seconds: float = 300.0) -> None:
        self.client = client
        self.clock = clock
        self.skew_seconds = skew_seconds
        self._locks: dict[str, threading.Lock] = {}
        self._last: dict[str, _Pass] = {}
        self._guard = threading.Lock()
        self.passes = 0   # how many listing passes were made (observable in tests)

    def find(self, application_id: str, intents: list[Intent]) -> tuple[str, str] | None:
        """(token, run_id) of the run created by one of `intents`, or None. Raises ApiError."""
        if not intents:
            return None
        asked_at = self.clock()
        oldest = min(i.created_at for i in intents) - self.skew_seconds
        with self._guard:
            lock = self._locks.setdefault(application_id, threading.Lock())
        with lock:
            last = self._last.get(application_id)
            if last is None or last.started_at < asked_at or last.bound > oldest:
                last = self._list(application_id, oldest)
                self._last[application_id] = last
        for intent in intents:
            hit = last.found.get(intent.token)
            if hit is not None and hit[1] >= intent.created_at - self.skew_seconds:
                return intent.token, hit[0]
        return None

    def _list(self, application_id: str, bound: float) -> _Pass:
        result = _Pass(started_at=self.clock(), bound=bound)
        self.passes += 1
        token: str | None = None
        for _ in range(MAX_PAGES):
            runs, token = self.client.list_runs(application_id, token)
            reached_bound = False
            for run in runs:
                created = _created_at(run)
                if created is not None and created < bound:
                    reached_bound = True
                    continue
                if not isinstance(run.get("id"), str):
                    continue
                # Every token line counts: a user's own description could contain one too.
                for found in TOKEN_RE.findall(str(run.get("description") or "")):
                    result.found[found] = (str(run["id"]), created if created is not None else bound)
            if reached_bound or not token:
                break
        return result


def _created_at(run: dict[str, object]) -> float | None:
    value = run.get("created_at")
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None
