"""How fast API calls may go: a token bucket whose rate adapts to the API's 429s (AIMD), one per daemon.

Limiting folders in flight cannot keep under a rate limit when a folder takes a few milliseconds: the
API key's rate is what the API limits, so the rate is what is paced. Every API call (requests to `/v1`,
look-ups included; presigned PUTs go to the storage and are never paced) takes a token first. There is
one bucket for the daemon, shared by all applications (the limit's scope is undocumented, so it is taken
to be the key's, as the gate's Retry-After hold is).

- **Unlimited** at first: no bucket, nothing waits, until the API answers 429.
- **Decrease**, on a 429 to a call sent after the last decrease (the 429s of calls already in flight
  then are the same event), at most once per `window`: the rate becomes `decrease_ratio` times the
  lower of the rate and the accepted rate (calls answered other than 429) measured over the last
  `window`, from the end of the last Retry-After hold and over at least `min_span` (so that the burst
  the API lets through at once is not read as a rate).
- **Increase**, at the end of each `window` without a decrease in which a call had to wait for a
  token (evidence that the rate binds; a 429 that lowered nothing does not stop it): by `start_growth`
  times the rate after the first decrease from unlimited, until the next decrease (a slow start: the
  first estimate is rough); afterwards by `probe_growth` times the rate (slow probing, so that 429s
  stay rare).
- **Never below** `floor_share` of the highest accepted rate measured at a decrease since pacing began
  (nor below `floor`): 429s that come whatever the rate (one call in ten, say) would otherwise push it
  down window after window; a real limit lower than that still has its Retry-After holds.
- **Unlimited again** after `quiet` seconds without a 429.

The bucket holds at most `burst` seconds of tokens (at least one). `Pacer` is the rule, pure: time is
passed in (tests step it), and `delay` only computes the wait; the waiting is the client's (its `hold`
hook, which `client.cancel` interrupts). `Pacing` makes it thread-safe and logs `api_pacing` once per
decrease and on the return to unlimited (increases, once a window at most, at debug). Its lock guards
only the pacer and is never held while logging or calling anything else.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from watcher.cloud.client import PUT, RETRY_AFTER_CAP, RequestOutcome

log = structlog.get_logger("watcher.daemon.pacing")

THROTTLED = 429
EPSILON = 1e-9


@dataclass(frozen=True)
class Settings:
    window: float = 1.0          # seconds: the accepted rate's span, and how often the rate may rise
    min_span: float = 0.5        # the accepted rate is measured over at least this long
    decrease_ratio: float = 0.9
    start_growth: float = 1.0    # per window (doubling), after the first decrease from unlimited (slow start)
    probe_growth: float = 0.005  # per window, afterwards
    quiet: float = 120.0         # seconds without a 429: unlimited again
    burst: float = 0.1           # seconds of tokens the bucket holds (at least one token)
    floor: float = 1.0           # calls per second, the lowest rate
    floor_share: float = 0.25    # ... and never below this share of the highest accepted rate measured


class Pacer:
    """The rate and the bucket. Not thread-safe: `Pacing` guards it. `rate` None is unlimited."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.rate: float | None = None
        self.starting = False        # after the first decrease from unlimited, until the next one
        self.tokens = 0.0
        self.stamp = 0.0             # when the tokens were counted
        self.accepted: deque[float] = deque()   # when API calls were answered other than 429, for `window`
        self.decreased_at = float("-inf")   # 429s to calls sent before this are the event already counted
        self.held_until = float("-inf")     # the last 429's Retry-After ends (the gate holds every call)
        self.throttled_at = float("-inf")   # the last 429
        self.first_seen: float | None = None   # the first answer since unlimited
        self.best = 0.0              # the highest accepted rate measured at a decrease since unlimited
        self.window_ends = 0.0
        self.waited = False          # a call waited for a token during this window
        self.changes = 0             # how many times the rate moved (for tests)
        self.news: str | None = None  # how the rate last moved, until `Pacing` logs it

    def delay(self, now: float) -> float:
        """Seconds to wait before an API call, 0 when it may go now (then it has taken a token)."""
        self.tick(now)
        if self.rate is None:
            return 0.0
        self._refill(now)
        if self.tokens >= 1.0 - EPSILON:   # a wait computed to the token may fall a rounding short of it
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        self.waited = True
        return (1.0 - self.tokens) / self.rate

    def observe(self, now: float, *, status: int | None, seconds: float, retry_after: float | None) -> None:
        """One API call's answer (`seconds` after it was sent); a 429 may lower the rate (`news`
        "decreased")."""
        if self.first_seen is None:
            self.first_seen = now - seconds
        if status != THROTTLED:
            if status is not None:
                self.accepted.append(now)
                self._forget(now)
            self.tick(now)
            return
        measured = self.accepted_rate(now)
        self.throttled_at = now
        if retry_after is not None:
            self.held_until = max(self.held_until, now + min(retry_after, RETRY_AFTER_CAP))
        if now - seconds < self.decreased_at or now < self.decreased_at + self.settings.window:
            self.tick(now)
            return
        s = self.settings
        first = self.rate is None
        self.best = max(self.best, measured)
        self.rate = max(s.floor, s.floor_share * self.best,
                        s.decrease_ratio * (measured if first or self.rate is None else min(self.rate, measured)))
        self.starting = first
        self.decreased_at = now
        self.tokens, self.stamp = 0.0, now
        self.window_ends = now + s.window
        self.waited = False
        self.changes += 1
        self.news = "decreased"

    def accepted_rate(self, now: float) -> float:
        """Calls answered other than 429 per second, over the last `window` since the first call and since
        the last hold ended (at least `min_span`)."""
        self._forget(now)
        s = self.settings
        since = max(now - s.window, self.first_seen if self.first_seen is not None else now,
                    self.held_until if self.held_until <= now else now - s.window)
        count = sum(1 for t in self.accepted if t > since)
        return count / max(s.min_span, now - since)

    def tick(self, now: float) -> None:
        """At the window's end the rate may rise (`news` "increased") or be unlimited again ("unlimited")."""
        s = self.settings
        if self.rate is None or now < self.window_ends:
            return
        if now - self.throttled_at >= s.quiet:
            self.rate, self.starting, self.first_seen, self.best = None, False, None, 0.0
            self.changes += 1
            self.news = "unlimited"
            return
        if self.waited and self.decreased_at <= self.window_ends - s.window:
            self._refill(now)
            self.rate *= 1.0 + (s.start_growth if self.starting else s.probe_growth)
            self.changes += 1
            self.news = "increased"
        self.window_ends = now + s.window
        self.waited = False

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        capacity = max(1.0, self.rate * self.settings.burst)
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def _forget(self, now: float) -> None:
        while self.accepted and self.accepted[0] <= now - self.settings.window:
            self.accepted.popleft()


