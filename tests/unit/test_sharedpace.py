"""sharedpace: one token bucket for every process of the daemon; the rule's answers go to the supervisor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import wait_for
from watcher.cloud.client import RequestOutcome
from watcher.daemon.sharedpace import FLUSH_SECONDS, MESSAGE, PaceFile, SharedPacing, parse
from watcher.errors import TransientError


def test_the_bucket_is_one_for_every_process(tmp_path: Path) -> None:
    supervisor, a, b = PaceFile(tmp_path), PaceFile(tmp_path), PaceFile(tmp_path)
    assert a.delay(100.0) == 0.0 and a.rate() is None, "unlimited until the rule sets a rate"
    supervisor.set_rate(10.0, 100.0, empty=True)
    assert b.rate() == 10.0
    assert a.delay(100.0) == 0.1, "an empty bucket: a token in a tenth of a second"
    assert b.delay(100.1) == 0.0, "the token came, and this process took it"
    assert a.delay(100.1) == 0.1, "... so the other one waits"
    assert supervisor.take_waits() == 2 and supervisor.take_waits() == 0
    assert a.delay(105.0) == 0.0 and b.delay(105.0) == 0.1, \
        "after 5 s idle the bucket holds a tenth of a second of tokens (at least one), not 50"
    supervisor.set_rate(None, 106.0, empty=False)
    assert a.delay(106.0) == 0.0 and b.rate() is None


def test_a_clock_read_before_a_later_callers_gains_no_tokens(tmp_path: Path) -> None:
    """A thread reads the clock, then waits for the lock behind one that read it later: the stamp must not
    go back, or the time between is counted twice (30 tokens a second at a rate of 26, measured)."""
    bucket = PaceFile(tmp_path)
    bucket.set_rate(10.0, 100.0, empty=True)
    assert bucket.delay(100.5) == 0.0           # a full token (of at most one), taken
    assert bucket.delay(100.2) > 0.0            # read earlier, served later: nothing new
    assert bucket.delay(100.5) > 0.0, "the 0.3 s between the two readings was counted again"


def test_a_process_sends_its_api_answers_to_the_supervisor_gathered_and_a_429_at_once(tmp_path: Path) -> None:
    sent: list[str] = []
    now = [500.25]
    pacing = SharedPacing(tmp_path, sent.append, clock=lambda: now[0], flush_after=None)   # the rule alone

    def lines(datagram: str) -> list[tuple[int | None, float, float | None, float] | None]:
        assert all(line.split("=", 1)[0] == MESSAGE for line in datagram.splitlines())
        return [parse(line.split("=", 1)[1]) for line in datagram.splitlines()]

    pacing.observe(RequestOutcome("uploadurl", 200, 0.01, None))    # the first: sent at once
    pacing.observe(RequestOutcome("put", 200, 0.5, None))           # uploads are never paced: not sent
    pacing.observe(RequestOutcome("create_run", None, 2.0, TransientError))
    assert [lines(d) for d in sent] == [[(200, 0.01, None, 500.25)]]   # the reset waits for the next datagram
    now[0] += 0.01
    pacing.observe(RequestOutcome("uploadurl", 429, 0.0125, TransientError, retry_after=1.0))   # at once
    assert lines(sent[1]) == [(None, 2.0, None, 500.25), (429, 0.0125, 1.0, 500.26)]
    now[0] += 0.01
    pacing.observe(RequestOutcome("uploadurl", 200, 0.01, None))    # within FLUSH_SECONDS of the last: kept
    assert len(sent) == 2
    now[0] += FLUSH_SECONDS
    pacing.observe(RequestOutcome("create_run", 200, 0.02, None))
    assert lines(sent[2]) == [(200, 0.01, None, 500.27), (200, 0.02, None, pytest.approx(500.27 + FLUSH_SECONDS))]
    assert parse("429 x 1 2") is None and parse("") is None


def test_answers_left_waiting_are_sent_without_another_answer(tmp_path: Path) -> None:
    """A process that goes quiet (every call held by another process's 429, or no work left) must still
    send the answers it gathered: the supervisor judges a 429 by the calls accepted before it (with the
    lines kept until the next answer, the first pace after the hold came from half of them)."""
    sent: list[str] = []
    now = [500.25]
    pacing = SharedPacing(tmp_path, sent.append, clock=lambda: now[0])
    try:
        pacing.observe(RequestOutcome("uploadurl", 200, 0.01, None))    # the first: sent at once
        now[0] += 0.01
        pacing.observe(RequestOutcome("create_run", 200, 0.02, None))   # gathered, and then nothing more
        wait_for(lambda: len(sent) == 2, timeout=10, what="the gathered answer sent")
        assert [parse(line.split("=", 1)[1]) for line in sent[1].splitlines()] == [(200, 0.02, None, 500.26)]
    finally:
        pacing.close()
