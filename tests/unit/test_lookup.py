"""RunLookup: find the run an uncertain POST created, by its token, paging no further than needed, whatever
the list's order; a look-up that could not see every run that could match is inconclusive."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import structlog

from watcher.cloud.client import NextmvClient
from watcher.cloud.lookup import RunLookup
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    LookupInconclusive,
    RejectedError,
    TransientError,
)
from watcher.runfolder.markers import Intent, utc_iso

SKEW = 300.0
T0 = 1_700_000_000.0
TOKEN_A, TOKEN_B, TOKEN_C = "a" * 32, "b" * 32, "c" * 32


class Clock:
    """A clock that only moves when told to; it records how often it was read."""

    def __init__(self, now: float = T0 + 1000) -> None:
        self.now = now
        self.reads = 0
        self._cond = threading.Condition()

    def __call__(self) -> float:
        with self._cond:
            self.reads += 1
            self._cond.notify_all()
            return self.now

    def wait_reads(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.reads >= n, timeout)


def run(run_id: str, created: float, token: str | None = None, description: str = "a run") -> dict[str, Any]:
    text = f"{description}\n\nnextmv-watcher:{token}" if token else description
    return {"id": run_id, "description": text, "created_at": utc_iso(created), "status_v2": "succeeded"}


class FakeRuns:
    """`list_runs` over fixed pages (in whatever order the test gives); the first call can be held until
    released; `errors` maps a page index to the error its request raises."""

    def __init__(self, pages: list[list[dict[str, Any]]], hold_first: bool = False,
                 errors: dict[int, ApiError] | None = None) -> None:
        self.pages = pages
        self.calls: list[tuple[str, str | None]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold_first = hold_first
        self.errors = errors or {}
        self._lock = threading.Lock()

    def list_runs(self, application_id: str, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        with self._lock:
            self.calls.append((application_id, page_token))
            first = len(self.calls) == 1
        if first and self.hold_first:
            self.entered.set()
            assert self.release.wait(timeout=5)
        index = int(page_token or 0)
        if index in self.errors:
            raise self.errors[index]
        nxt = str(index + 1) if index + 1 < len(self.pages) else None
        return self.pages[index], nxt


def lookup(fake: FakeRuns, clock: Clock | None = None, max_pages: int | Callable[[], int] = 2000) -> RunLookup:
    return RunLookup(cast(NextmvClient, fake), clock=clock or Clock(), skew_seconds=SKEW, max_pages=max_pages)


def paged(runs: list[dict[str, Any]], size: int = 50) -> list[list[dict[str, Any]]]:
    return [runs[i:i + size] for i in range(0, len(runs), size)] or [[]]


def history(count: int, newest: float, step: float = 60.0) -> list[dict[str, Any]]:
    """`count` runs without our tokens, newest first, the newest created at `newest`, one per `step`."""
    return [run(f"old-{i}", newest - i * step) for i in range(count)]


def test_a_run_is_found_by_the_token_in_its_description() -> None:
    fake = FakeRuns([[run("r3", T0 + 20), run("r2", T0 + 10, TOKEN_A, "user text"), run("r1", T0)]])
    finder = lookup(fake)

    assert finder.find("app", [Intent(TOKEN_A, T0 + 5)]) == (TOKEN_A, "r2")
    assert fake.calls == [("app", None)]


def test_any_of_several_intents_can_match() -> None:
    fake = FakeRuns([[run("r2", T0 + 10, TOKEN_B)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0), Intent(TOKEN_B, T0 + 8)]) == (TOKEN_B, "r2")


def test_no_matching_token_is_none() -> None:
    fake = FakeRuns([[run("r2", T0 + 10, TOKEN_B), run("r1", T0 + 5)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) is None


def test_no_intents_means_no_listing() -> None:
    fake = FakeRuns([[run("r1", T0, TOKEN_A)]])
    finder = lookup(fake)

    assert finder.find("app", []) is None
    assert fake.calls == []
    assert finder.passes == 0


def test_paging_stops_at_the_page_that_reaches_the_bound() -> None:
    intent = Intent(TOKEN_A, T0)
    pages = [
        [run("r9", T0 + 900), run("r8", T0 + 800)],
        [run("r7", T0 + 100), run("r6", T0 - SKEW + 1)],
        [run("r5", T0 - SKEW - 1, TOKEN_A), run("r4", T0 - 1000)],  # older than the bound
        [run("r3", T0 - 2000)],
        [run("r2", T0 - 3000)],
    ]
    fake = FakeRuns(pages)

    assert lookup(fake).find("app", [intent]) is None
    assert fake.calls == [("app", None), ("app", "1"), ("app", "2")]


def test_paging_follows_tokens_to_the_last_page() -> None:
    fake = FakeRuns([[run("r3", T0 + 30)], [run("r2", T0 + 20)], [run("r1", T0 + 10, TOKEN_A)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "r1")
    assert len(fake.calls) == 3


def test_a_run_created_too_long_before_its_intent_is_not_adopted() -> None:
    """The same token on a run older than intent - skew cannot be that intent's run."""
    old_intent, new_intent = Intent(TOKEN_A, T0 - 5000), Intent(TOKEN_B, T0)
    fake = FakeRuns([[run("r2", T0 - SKEW - 10, TOKEN_B), run("r1", T0 - SKEW + 10, TOKEN_C)]])
    finder = lookup(fake)

    assert finder.find("app", [old_intent, new_intent]) is None