class Pacing:
    """Thread-safe: the client asks `delay` before each API call (through its `hold`, after the gate's
    Retry-After hold), and every request's outcome is `observe`d."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, settings: Settings | None = None) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._pacer = Pacer(settings)

    def delay(self) -> float:
        """Seconds the next API call must wait (0: it may go, and has taken its token)."""
        with self._lock:
            wait = self._pacer.delay(self.clock())
            news, rate = self._news()
        self._log(news, rate)
        return wait

    def observe(self, outcome: RequestOutcome) -> None:
        """One request's outcome (the client's observer); PUTs are not paced and say nothing."""
        if outcome.endpoint == PUT:
            return
        with self._lock:
            self._pacer.observe(self.clock(), status=outcome.status, seconds=outcome.seconds,
                                retry_after=outcome.retry_after)
            news, rate = self._news()
        self._log(news, rate, outcome.endpoint)

    def rate(self) -> float | None:
        """API calls per second allowed now; None when unlimited."""
        with self._lock:
            self._pacer.tick(self.clock())
            news, rate = self._news()
        self._log(news, rate)
        return rate

    def _news(self) -> tuple[str | None, float | None]:
        news, self._pacer.news = self._pacer.news, None
        return news, self._pacer.rate

    @staticmethod
    def _log(news: str | None, rate: float | None, endpoint: str | None = None) -> None:
        if news == "decreased":
            log.info("api_pacing", rate=round(rate or 0.0, 2), reason="throttled", endpoint=endpoint,
                     hint="the API answered 429: API calls are paced below the rate it accepted")
        elif news == "unlimited":
            log.info("api_pacing", rate=None, reason="quiet", hint="no 429 for a while: API calls are not paced")
        elif news == "increased":
            log.debug("api_pacing", rate=round(rate or 0.0, 2), reason="probing")
