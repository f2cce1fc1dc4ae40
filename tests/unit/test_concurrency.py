"""The adaptive concurrency limit (issue 13, item 2): Vector's AIMD rule, window by window on a stepped
clock, from request outcomes as the client reports them; and the slots the worker threads take."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import write_config

from watcher.cloud.client import RequestOutcome
from watcher.config import CONCURRENCY, Config, load_config
from watcher.daemon.concurrency import FIXED, INITIAL, MIB, Aimd, Concurrency, Settings, pushes_back
from watcher.errors import (
    ApiError,
    AuthError,
    RejectedError,
    TransientError,
    UncertainError,
    UploadExpired,
    UploadFailed,
    UploadRefused,
    UploadTooLarge,
)

WINDOW = Settings().min_window   # the API calls below take less: every window is this long
SLOW_START = Settings()          # the default: doubling until the first decrease


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ok(seconds: float = 0.02, endpoint: str = "uploadurl") -> RequestOutcome:
    return RequestOutcome(endpoint, 200, seconds, None)


def failed(status: int | None, error: type[ApiError] = TransientError, endpoint: str = "uploadurl") -> RequestOutcome:
    return RequestOutcome(endpoint, status, 0.02, error)


def upload(seconds: float, size: int) -> RequestOutcome:
    return RequestOutcome("put", 200, seconds, None, size=size)


class Driver:
    """An `Aimd` fed window by window: `window(outcomes, busy=...)` observes them with `busy` folders in
    flight (at the limit by default), then closes the window; returns the limit. Without `settings`, past
    slow start (one a window), which `SLOW_START` tests."""

    def __init__(self, ceiling: int = 32, settings: Settings | None = None) -> None:
        self.ceiling = ceiling
        self.aimd = Aimd(ceiling, settings or Settings(slow_start=False))
        self.now = 0.0
        self.aimd.observe(ok(), self.now, ceiling)   # the first outcome starts the first window,
        self.window(ok(), busy=0)                      # which only sets the baseline

    def window(self, *outcomes: RequestOutcome, busy: int | None = None, closing: RequestOutcome | None = None) -> int:
        self._set_busy(self.aimd.limit if busy is None else busy)
        for o in outcomes:
            self.aimd.observe(o, self.now, self.ceiling)
        self.now += max(WINDOW, self.aimd.api.past.mean if self.aimd.api.past else 0.0) + 0.001
        # the first outcome after the window's end closes it (and is the next window's first)
        self.aimd.observe(closing or ok(), self.now, self.ceiling)
        return self.aimd.limit

    def steady(self, seconds: float) -> int:
        """A window of API calls that all take `seconds` (its closing one too)."""
        return self.window(ok(seconds), ok(seconds), closing=ok(seconds))

    def _set_busy(self, n: int) -> None:
        while self.aimd.busy > 0:
            self.aimd.finished()
        self.aimd.reached = False
        for _ in range(n):
            self.aimd.started()

    def flat(self, windows: int, busy: int | None = None) -> int:
        for _ in range(windows):
            self.window(ok(), ok(), busy=busy)
        return self.aimd.limit


def test_the_limit_starts_at_the_old_worker_count_or_workers_if_lower() -> None:
    assert Aimd(32).limit == INITIAL == 8
    assert Aimd(3).limit == 3


def test_it_doubles_per_window_while_saturated_until_the_first_decrease() -> None:
    d = Driver(ceiling=64, settings=SLOW_START)
    assert d.flat(1) == 2 * INITIAL
    assert d.flat(1) == 4 * INITIAL
    assert d.window(ok(), failed(503)) == 28   # floor(32 * 0.9): slow start is over
    assert d.flat(3) == 31                     # one a window from now on


def test_slow_start_ends_when_latency_rises() -> None:
    d = Driver(ceiling=64, settings=SLOW_START)
    d.flat(3)                                  # a settled baseline of 20 ms calls
    limit = d.aimd.limit
    assert d.window(ok(0.5), ok(0.5)) < limit   # far beyond the deviation: a decrease, and slow start ends
    assert not d.aimd.slow_start


def test_it_grows_by_one_per_window_while_saturated_and_latency_stays_flat() -> None:
    d = Driver()
    start = d.aimd.limit
    assert d.flat(5) == start + 5


def test_it_does_not_grow_while_the_daemon_uses_a_core_and_does_not_shrink_for_it() -> None:
    """Python runs one thread at a time: at 0.9 of a core the daemon is the bottleneck, not the API."""
    d = Driver(settings=SLOW_START)
    limit, now = d.aimd.limit, d.now
    for _ in range(5):   # each window as long in CPU seconds as in wall seconds: a whole core
        d.aimd.observe(ok(), d.now, d.ceiling, cpu=d.now - now)
        d.now += WINDOW + 0.001
        d.aimd.observe(ok(), d.now, d.ceiling, cpu=d.now - now)
    assert d.aimd.limit == limit
    assert d.aimd.slow_start                    # nothing pushed back: slow start goes on afterwards
    assert d.window(ok(), ok()) == 2 * limit    # CPU 0 again (the driver's default): it doubles


def queueing(limit: int, waiting: float, base: float = 0.02) -> float:
    """The mean API-call time at which `waiting` of `limit` folders wait in the daemon (Vegas)."""
    return base / (1 - waiting / limit)


def test_folders_waiting_in_the_daemon_stop_its_growth_and_more_shrink_it_by_one() -> None:
    """The API's own time is 20 ms, but the daemon's queue grows with the limit: Vegas' estimate,
    limit * (1 - base / mean), keeps the limit between 3 and 6 waiting and takes one off above 6 (the
    ARC's rise test set aside here, so that only this rule speaks)."""
    d = Driver(ceiling=64, settings=Settings(rise_tolerance=10.0))
    limit = d.steady(0.02)
    assert limit == 2 * INITIAL                        # nothing waiting: slow start doubles
    for _ in range(5):
        assert d.steady(queueing(limit, 5.5)) == limit   # 5.5 waiting: kept (and slower: not flat)
    assert d.steady(queueing(limit, 4.5)) == limit       # faster than the moving average (the ARC
    assert d.aimd.slow_start                             # would double), but 4.5 waiting: kept
    assert d.steady(queueing(limit, 8)) == limit - 1     # 8 waiting: one less, and slow start is over
    assert not d.aimd.slow_start
    assert d.steady(0.02) == limit                       # nothing waiting: one more a window again


def test_the_base_follows_a_lasting_rise_of_the_api_s_time() -> None:
    """A slower API (20 -> 100 ms) first reads as the daemon's queue; once `base_windows` windows have
    passed, 100 ms is the base: nothing waits, and the limit grows again."""
    d = Driver(ceiling=64)
    grown = d.flat(3)
    d.aimd.observe(ok(0.100), d.now, d.ceiling)   # the first call of the next window
    assert d.aimd.queued() == pytest.approx(grown * 0.8)   # 1 - 20/100 of the limit
    for _ in range(Settings().base_windows):
        d.steady(0.100)
    assert d.aimd.limit < grown
    d.aimd.observe(ok(0.100), d.now, d.ceiling)
    assert d.aimd.queued() == 0.0
    limit = d.aimd.limit
    assert d.steady(0.099) == limit + 1


def test_it_does_not_grow_unless_the_limit_was_reached() -> None:
    """Folders in flight below the limit are no evidence that more would be used."""
    d = Driver()
    start = d.aimd.limit
    assert d.flat(10, busy=start - 1) == start


def test_it_never_grows_above_workers() -> None:
    d = Driver(ceiling=10)
    assert d.flat(50) == 10


def test_a_429_shrinks_it_multiplicatively() -> None:
    d = Driver()
    d.flat(12)
    assert d.aimd.limit == 20
    assert d.window(ok(), failed(429)) == 18   # floor(20 * 0.9)


@pytest.mark.parametrize("outcome", [
    failed(500), failed(502), failed(503), failed(504), failed(408),
    failed(None),                                     # a timeout or a reset
    failed(None, UncertainError, "create_run"),       # a POST cut off after sending
    failed(503, UncertainError, "create_run"),
    failed(None, UploadFailed, "put"),                # an upload reset
    failed(503, UploadFailed, "put"),                 # S3's SlowDown
], ids=lambda o: f"{o.endpoint}-{o.status}-{o.error.__name__ if o.error else ''}")
def test_server_errors_timeouts_and_resets_shrink_it(outcome: RequestOutcome) -> None:
    d = Driver()
    d.flat(12)
    assert pushes_back(outcome)
    assert d.window(ok(), outcome) == 18


@pytest.mark.parametrize("outcome", [
    failed(400, RejectedError, "create_run"), failed(404, RejectedError, "create_run"),
    failed(409, RejectedError, "create_run"), failed(422, RejectedError, "create_run"),
    failed(413, RejectedError, "create_run"), failed(401, AuthError), failed(403, AuthError),
    failed(404, TransientError, "list_runs"),
    failed(403, UploadExpired, "put"), failed(403, UploadRefused, "put"), failed(400, UploadTooLarge, "put"),
], ids=lambda o: f"{o.endpoint}-{o.status}-{o.error.__name__ if o.error else ''}")
def test_verdicts_never_shrink_it(outcome: RequestOutcome) -> None:
    d = Driver()
    d.flat(12)
    assert not pushes_back(outcome)
    assert d.window(ok(), outcome) == 21


def test_it_never_goes_below_one() -> None:
    d = Driver(ceiling=4)
    for _ in range(30):
        d.window(failed(429))
    assert d.aimd.limit == 1


def test_rising_api_latency_shrinks_it_and_slightly_noisy_latency_does_not() -> None:
    d = Driver()
    for i in range(12):   # noise: 20 ms, 24 ms, 20 ms, ...
        d.window(ok(0.020 + 0.004 * (i % 2)), ok(0.020 + 0.004 * (i % 2)))
    grown = d.aimd.limit
    assert grown > INITIAL
    assert d.window(ok(0.025), ok(0.026)) == grown   # above the mean, within the deviation: kept
    assert d.window(ok(0.200), ok(0.250)) == int(grown * 0.9)   # risen beyond it: shrunk


def test_jitter_within_a_tenth_of_a_steady_mean_does_not_shrink_it() -> None:
    """A steady 100 ms service has no deviation to speak of: 5% of jitter is not load, 20% is."""
    d = Driver(ceiling=64)
    for _ in range(20):   # long enough for the deviation of the jump from 20 ms to fade
        d.window(ok(0.100), ok(0.100))
    grown = d.aimd.limit
    assert d.window(ok(0.105), ok(0.105)) == grown
    assert d.window(ok(0.125), ok(0.125)) == int(grown * 0.9)


def test_a_large_upload_is_judged_per_mib_and_does_not_shrink_it() -> None:
    """Small PUTs at 20 ms each, then a 100 MiB PUT taking 1 s (10 ms per MiB): not slower, per MiB."""
    d = Driver()
    for _ in range(12):
        d.window(ok(), upload(0.02, 1000), upload(0.02, 200_000))
    grown = d.aimd.limit
    assert d.window(ok(), upload(1.0, 100 * MIB)) == grown + 1


def test_uploads_that_slow_down_per_mib_shrink_it() -> None:
    d = Driver()
    for _ in range(12):
        d.window(ok(), upload(0.02, 1000))
    grown = d.aimd.limit
    assert d.window(ok(), upload(2.0, 1000)) < grown


def test_a_reload_that_lowers_workers_lowers_the_limit_at_once() -> None:
    d = Driver()
    d.flat(12)
    d.aimd.clamp(5)
    assert d.aimd.limit == 5


def test_a_window_lasts_the_mean_api_call_time_when_longer_than_the_floor() -> None:
    aimd = Aimd(32)
    aimd.observe(ok(0.3), 0.0, 32)
    aimd.observe(ok(0.3), WINDOW + 0.001, 32)   # closes the first window: the past mean is now 0.3 s
    assert aimd.window_ends == pytest.approx(WINDOW + 0.001 + 0.3)


def test_its_modes_are_the_configuration_s() -> None:
    assert (CONCURRENCY[0], FIXED) == ("adaptive", "fixed")


# --- the slots the worker threads take ---------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    runs = tmp_path / "runs"
    runs.mkdir()
    return load_config(write_config(tmp_path / "config.yaml", "https://api.test", [(runs, "app")],
                                    tmp_path / "state", workers=12))


def take_from(folders: list[Path]) -> object:
    def take(timeout: float) -> Path | None:
        return folders.pop() if folders else None
    return take


def test_slots_stop_at_the_limit_and_a_released_one_is_taken_again(config: Config) -> None:
    c = Concurrency(lambda: config, clock=Clock())
    assert c.limit() == INITIAL
    held = [c.acquire(timeout=0) for _ in range(INITIAL)]
    assert all(held)
    assert not c.acquire(timeout=0.01)
    with c.slot(lambda _: None, timeout=0) as folder:   # none free: no folder, nothing taken
        assert folder is None
    assert c.snapshot() == {"mode": "adaptive", "limit": INITIAL, "workers": 12, "in_flight": 0}


def test_a_slot_hands_out_the_taken_folder_in_flight_until_the_block_ends(config: Config) -> None:
    c = Concurrency(lambda: config, clock=Clock())
    folders = [Path("/runs/a")]
    with c.slot(take_from(folders), timeout=0) as folder:   # type: ignore[arg-type]
        assert folder == Path("/runs/a")
        assert c.snapshot()["in_flight"] == 1
    assert c.snapshot()["in_flight"] == 0
    assert all(c.acquire(timeout=0) for _ in range(INITIAL))   # every slot was given back


def test_fixed_mode_is_exactly_workers_and_ignores_outcomes(config: Config) -> None:
    fixed = replace(config, concurrency="fixed")
    clock = Clock()
    c = Concurrency(lambda: fixed, clock=clock)
    for i in range(50):
        clock.now += 1
        c.observe(failed(429) if i % 2 else ok())
    assert c.limit() == 12
    assert all(c.acquire(timeout=0) for _ in range(12))
    assert not c.acquire(timeout=0)


def test_a_waiting_worker_gets_a_slot_when_the_limit_grows(config: Config) -> None:
    clock = Clock()
    c = Concurrency(lambda: config, clock=clock)
    assert all(c.acquire(timeout=0) for _ in range(INITIAL))
    for _ in range(INITIAL):   # every slot holds a folder: the limit is reached
        c._aimd.started()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(c.acquire(timeout=30)))
    waiter.start()
    c.observe(ok())
    for _ in range(2):   # the first window sets the baseline, the second grows the limit
        clock.now += 1
        c.observe(ok())
    waiter.join(timeout=30)
    assert got == [True]
    assert c.limit() == min(2 * INITIAL, config.workers)   # slow start: doubled, within workers


def test_close_releases_every_waiting_worker(config: Config) -> None:
    c = Concurrency(lambda: config, clock=Clock())
    assert all(c.acquire(timeout=0) for _ in range(INITIAL))
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(c.acquire(timeout=30)))
    waiter.start()
    c.close()
    waiter.join(timeout=30)
    assert got == [False]