def test_the_skew_margin_admits_a_run_stamped_slightly_before_the_intent() -> None:
    fake = FakeRuns([[run("r1", T0 - SKEW + 1, TOKEN_A)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "r1")


def test_a_later_lookup_makes_a_new_pass() -> None:
    clock = Clock()
    fake = FakeRuns([[run("r1", T0 + 10)]])
    finder = lookup(fake, clock)
    assert finder.find("app", [Intent(TOKEN_A, T0)]) is None

    clock.now += 1
    fake.pages = [[run("r2", T0 + 20, TOKEN_A), run("r1", T0 + 10)]]

    assert finder.find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "r2")
    assert finder.passes == 2


def test_an_older_intent_needs_a_deeper_pass() -> None:
    clock = Clock()
    fake = FakeRuns([[run("r2", T0)], [run("r1", T0 - 2000, TOKEN_A)]])
    finder = lookup(fake, clock)
    assert finder.find("app", [Intent(TOKEN_B, T0)]) is None
    assert finder.passes == 1  # it stopped at r1, older than its bound, without looking at r1's token

    assert finder.find("app", [Intent(TOKEN_A, T0 - 2000)]) == (TOKEN_A, "r1")
    assert finder.passes == 2


def test_concurrent_lookups_for_one_application_share_one_pass() -> None:
    clock = Clock()
    fake = FakeRuns([[run("r2", T0 + 20, TOKEN_B), run("r1", T0 + 10, TOKEN_A)]], hold_first=True)
    finder = lookup(fake, clock)
    results: dict[str, tuple[str, str] | None] = {}

    def find(name: str, intent: Intent) -> None:
        results[name] = finder.find("app", [intent])

    first = threading.Thread(target=find, args=("first", Intent(TOKEN_A, T0)))
    first.start()
    assert fake.entered.wait(timeout=5)  # the first pass is under way, and held
    reads = clock.reads
    second = threading.Thread(target=find, args=("second", Intent(TOKEN_B, T0)))
    second.start()
    assert clock.wait_reads(reads + 1)  # the second caller asked (and now waits for the pass)
    fake.release.set()
    for t in (first, second):
        t.join(timeout=5)
        assert not t.is_alive()

    assert results == {"first": (TOKEN_A, "r1"), "second": (TOKEN_B, "r2")}
    assert finder.passes == 1
    assert len(fake.calls) == 1


def test_callers_that_asked_after_a_pass_began_share_the_next_one() -> None:
    clock = Clock()
    fake = FakeRuns([[run("r1", T0 + 10, TOKEN_A)]], hold_first=True)
    finder = lookup(fake, clock)
    results: list[tuple[str, str] | None] = []

    def find() -> None:
        results.append(finder.find("app", [Intent(TOKEN_A, T0)]))

    threads = [threading.Thread(target=find)]
    threads[0].start()
    assert fake.entered.wait(timeout=5)
    clock.now += 1  # the run these callers look for may have been created after the first pass began
    reads = clock.reads
    threads += [threading.Thread(target=find) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    assert clock.wait_reads(reads + 3)
    fake.release.set()
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()

    assert results == [(TOKEN_A, "r1")] * 4
    assert finder.passes == 2  # one for the first caller, one shared by the three that came later


def test_lookups_for_different_applications_do_not_share() -> None:
    fake = FakeRuns([[run("r1", T0 + 10, TOKEN_A)]])
    finder = lookup(fake)

    finder.find("app-1", [Intent(TOKEN_A, T0)])
    finder.find("app-2", [Intent(TOKEN_A, T0)])

    assert [app for app, _ in fake.calls] == ["app-1", "app-2"]
    assert finder.passes == 2


# --- whatever the order -----------------------------------------------------------------------------


def test_an_oldest_first_list_is_paged_to_the_end_and_the_run_found() -> None:
    """200 older runs first, then the run: the first page is all older than the bound, which stops a
    look-up that assumes newest first."""
    runs = [*reversed(history(200, T0 - SKEW - 60)), run("mine", T0 + 5, TOKEN_A), run("later", T0 + 60)]
    fake = FakeRuns(paged(runs))

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")
    assert len(fake.calls) == 5   # every page


def test_an_unordered_list_is_paged_to_the_end_and_the_run_found() -> None:
    runs = [*history(150, T0 + 3000), run("mine", T0 + 5, TOKEN_A), *history(150, T0 - 1000)]
    random.Random(7).shuffle(runs)
    fake = FakeRuns(paged(runs))

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")
    assert len(fake.calls) == len(fake.pages)


def test_a_later_run_on_the_same_page_turns_the_early_stop_off() -> None:
    fake = FakeRuns([[run("r2", T0 - 1000), run("r3", T0 + 100)], [run("mine", T0 + 5, TOKEN_A)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")


def test_a_later_run_on_a_later_page_turns_the_early_stop_off() -> None:
    """Newest first within each page is not enough: the order must hold across pages too."""
    fake = FakeRuns([
        [run("r9", T0 + 100), run("r8", T0 + 50)],
        [run("r7", T0 + 200), run("r6", T0 - 1000)],   # later than r8: not newest first after all
        [run("mine", T0 + 5, TOKEN_A)],
    ])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")
    assert len(fake.calls) == 3


def test_a_newest_first_list_with_equal_times_still_stops_at_the_bound() -> None:
    fake = FakeRuns([[run("r3", T0 + 10), run("r2", T0 + 10)], [run("r1", T0 - 1000), run("r0", T0 - 1000)],
                     [run("never-read", T0 + 50)]])

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) is None
    assert len(fake.calls) == 2


def test_runs_without_a_readable_created_at_neither_break_the_order_nor_miss() -> None:
    undated = {"id": "mine", "description": f"nextmv-watcher:{TOKEN_B}"}
    garbled = {"id": "r2", "description": "x", "created_at": "yesterday"}
    fake = FakeRuns([[run("r3", T0 + 10), undated, garbled, run("r1", T0 - 5000)], [run("never-read", T0)]])

    # Undated, it counts as inside every intent's window, the newer intent's too.
    assert lookup(fake).find("app", [Intent(TOKEN_A, T0 - 2000), Intent(TOKEN_B, T0 + 5000)]) == (TOKEN_B, "mine")
    assert len(fake.calls) == 1


# --- inconclusive look-ups ----------------------------------------------------------------------------


def test_the_page_limit_makes_a_look_up_inconclusive_and_is_logged() -> None:
    runs = [*reversed(history(120, T0 - SKEW - 60)), run("mine", T0 + 5, TOKEN_A)]   # oldest first, 3 pages
    fake = FakeRuns(paged(runs))

    with structlog.testing.capture_logs() as events, pytest.raises(LookupInconclusive) as exc:
        lookup(fake, max_pages=2).find("app", [Intent(TOKEN_A, T0)])
    assert exc.value.cause == "page_limit"
    assert len(fake.calls) == 2
    [limit] = [e for e in events if e["event"] == "run_lookup_page_limit"]
    assert (limit["log_level"], limit["pages"], limit["application_id"]) == ("warning", 2, "app")


def test_the_page_limit_is_read_at_each_pass() -> None:
    clock = Clock()
    runs = [*reversed(history(120, T0 - SKEW - 60)), run("mine", T0 + 5, TOKEN_A)]
    fake = FakeRuns(paged(runs))
    limit = [2]
    finder = lookup(fake, clock, max_pages=lambda: limit[0])
    with pytest.raises(LookupInconclusive):
        finder.find("app", [Intent(TOKEN_A, T0)])

    clock.now += 1
    limit[0] = 3   # a reload raised api.lookup_max_pages
    assert finder.find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")


def test_reading_the_last_page_at_the_limit_is_conclusive() -> None:
    fake = FakeRuns(paged([*reversed(history(100, T0 - SKEW - 60))]))   # 2 pages, oldest first

    assert lookup(fake, max_pages=2).find("app", [Intent(TOKEN_A, T0)]) is None


def test_a_match_before_the_page_limit_is_adopted() -> None:
    runs = [run("mine", T0 + 5, TOKEN_A), *reversed(history(120, T0 - SKEW - 60))]   # unordered
    fake = FakeRuns(paged(runs))

    assert lookup(fake, max_pages=1).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")


@pytest.mark.parametrize("error", [TransientError("list_runs: HTTP 503", status=503),
                                   RejectedError("list_runs: HTTP 400: bad page token", status=400)],
                         ids=["503", "400"])
def test_a_page_that_cannot_be_read_makes_a_look_up_inconclusive(error: ApiError) -> None:
    fake = FakeRuns([[run("r2", T0 + 10)], [run("mine", T0 + 5, TOKEN_A)]], errors={1: error})

    with pytest.raises(LookupInconclusive) as exc:
        lookup(fake).find("app", [Intent(TOKEN_A, T0)])
    assert exc.value.cause == "page_error"
    assert str(error) in str(exc.value)


def test_a_match_found_before_a_page_error_is_adopted() -> None:
    fake = FakeRuns([[run("mine", T0 + 5, TOKEN_A)], [run("r1", T0)]],
                    errors={1: TransientError("list_runs: HTTP 503", status=503)})

    assert lookup(fake).find("app", [Intent(TOKEN_A, T0)]) == (TOKEN_A, "mine")


@pytest.mark.parametrize("error", [AuthError("list_runs: HTTP 401", status=401), ApplicationNotFound("app")],
                         ids=["auth", "application"])
def test_a_rejected_key_or_a_missing_application_keeps_its_meaning(error: ApiError) -> None:
    fake = FakeRuns([[run("r2", T0 + 10)], [run("mine", T0 + 5, TOKEN_A)]], errors={1: error})

    with pytest.raises(type(error)):
        lookup(fake).find("app", [Intent(TOKEN_A, T0)])


def test_callers_sharing_an_inconclusive_pass_are_all_told() -> None:
    clock = Clock()
    fake = FakeRuns([[run("r1", T0 + 10)], [run("r0", T0 + 5)]], hold_first=True,
                    errors={1: TransientError("list_runs: HTTP 503", status=503)})
    finder = lookup(fake, clock)
    results: list[str] = []

    def find(intent: Intent) -> None:
        try:
            results.append(str(finder.find("app", [intent])))
        except LookupInconclusive as exc:
            results.append(exc.cause)

    threads = [threading.Thread(target=find, args=(Intent(TOKEN_A, T0),))]
    threads[0].start()
    assert fake.entered.wait(timeout=5)
    clock.now += 1
    reads = clock.reads
    threads += [threading.Thread(target=find, args=(Intent(t, T0),)) for t in (TOKEN_B, TOKEN_C)]
    for t in threads[1:]:
        t.start()
    assert clock.wait_reads(reads + 2)
    fake.release.set()
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()

    assert results == ["page_error"] * 3
    assert finder.passes == 2   # the first caller's, and one shared by the two that came later


# --- one pass for every folder waiting ----------------------------------------------------------------


def test_one_pass_reaches_back_to_the_oldest_intent_of_every_caller_waiting() -> None:
    """Two callers wait while a pass runs: one with a recent intent, one with an old one. The next pass
    serves both, whichever of them runs it."""
    clock = Clock()
    pages = [
        [run("new", T0 + 10, TOKEN_B), run("x", T0 - 1000)],
        [run("old", T0 - 2000, TOKEN_C)],
        [run("y", T0 - 9000)],
        [run("never-read", T0 - 9500)],
    ]
    fake = FakeRuns(pages, hold_first=True)
    finder = lookup(fake, clock)
    results: dict[str, tuple[str, str] | None] = {}

    def find(name: str, intent: Intent) -> None:
        results[name] = finder.find("app", [intent])

    threads = [threading.Thread(target=find, args=("first", Intent(TOKEN_A, T0)))]
    threads[0].start()
    assert fake.entered.wait(timeout=5)
    clock.now += 1
    reads = clock.reads
    threads += [threading.Thread(target=find, args=("recent", Intent(TOKEN_B, T0))),
                threading.Thread(target=find, args=("old", Intent(TOKEN_C, T0 - 2000)))]
    for t in threads[1:]:
        t.start()
    assert clock.wait_reads(reads + 2)
    fake.release.set()
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()

    assert results == {"first": None, "recent": (TOKEN_B, "new"), "old": (TOKEN_C, "old")}
    assert finder.passes == 2
