"""RunLookup: find the run an uncertain POST created, by its token, paging no further than needed."""

from __future__ import annotations

import threading
from typing import Any, cast

from watcher.cloud.client import NextmvClient
from watcher.cloud.lookup import RunLookup
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
    """`list_runs` over fixed pages, newest first; the first call can be held until released."""

    def __init__(self, pages: list[list[dict[str, Any]]], hold_first: bool = False) -> None:
        self.pages = pages
        self.calls: list[tuple[str, str | None]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold_first = hold_first
        self._lock = threading.Lock()

    def list_runs(self, application_id: str, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        with self._lock:
            self.calls.append((application_id, page_token))
            first = len(self.calls) == 1
        if first and self.hold_first:
            self.entered.set()
            assert self.release.wait(timeout=5)
        index = int(page_token or 0)
        nxt = str(index + 1) if index + 1 < len(self.pages) else None
        return self.pages[index], nxt


def lookup(fake: FakeRuns, clock: Clock | None = None) -> RunLookup:
    return RunLookup(cast(NextmvClient, fake), clock=clock or Clock(), skew_seconds=SKEW)


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
