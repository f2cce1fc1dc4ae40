"""The supervisor runs the pace's rule on every process's API-call answers, in the order they were answered."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import write_config
from watcher.cloud.client import RequestOutcome
from watcher.config import load_config
from watcher.daemon.sharedpace import SharedPacing
from watcher.daemon.supervisor import Supervisor
from watcher.errors import TransientError

THROTTLED = RequestOutcome("create_run", 429, 0.01, TransientError, retry_after=None)
ACCEPTED = RequestOutcome("uploadurl", 200, 0.01, None)
Process = Callable[[int, float], SharedPacing]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Supervisor, Process]]:
    """A supervisor of two processes, and `process(index, answered_at)`: that process's side, whose
    answers (the first is sent at once) carry `answered_at`."""
    runs = tmp_path / "runs"
    runs.mkdir()
    config = load_config(write_config(tmp_path / "config.yaml", "https://api.test", [(runs, "app")],
                                      tmp_path / "state", processes=2), env={})
    supervisor = Supervisor(config, lock_fd=-1, key_env={}, local=lambda env: None)  # type: ignore[arg-type,return-value]
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def process(index: int, answered_at: float) -> SharedPacing:
        address = "\0" + supervisor.children[index].address.removeprefix("@")
        return SharedPacing(config.state_dir, lambda line: sender.sendto(line.encode(), address),
                            clock=lambda: answered_at, flush_after=None)

    try:
        yield supervisor, process
    finally:
        sender.close()
        for child in supervisor.children:
            child.sock.close()
        supervisor.pace.close()


def test_a_429_is_judged_after_the_calls_another_process_saw_accepted_before_it(
        supervised: tuple[Supervisor, Process]) -> None:
    """Process 0's 429 is read before process 1's ten accepted calls, all within the same read: the first
    pace must come from the rate the API accepted (ten calls in half a second: 0.9 x 20 = 18 calls/s), not
    from nothing (reading process by process gave 3.6 calls/s against a limit of 30 in `make bench`)."""
    supervisor, process = supervised
    start = time.monotonic() - 10.0
    process(0, start + 0.5).observe(THROTTLED)
    for n in range(10):
        process(1, start + n * 0.05).observe(ACCEPTED)
    supervisor._receive(timeout=5)
    assert supervisor.pacer.rate is not None and 17 < supervisor.pacer.rate < 19, supervisor.pacer.rate


def test_a_429_waits_for_the_answers_another_process_sends_later(supervised: tuple[Supervisor, Process]) -> None:
    """Another process sends the answers it gathered up to `FLUSH_SECONDS` after they came: a 429 read
    first is judged once those sent before it have had the time to arrive, with them."""
    supervisor, process = supervised
    now = time.monotonic()
    process(0, now).observe(THROTTLED)
    supervisor._receive(timeout=0.01)
    assert supervisor.pacer.rate is None, "judged before the other process's answers could arrive"
    for n in range(10):   # answered in the half second before the 429, sent just after it was read
        process(1, now - 0.5 + n * 0.05).observe(ACCEPTED)
    deadline = time.monotonic() + 10
    while supervisor.pacer.rate is None and time.monotonic() < deadline:
        supervisor._receive(timeout=0.5)
    assert supervisor.pacer.rate is not None and 17 < supervisor.pacer.rate < 19, supervisor.pacer.rate


def test_a_429_is_judged_with_the_calls_sent_before_it_and_answered_after_it(
        supervised: tuple[Supervisor, Process]) -> None:
    """At start-up the API answers slowly: calls sent before the first 429 were accepted and answered
    after it (recorded in `make bench`: 7 counted of the 11 the API had accepted, a first pace of 12.6
    calls/s); and the API may take a call sent a millisecond after the 429's before it (judged in the
    order sent: 4 counted). Nine calls answered before the 429, one sent before it and answered after,
    one sent after it and answered before: 11 in the 0.51 s since the first was sent, 0.9 x 11 / 0.51 =
    19.4 calls/s."""
    supervisor, process = supervised
    start = time.monotonic() - 10.0
    process(0, start + 0.5).observe(THROTTLED)   # sent at start + 0.49
    for n in range(9):
        process(1, start + n * 0.04).observe(ACCEPTED)
    process(1, start + 0.6).observe(RequestOutcome("uploadurl", 200, 0.15, None))      # sent at start + 0.45
    process(1, start + 0.497).observe(RequestOutcome("uploadurl", 200, 0.002, None))   # sent at start + 0.495
    supervisor._receive(timeout=5)
    assert supervisor.pacer.rate == pytest.approx(0.9 * 11 / 0.51), supervisor.pacer.rate
