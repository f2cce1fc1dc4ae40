"""Backoff delays and the ApiGate: pausing, parking, the circuit breaker and probe scheduling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from watcher.retry import GLOBAL, ApiGate, Backoff


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


F1, F2, F3 = Path("/runs/1"), Path("/runs/2"), Path("/runs/3")


# --- Backoff -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(1, 40))
def test_each_delay_lies_between_half_and_all_of_the_capped_exponential(attempt: int) -> None:
    backoff = Backoff(0.5, 30.0)
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)

    delays = [backoff.delay(attempt, rng) for _ in range(50)]

    assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_the_jitter_spans_the_whole_range() -> None:
    backoff = Backoff(2.0, 100.0)

    assert backoff.delay(3, FixedRandom(0.0)) == 4.0
    assert backoff.delay(3, FixedRandom(1.0)) == 8.0
    assert backoff.delay(50, FixedRandom(1.0)) == 100.0
    assert backoff.delay(10_000, FixedRandom(0.0)) == 50.0  # huge attempt numbers do not overflow


def test_attempt_zero_or_less_uses_the_initial_delay() -> None:
    assert Backoff(4.0, 100.0).delay(0, FixedRandom(1.0)) == 4.0


# --- ApiGate: pauses and parking -----------------------------------------------------------------


def gate(clock: Clock, failure_threshold: int = 5) -> ApiGate:
    return ApiGate(clock, failure_threshold=failure_threshold, probe_backoff=Backoff(10.0, 100.0))


def test_an_open_gate_blocks_nothing_and_parks_nothing() -> None:
    g = gate(Clock())

    assert g.blocked("app") is None
    assert not g.is_paused()
    assert g.park("app", F1) is False
    assert g.opened(GLOBAL) == (None, set())


def test_a_global_pause_blocks_every_application_and_is_reported_once() -> None:
    g = gate(Clock())

    assert g.close(GLOBAL, "auth", "key rejected") is True
    assert g.close(GLOBAL, "auth", "again") is False

    for app in ("a", "b"):
        pause = g.blocked(app)
        assert pause is not None
        assert (pause.reason, pause.message, pause.since) == ("auth", "key rejected", 1000.0)
    assert g.is_paused()


def test_an_application_pause_blocks_only_that_application() -> None:
    g = gate(Clock())
    g.close("a", "application_not_found", "no app a")

    blocked = g.blocked("a")
    assert blocked is not None
    assert blocked.reason == "application_not_found"
    assert g.blocked("b") is None
    assert g.park("b", F2) is False


def test_opened_releases_the_folders_parked_behind_the_scope() -> None:
    g = gate(Clock())
    g.close("a", "application_not_found", "no app a")
    assert g.park("a", F1) is True
    assert g.park("a", F2) is True

    pause, parked = g.opened("a")

    assert pause is not None
    assert pause.reason == "application_not_found"
    assert parked == {F1, F2}
    assert g.blocked("a") is None
    assert g.opened("a") == (None, set())


def test_under_a_global_pause_folders_park_behind_the_global_scope() -> None:
    g = gate(Clock())
    g.close("a", "application_not_found", "no app a")
    g.close(GLOBAL, "unreachable", "down")
    assert g.park("a", F1) is True
    assert g.park("b", F2) is True

    assert g.opened("a")[1] == set()
    pause, parked = g.opened(GLOBAL)
    assert pause is not None
    assert parked == {F1, F2}
    assert not g.is_paused()


# --- ApiGate: circuit breaker --------------------------------------------------------------------


def test_the_breaker_trips_after_threshold_consecutive_transient_failures() -> None:
    g = gate(Clock(), failure_threshold=3)

    assert g.record_transient("timeout") is False
    assert g.record_transient("timeout") is False
    assert g.blocked("a") is None
    assert g.record_transient("refused") is True

    pause = g.blocked("a")
    assert pause is not None
    assert (pause.reason, pause.message) == ("unreachable", "refused")
    assert g.record_transient("still down") is False  # already open: reported once


def test_a_success_resets_the_failure_count() -> None:
    g = gate(Clock(), failure_threshold=3)
    g.record_transient("x")
    g.record_transient("x")

    g.record_success()

    assert g.record_transient("x") is False
    assert g.record_transient("x") is False
    assert not g.is_paused()
    assert g.record_transient("x") is True


def test_opening_the_gate_resets_the_failure_count() -> None:
    g = gate(Clock(), failure_threshold=2)
    g.record_transient("x")
    g.record_transient("x")
    assert g.is_paused()

    g.opened(GLOBAL)

    assert g.record_transient("x") is False
    assert not g.is_paused()


# --- ApiGate: probes -----------------------------------------------------------------------------


def test_a_probe_is_due_after_the_first_backoff_delay() -> None:
    clock = Clock(1000.0)
    g = gate(clock)
    g.close(GLOBAL, "unreachable", "down")
    probe_at = g.next_probe_at()
    assert probe_at is not None
    assert 1005.0 <= probe_at <= 1010.0  # Backoff(10, 100).delay(1) is within [5, 10]

    clock.now = 1004.999
    assert g.due_probes() == []
    clock.now = probe_at
    ((scope, pause),) = g.due_probes()
    assert scope == GLOBAL
    assert pause.probes == 0


def test_a_failed_probe_backs_off_further_and_updates_the_reason() -> None:
    clock = Clock(1000.0)
    g = gate(clock)
    g.close(GLOBAL, "unreachable", "down")
    clock.now = 1010.0

    g.still_closed(GLOBAL, "auth", "key rejected")

    pause = g.pauses()[GLOBAL]
    assert (pause.probes, pause.reason, pause.message) == (1, "auth", "key rejected")
    assert 1020.0 <= pause.probe_at <= 1030.0  # delay(2) is within [10, 20]
    assert g.due_probes() == []

    clock.now = 1030.0
    g.still_closed(GLOBAL, "auth", "key rejected")
    assert 1050.0 <= g.pauses()[GLOBAL].probe_at <= 1070.0  # delay(3) is within [20, 40]


def test_next_probe_at_is_the_earliest_of_all_pauses_and_none_when_open() -> None:
    clock = Clock(1000.0)
    g = gate(clock)
    assert g.next_probe_at() is None
    g.close("a", "application_not_found", "x")
    clock.now = 2000.0
    g.close("b", "application_not_found", "y")

    assert g.next_probe_at() == g.pauses()["a"].probe_at
    clock.now = 1500.0
    assert [scope for scope, _ in g.due_probes()] == ["a"]


def test_still_closed_on_an_open_scope_changes_nothing() -> None:
    g = gate(Clock())

    g.still_closed("a", "auth", "x")

    assert g.pauses() == {}
