"""What the workers did: folder outcomes by application and reason, and the recent failures.

The one owner of these counts: `nextmv_watcher_folders_total` is read from here at scrape time,
`status` and `sync` read the totals, and the recent failures drop a folder once it is tracked or
retried. Thread-safe; the lock is never held while calling anything else.

Outcomes: `tracked` (reason `posted` or `adopted`), `failed` (`invalid`, `rejected`, `exhausted`),
`retried` (`changed`, `unreadable`, `throttled`, `api_error`, `lookup_inconclusive`, and `manual` for an
operator's `nextmv-watcher retry`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

OUTCOMES = ("tracked", "failed", "retried")
RECENT_FAILURES = 20


class Outcomes:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._recent: collections.OrderedDict[Path, dict[str, Any]] = collections.OrderedDict()
        self._last_retry: tuple[str, str] | None = None

    def record(self, folder: Path, application_id: str, outcome: str, reason: str, error: str = "") -> None:
        """Count one outcome of `folder`. Raises ValueError for an unknown outcome."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown folder outcome {outcome!r} (known: {', '.join(OUTCOMES)})")
        with self._lock:
            self._counts[(application_id, outcome, reason)] += 1
            if outcome == "failed":
                self._recent.pop(folder, None)
                self._recent[folder] = {"folder": str(folder), "application_id": application_id, "reason": reason,
                                        "error": error, "at": self.clock()}
                while len(self._recent) > RECENT_FAILURES:
                    self._recent.popitem(last=False)
            elif outcome == "tracked" or reason == "manual":
                self._recent.pop(folder, None)
            if outcome == "retried" and reason != "manual":
                self._last_retry = (reason, error)

    def last_retry(self) -> tuple[str, str] | None:
        """The reason and error of the latest attempt that is to be retried (not an operator's), or None."""
        with self._lock:
            return self._last_retry

    def retried_manually(self, folders: Iterable[tuple[Path, str]]) -> int:
        """An operator reset these (folder, application) failures (`nextmv-watcher retry`). Returns how many."""
        count = 0
        for folder, application_id in folders:
            self.record(folder, application_id, "retried", "manual")
            count += 1
        return count

    def totals(self) -> dict[str, int]:
        """Outcomes of every application and reason, summed: {"tracked": n, "failed": n, "retried": n}."""
        result = dict.fromkeys(OUTCOMES, 0)
        with self._lock:
            for (_, outcome, _), n in self._counts.items():
                result[outcome] += n
        return result

    def series(self) -> dict[tuple[str, str, str], int]:
        """Every (application_id, outcome, reason) counted so far, with its count."""
        with self._lock:
            return dict(self._counts)

    def recent_failures(self) -> list[dict[str, Any]]:
        """The last failures, oldest first, without folders since tracked or retried."""
        with self._lock:
            return list(self._recent.values())

    def drop_applications(self, keep: Iterable[str]) -> None:
        """A reload removed applications: their series and failures go (a counter series that vanishes
        is a reset to Prometheus, which rate() handles)."""
        kept = set(keep)
        with self._lock:
            for key in [k for k in self._counts if k[0] not in kept]:
                del self._counts[key]
            for folder in [f for f, e in self._recent.items() if e["application_id"] not in kept]:
                del self._recent[folder]
