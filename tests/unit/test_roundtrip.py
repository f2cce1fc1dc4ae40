"""`check --roundtrip`'s probe (`cloud/roundtrip.py`) against a scripted API, on a stepped clock.

The API here is a small in-memory model whose behaviour each test chooses: the list's order, how it
treats long names and descriptions, how late a run is listed, and what the POST answers. The real
command against the emulator is tested in tests/integration/test_roundtrip.py.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, cast

import pytest

from watcher.cloud.client import NextmvClient, UploadTarget
from watcher.cloud.roundtrip import PROBE_NAME, Result, Roundtrip, probe_texts
from watcher.cloud.tracker import Limits
from watcher.config import RUN_TOKEN_PREFIX, TOKEN_LINE_LENGTH
from watcher.errors import ApplicationNotFound, RejectedError, TransientError, UncertainError
from watcher.runfolder.markers import utc_iso

T0 = 1_700_000_000.0
LIMITS = Limits(grace_seconds=10.0)


class Clock:
    """Moves only when `wait` is called (the check's only way to pass time)."""

    def __init__(self) -> None:
        self.now = T0
        self.waited: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        self.now += seconds
        return False


class Api:
    """Enough of the API for the probe: uploads, runs, a paged list (3 runs a page)."""

    def __init__(self, clock: Clock, *, order: str = "newest", others: int = 0, lag: float = 0.0,
                 description_limit: int | None = None, cut: bool = False, post_error: Exception | None = None,
                 lose_answer: bool = False, list_error: Exception | None = None) -> None:
        self.clock = clock
        self.order = order
        self.lag = lag
        self.description_limit = description_limit
        self.cut = cut
        self.post_error = post_error
        self.lose_answer = lose_answer
        self.list_error = list_error
        self.cancel = threading.Event()
        self.puts: list[bytes] = []
        self.bodies: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = [
            {"id": f"old-{i}", "description": "", "created_at": utc_iso(T0 - 1000 + i), "at": T0 - 1000 + i}
            for i in range(others)]
        self._ids = itertools.count(1)

    def new_upload(self, application_id: str) -> UploadTarget:
        return UploadTarget(f"u{next(self._ids)}", "http://storage.invalid/put", self.clock())

    def put_file(self, target: UploadTarget, source: Any, size: int, progress: Any = None) -> None:
        with source() as f:
            data = f.read()
        assert len(data) == size
        self.puts.append(data)

    def create_run(self, application_id: str, body: dict[str, Any], instance_id: str | None) -> str:
        self.bodies.append(body)
        if self.post_error is not None:
            raise self.post_error
        description = body["description"]
        if self.description_limit is not None and len(description) > self.description_limit:
            if not self.cut:
                raise RejectedError("create_run: HTTP 400: description too long", status=400)
            description = description[:self.description_limit]
        run_id = f"run-{next(self._ids)}"
        self.runs.append({"id": run_id, "description": description, "created_at": utc_iso(self.clock()),
                          "at": self.clock()})
        if self.lose_answer:
            raise UncertainError("create_run: ReadTimeout after the request was sent; outcome unknown")
        return run_id

    def list_runs(self, application_id: str, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        if self.list_error is not None:
            raise self.list_error
        visible = [r for r in self.runs if r["at"] + self.lag <= self.clock()]
        ordered = sorted(visible, key=lambda r: r["at"], reverse=self.order == "newest")
        if self.order == "none":   # oldest first with each pair swapped: 1, 0, 3, 2, ...
            for i in range(0, len(ordered) - 1, 2):
                ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
        start = int(page_token or 0)
        page = ordered[start:start + 3]
        more = start + 3 < len(ordered)
        return [{k: v for k, v in r.items() if k != "at"} for r in page], str(start + 3) if more else None


def check(api: Api, clock: Clock, limits: Limits = LIMITS, max_pages: int = 100) -> dict[str, Any]:
    roundtrip = Roundtrip(cast(NextmvClient, api), limits, max_pages=max_pages, clock=clock, wait=clock.wait)
    findings = roundtrip.run("app-1")
    assert len(findings) == 3
    return {"accepted": findings[0], "listed": findings[1], "order": findings[2]}


def test_the_probe_is_at_each_limit_with_the_token_line_last() -> None:
    limits = Limits(max_name_length=100, max_description_length=200)
    name, description = probe_texts(limits, "f" * 32)
    assert len(name) == 100 and name.startswith(PROBE_NAME)
    assert len(description) == 200
    assert description.endswith(f"\n\n{RUN_TOKEN_PREFIX}{'f' * 32}")
    _, bare = probe_texts(Limits(max_description_length=TOKEN_LINE_LENGTH), "f" * 32)
    assert bare == f"{RUN_TOKEN_PREFIX}{'f' * 32}"


def test_an_api_that_meets_every_assumption_holds_them_all() -> None:
    clock = Clock()
    api = Api(clock, others=5)
    found = check(api, clock)
    assert [f.result for f in found.values()] == [Result.HELD] * 3, found
    assert api.puts == [b"{}", b"{}"]
    body = api.bodies[0]
    assert len(body["name"]) == 128 and len(body["description"]) == 256
    assert body["result"] == {"status": "succeeded", "output_upload_id": body["result"]["output_upload_id"]}
    assert len(api.bodies) == 1, "other runs tell the order: one probe is enough"


def test_an_application_without_other_runs_gets_a_second_probe_a_second_later() -> None:
    clock = Clock()
    api = Api(clock)
    found = check(api, clock)
    assert found["order"].result is Result.HELD, found["order"]
    assert len(api.bodies) == 2
    assert api.runs[1]["at"] - api.runs[0]["at"] >= 1.0


def test_an_oldest_first_list_violates_the_order_and_says_what_it_means() -> None:
    clock = Clock()
    found = check(Api(clock, order="oldest", others=5), clock)
    assert found["listed"].result is Result.HELD, "the probe is found on a later page"
    order = found["order"]
    assert order.result is Result.VIOLATED and "oldest first" in order.detail
    assert "pages through the whole run list" in order.meaning


def test_a_list_in_no_order_is_a_violation_too() -> None:
    clock = Clock()
    order = check(Api(clock, order="none", others=6), clock)["order"]
    assert order.result is Result.VIOLATED and "no order" in order.detail


def test_a_refused_description_violates_the_first_assumption_and_the_rest_cannot_be_told() -> None:
    clock = Clock()
    found = check(Api(clock, description_limit=200), clock)
    assert found["accepted"].result is Result.VIOLATED
    assert "description too long" in found["accepted"].detail
    assert "api.max_description_length" in found["accepted"].meaning
    assert found["listed"].result is Result.UNKNOWN and found["order"].result is Result.UNKNOWN


def test_a_silently_cut_description_loses_the_token_line() -> None:
    clock = Clock()
    listed = check(Api(clock, description_limit=200, cut=True, others=3), clock)["listed"]
    assert listed.result is Result.VIOLATED
    assert "lacks the token line" in listed.detail and "200 characters listed, 256 sent" in listed.detail
    assert "may be duplicated" in listed.meaning


def test_a_run_listed_after_the_grace_period_is_a_violation() -> None:
    clock = Clock()
    listed = check(Api(clock, lag=11.0, others=3), clock)["listed"]
    assert listed.result is Result.VIOLATED and "not listed within 10 s" in listed.detail
    assert clock.now - T0 >= 10.0, "it waited the whole grace period, polling"
    assert all(w <= 1.0 for w in clock.waited)


def test_a_run_listed_late_but_within_the_grace_period_holds() -> None:
    clock = Clock()
    listed = check(Api(clock, lag=4.0, others=3), clock)["listed"]
    assert listed.result is Result.HELD and "listed after 4.0 s" in listed.detail


def test_a_lost_post_answer_is_looked_up_by_the_token() -> None:
    clock = Clock()
    found = check(Api(clock, lose_answer=True, others=3), clock)
    assert found["accepted"].result is Result.HELD and "looked up by its token" in found["accepted"].detail
    assert found["listed"].result is Result.HELD


def test_a_list_too_long_to_read_cannot_tell() -> None:
    clock = Clock()
    listed = check(Api(clock, order="oldest", others=30), clock, max_pages=2)["listed"]
    assert listed.result is Result.UNKNOWN and "more than 2 pages" in listed.detail


def test_a_post_that_fails_for_a_passing_reason_cannot_tell() -> None:
    clock = Clock()
    found = check(Api(clock, post_error=TransientError("create_run: HTTP 503", status=503)), clock)
    assert [f.result for f in found.values()] == [Result.UNKNOWN] * 3


def test_a_missing_application_is_raised_for_the_command_to_report() -> None:
    clock = Clock()
    with pytest.raises(ApplicationNotFound):
        check(Api(clock, post_error=ApplicationNotFound("app-1")), clock)

