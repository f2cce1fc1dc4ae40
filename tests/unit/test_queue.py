"""WorkQueue: each folder once, in ready-time order, never to two workers at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watcher.daemon.queue import WorkQueue

A, B, C = Path("/runs/a"), Path("/runs/b"), Path("/runs/c")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(q: WorkQueue) -> list[Path]:
    out = []
    while (key := q.pop_ready()) is not None:
        out.append(key)
    return out


def test_keys_come_out_in_order_of_their_ready_time() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A, at=1030)
    q.put(B, at=1010)
    q.put(C, at=1020)

    assert q.pop_ready() is None
    clock.now = 1020
    assert drain(q) == [B, C]
    clock.now = 1030
    assert drain(q) == [A]


def test_put_without_a_time_is_ready_now() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)

    assert q.next_ready_at() == 1000.0
    assert q.ready_count() == 1
    assert q.pop_ready() == A


def test_a_key_is_queued_once_with_the_earlier_of_its_times() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A, at=1050)
    q.put(A, at=1020)
    q.put(A, at=1080)

    assert len(q) == 1
    assert q.snapshot() == {A: 1020}
    clock.now = 1020
    assert drain(q) == [A]  # the superseded entry at 1050 is not handed out
    clock.now = 1100
    assert q.pop_ready() is None


def test_a_key_put_while_in_flight_is_held_back_until_done() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)
    assert q.pop_ready() == A

    q.put(A)

    assert q.in_flight() == {A}
    assert q.pop_ready() is None  # never to a second worker while the first works on it
    q.done(A)
    assert q.in_flight() == set()
    assert q.pop_ready() == A


def test_done_without_a_new_put_forgets_the_key() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)
    assert q.pop_ready() == A

    q.done(A)

    assert len(q) == 0
    clock.now += 10_000
    assert q.pop_ready() is None


def test_done_with_again_at_schedules_the_key_again() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)
    assert q.pop_ready() == A

    q.done(A, again_at=1060)

    assert q.pop_ready() is None
    assert q.next_ready_at() == 1060
    clock.now = 1060
    assert q.pop_ready() == A


def test_done_keeps_the_earlier_of_again_at_and_a_put_during_the_work() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)
    assert q.pop_ready() == A
    q.put(A, at=1005)

    q.done(A, again_at=1060)

    assert q.snapshot() == {A: 1005}


def test_discard_forgets_a_queued_key() -> None:
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.put(A)
    q.put(B)

    q.discard(A)

    assert drain(q) == [B]


def test_get_returns_none_after_its_timeout_when_nothing_is_ready() -> None:
    q = WorkQueue()
    q.put(A, at=time.time() + 3600)

    started = time.monotonic()
    assert q.get(timeout=0.05) is None
    assert time.monotonic() - started >= 0.05
    assert len(q) == 1


def test_get_waits_for_the_ready_time() -> None:
    q = WorkQueue(clock=time.monotonic)
    ready_at = time.monotonic() + 0.1
    q.put(A, at=ready_at)

    assert q.get(timeout=5) == A
    assert time.monotonic() >= ready_at


def test_a_blocked_get_is_woken_by_put() -> None:
    q = WorkQueue()
    got: list[Path | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    worker.start()

    q.put(B)

    worker.join(timeout=5)
    assert not worker.is_alive()
    assert got == [B]


def test_close_wakes_every_blocked_get_with_none() -> None:
    q = WorkQueue()
    got: list[Path | None] = []
    workers = [threading.Thread(target=lambda: got.append(q.get())) for _ in range(3)]
    for w in workers:
        w.start()

    q.close()

    for w in workers:
        w.join(timeout=5)
        assert not w.is_alive()
    assert got == [None, None, None]
    q.put(A)
    assert q.get(timeout=1) is None  # a closed queue hands out nothing


def test_several_workers_never_hold_the_same_key_at_once() -> None:
    q = WorkQueue()
    keys = [Path(f"/runs/{i}") for i in range(4)]
    lock = threading.Lock()
    active: set[Path] = set()
    overlaps: list[Path] = []
    handled: list[Path] = []
    target = 400

    def enter(key: Path) -> None:
        with lock:
            if key in active:
                overlaps.append(key)
            active.add(key)

    def leave(key: Path) -> None:
        with lock:
            active.discard(key)
            handled.append(key)
            finished = len(handled) >= target
        q.done(key)
        if finished:
            q.close()

    def work() -> None:
        while (key := q.get(timeout=5)) is not None:
            enter(key)
            q.put(key)  # a new event for the folder arrives while it is being worked on
            # While still holding `key`, take whatever else is ready: never `key` itself.
            other = q.pop_ready()
            if other is not None:
                enter(other)
                leave(other)
            leave(key)

    for k in keys:
        q.put(k)
    workers = [threading.Thread(target=work) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
        assert not w.is_alive()

    assert overlaps == []
    assert len(handled) >= target
    assert set(handled) == set(keys)
