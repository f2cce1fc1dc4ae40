"""Backoff delays: bounded, exponential, jittered."""

from __future__ import annotations

import random

import pytest

from watcher.cloud.backoff import Backoff


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
