"""Find the run an earlier POST may have created, by the token in its description.

The API has no idempotency key, so a POST whose answer was lost leaves the run's existence
unknown. Each POST carries a unique token (see `tracker.py`); this module pages through the
application's run list and collects the tokens of the runs created no earlier than the oldest
open intent minus a clock-skew margin (the *bound*). A match needs both the token and a creation
time no earlier than its own intent minus the margin.

The list's order is not documented, so none is assumed: paging stops early only while every
`created_at` seen so far (within and across pages) is non-increasing, at the end of the page that
reached the bound; otherwise it goes on to the last page, at most `api.lookup_max_pages` pages. A
pass that ended without seeing every run that could match (the page limit hit, a page that could
not be read) is *inconclusive*: when it found no match, `find` raises `LookupInconclusive`, and
nothing may be posted on its strength. A run without a readable `created_at` counts as inside the
bound and does not break the order.

Concurrent look-ups for one application share a single pass: a caller that started waiting before a
pass began uses that pass's result, and a pass reaches back to the oldest intent of every caller
waiting for it, so that one pass serves every folder of the application waiting for a look-up.
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from watcher.cloud.client import NextmvClient
from watcher.config import RUN_TOKEN_PREFIX
from watcher.errors import ApiError, ApplicationNotFound, AuthError, LookupInconclusive
from watcher.runfolder.markers import Intent, parse_iso

log = structlog.get_logger("watcher.cloud.lookup")

TOKEN_RE = re.compile(re.escape(RUN_TOKEN_PREFIX) + r"([0-9a-f]{32})")
MAX_PAGES = 2000   # api.lookup_max_pages' default


@dataclass
class _Pass:
    started_at: float
    bound: float                           # runs created before this were not collected
    # token -> (run id, created_at; infinity when unreadable: inside every intent's window)
    found: dict[str, tuple[str, float]] = field(default_factory=dict)
    cause: str | None = None               # why the pass is inconclusive ("page_limit", "page_error")
    detail: str = ""


class RunLookup:
    """Thread-safe. `max_pages` is read at each pass (the daemon hands in the current configuration's)."""

    def __init__(self, client: NextmvClient, *, clock: Callable[[], float] = time.time,
                 skew_seconds: float = 300.0, max_pages: int | Callable[[], int] = MAX_PAGES) -> None:
        self.client = client
        self.clock = clock
        self.skew_seconds = skew_seconds
        self.max_pages: Callable[[], int] = max_pages if callable(max_pages) else (lambda: max_pages)
        self._locks: dict[str, threading.Lock] = {}
        self._last: dict[str, _Pass] = {}
        # The bounds of the callers waiting for a pass, by application (a multiset).
        self._waiting: dict[str, collections.Counter[float]] = {}
        self._guard = threading.Lock()
        self.passes = 0   # how many listing passes were made (observable in tests)

    def find(self, application_id: str, intents: list[Intent]) -> tuple[str, str] | None:
        """(token, run_id) of the run created by one of `intents`, or None when the list was seen to
        the bound and holds none. Raises LookupInconclusive when it could not be seen that far and no
        match was found; AuthError and ApplicationNotFound as the client does."""
        if not intents:
            return None
        asked_at = self.clock()
        oldest = min(i.created_at for i in intents) - self.skew_seconds
        with self._guard:
            lock = self._locks.setdefault(application_id, threading.Lock())
            waiting = self._waiting.setdefault(application_id, collections.Counter())
            waiting[oldest] += 1
        try:
            with lock:
                last = self._last.get(application_id)
                if last is None or last.started_at < asked_at or last.bound > oldest:
                    with self._guard:
                        bound = min(waiting)   # ours included: reach back for every caller waiting now
                    last = self._list(application_id, bound)
                    self._last[application_id] = last
        finally:
            with self._guard:
                waiting[oldest] -= 1
                if waiting[oldest] <= 0:
                    del waiting[oldest]
        for intent in intents:
            hit = last.found.get(intent.token)
            if hit is not None and hit[1] >= intent.created_at - self.skew_seconds:
                return intent.token, hit[0]
        if last.cause is not None:
            raise LookupInconclusive(application_id, last.cause, last.detail)
        return None

    def _list(self, application_id: str, bound: float) -> _Pass:
        result = _Pass(started_at=self.clock(), bound=bound)
        self.passes += 1
        limit = self.max_pages()
        token: str | None = None
        newest_first = True            # every created_at so far is no later than the one before it
        previous: float | None = None
        pages = 0
        while True:
            if pages >= limit:
                result.cause, result.detail = "page_limit", f"{pages} pages read, api.lookup_max_pages"
                log.warning("run_lookup_page_limit", application_id=application_id, pages=pages,
                            hint="the run list goes on; raise api.lookup_max_pages")
                break
            try:
                runs, token = self.client.list_runs(application_id, token)
            except (AuthError, ApplicationNotFound):
                raise
            except ApiError as exc:
                result.cause, result.detail = "page_error", f"page {pages + 1}: {exc}"
                break
            pages += 1
            reached_bound = False
            for run in runs:
                created = _created_at(run)
                if created is not None:
                    if previous is not None and created > previous:
                        newest_first = False
                    previous = created
                    if created < bound:
                        reached_bound = True
                        continue
                if not isinstance(run.get("id"), str):
                    continue
                # Every token line counts: a user's own description could contain one too.
                for found in TOKEN_RE.findall(str(run.get("description") or "")):
                    result.found[found] = (str(run["id"]), created if created is not None else math.inf)
            if not token or (reached_bound and newest_first):
                break
        log.debug("run_lookup_pass", application_id=application_id, pages=pages, newest_first=newest_first,
                  tokens=len(result.found), inconclusive=result.cause)
        return result


def _created_at(run: dict[str, object]) -> float | None:
    value = run.get("created_at")
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None
