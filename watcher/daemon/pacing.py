"""How fast API calls may go: a token bucket whose rate adapts to the API's 429s (AIMD), one per daemon.

Limiting folders in flight cannot keep under a rate limit when a folder takes a few milliseconds: the
API key's rate is what the API limits, so the rate is what is paced. Every API call (requests to `/v1`,
look-ups included; presigned PUTs go to the storage and are never paced) takes a token first. There is
one bucket for the daemon, shared by all applications (the limit's scope is undocumented, so it is taken
to be the key's, as the gate's Retry-After hold is).

- **Unlimited** at first: no bucket, nothing waits, until the API answers 429.
- **Decrease**, on a 429 to a call sent after the last decrease (the 429s of calls already in flight
  then are the same event), at most once per `window`. The first from unlimited: to `decrease_ratio`
  times the accepted rate (calls answered other than 429) measured over the last `window`, since the
  first call and over at least `min_span` (a rough estimate: the burst the API let through is in it).
  Afterwards: to the rate the API *sustained* (less `margin`, for timing noise; never up). A 429 says
  that the API's token bucket is empty; between two of them it accepted its rate times the time
  between, hold included (its bucket refilled during the hold), less what its bucket could not hold
  then; and over any span that ends at a 429 it accepted at most what its bucket held at the span's
  start plus its rate times the span. So its rate is at least the calls accepted since the last
  decrease's 429 over the time since, and at least, over each span of at least `min_span` since then,
  the calls accepted minus the burst (`burst_seen`: the calls accepted in the `window` before the
  first 429, which a full bucket let through) over the span; the most either says is the estimate, a
  lower bound, which is the limit itself when the daemon sent faster than the limit since the span
  began. Decreasing from the accepted rate instead read the burst the API let through after each hold
  as rate: at 30 calls/s with a burst of 10, three 429s in a row (34.2, 30.6, then 27.9 calls/s), each
  holding every call for a second.
- **Increase**, at the end of each `window` without a decrease, or a Retry-After hold other than the
  last decrease's, in which a call had to wait for a token (evidence that the rate binds; a 429 that
  lowered nothing does not stop it, but its hold does: a 429 answered late held every call again, and
  the slow start doubled twice meanwhile): by `start_growth` times the rate after the first decrease
  from unlimited, until the next decrease (a slow start: the first estimate is rough); afterwards by a
  step times the rate that doubles every `probe_doubling` rises (probing). After a decrease while
  probing the step starts at `probe_growth`: the estimate is at the limit, so probing finds it again
  within half a minute, and 429s stay rare. After the decrease that ends the slow start it starts at
  `probe_share` of the leeway the estimate left, if more: the slow start's last step jumped from under
  the limit to far above it, the API drained its bucket in a fraction of a second, and the estimate may
  be short by up to the burst over that time (in `make bench`, 25 calls/s from a span of 0.86 s against
  a limit of 30, which probing by 0.2% took 40 s to make up).
- **Never below** `floor_share` of the highest rate the API accepted between two decreases' 429s since
  pacing began (nor below `floor`): 429s that come whatever the rate (one call in ten, say) would
  otherwise push it down window after window; a real limit lower than that still has its Retry-After
  holds.
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

from watcher.cloud.client import RETRY_AFTER_CAP, RequestOutcome
from watcher.cloud.statuses import PUT

log = structlog.get_logger("watcher.daemon.pacing")

THROTTLED = 429
EPSILON = 1e-9


@dataclass(frozen=True)
class Settings:
    window: float = 1.0          # seconds: the accepted rate's span, and how often the rate may rise
    min_span: float = 0.5        # the accepted and sustained rates are measured over at least this long
    decrease_ratio: float = 0.9  # the first decrease from unlimited: this times the accepted rate
    margin: float = 0.02         # afterwards, this share below the rate the API sustained (timing noise)
    start_growth: float = 1.0    # per window (doubling), after the first decrease from unlimited (slow start)
    probe_growth: float = 0.002  # per window, afterwards, at least ...
    probe_share: float = 0.0625  # ... or this share of the last estimate's leeway (see `sustained`)
    probe_doubling: float = 20.0  # ... a step that doubles every this many rises
    quiet: float = 120.0         # seconds without a 429: unlimited again
    burst: float = 0.1           # seconds of tokens the bucket holds (at least one token)
    floor: float = 1.0           # calls per second, the lowest rate
    floor_share: float = 0.25    # ... and never below this share of the highest rate accepted between 429s
    history: int = 10_000        # accepted calls remembered for `sustained` (their count is kept whole)


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
        self.decrease_hold = float("-inf")  # ... as it was at the last decrease
        self.throttled_at = float("-inf")   # the last 429
        self.first_seen: float | None = None   # the first answer since unlimited
        self.best = 0.0              # the highest rate accepted between two decreases' 429s since unlimited
        self.window_ends = 0.0
        self.waited = False          # a call waited for a token during this window
        self.changes = 0             # how many times the rate moved (for tests)
        self.probes = 0              # rises since the last decrease, while probing
        self.step = 0.0              # ... their first step (`probe_growth`, more after a loose estimate)
        self.leeway = 0.0            # how far above the last decrease's estimate the limit may be (`sustained`)
        self.news: str | None = None  # how the rate last moved, until `Pacing` logs it
        self.burst_ends: float | None = None     # when the first 429 since unlimited was sent
        self.burst_sent: deque[float] = deque()  # when the calls accepted before it were sent, for `window`
        self.event_at: float | None = None       # when the last decrease's 429 was sent
        self.count_since = 0                     # how many accepted calls were sent after it
        self.sent_since: deque[float] = deque(maxlen=self.settings.history)   # ... and when

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
        sent = now - seconds
        if self.first_seen is None:
            self.first_seen = sent
        if status != THROTTLED:
            if status is not None:
                self.accepted.append(now)
                self._forget(now)
                self._count(sent)
            self.tick(now)
            return
        measured = self.accepted_rate(now)
        self.throttled_at = now
        if retry_after is not None:
            self.held_until = max(self.held_until, now + min(retry_after, RETRY_AFTER_CAP))
        if self.burst_ends is None:
            self.burst_ends = sent
        if sent < self.decreased_at or now < self.decreased_at + self.settings.window:
            self.tick(now)
            return
        s = self.settings
        first = self.rate is None
        if first or self.rate is None:
            rate = s.decrease_ratio * measured
        else:
            self.best = max(self.best, self.between(sent))
            estimate, self.leeway = self.sustained(sent)
            rate = min(self.rate, (1.0 - s.margin) * estimate)
        self.rate = max(s.floor, s.floor_share * self.best, rate)
        ended_start = self.starting and not first
        self.step = max(s.probe_growth, s.probe_share * self.leeway / self.rate) if ended_start else s.probe_growth
        self.starting = first
        self.probes = 0
        self.decreased_at = now
        self.decrease_hold = self.held_until
        self.event_at = sent
        self.sent_since.clear()
        self.count_since = 0
        self.tokens, self.stamp = 0.0, now
        self.window_ends = now + s.window
        self.waited = False
        self.changes += 1
        self.news = "decreased"

    def between(self, now: float) -> float:
        """The calls accepted between the last decrease's 429 and a 429 sent at `now`, per second (by the
        times they were sent)."""
        if self.event_at is None:
            return 0.0
        return self.count_since / max(EPSILON, now - self.event_at)

    def sustained(self, now: float) -> tuple[float, float]:
        """The lowest rate the API's limit can have, from the calls it accepted since the last decrease's
        429 until a 429 sent at `now`: over a span that ends at a 429 (its bucket empty), it accepted at
        most what its bucket held at the span's start (none at the last decrease's 429, at most
        `burst_seen` at any time) plus its rate times the span (a hold in the span included). The most
        any span says, over spans of at least `min_span` (the send times are a thread's, a few
        milliseconds off the API's); and its leeway, calls/s: the bound is the limit itself only if the
        API's bucket held all of `burst_seen` at the span's start and the daemon kept it empty since, so
        the limit may be up to that burst over the span higher (the probing then starts with a share of
        it: 25 calls/s from a span of 0.86 s against a limit of 30)."""
        rate = self.between(now)
        burst = self.burst_seen
        span = now - self.event_at if self.event_at is not None else self.settings.min_span
        sent = sorted(t for t in self.sent_since if t <= now)
        for i, t in enumerate(sent):   # the calls sent after `t`: len(sent) - i - 1
            if now - t >= self.settings.min_span:
                over = (len(sent) - i - 1 - burst) / (now - t)
                if over > rate:
                    rate, span = over, now - t
        return rate, burst / max(span, EPSILON)

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
            self.burst_ends, self.event_at, self.count_since = None, None, 0
            self.burst_sent.clear()
            self.sent_since.clear()
            self.changes += 1
            self.news = "unlimited"
            return
        start = self.window_ends - s.window
        # A window with a decrease in it says nothing of the rate, nor one with a hold other than the
        # decrease's own (calls held are not sent: a 429 answered late held them for more than a window
        # after the decrease's hold, and the slow start doubled twice meanwhile).
        if self.waited and self.decreased_at <= start and self.held_until <= max(start, self.decrease_hold):
            self._refill(now)
            if self.starting:
                self.rate *= 1.0 + s.start_growth
            else:
                self.rate *= 1.0 + self.step * 2 ** (self.probes / s.probe_doubling)
                self.probes += 1
            self.changes += 1
            self.news = "increased"
        self.window_ends = now + s.window
        self.waited = False

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        capacity = max(1.0, self.rate * self.settings.burst)
        self.tokens = min(capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def _count(self, sent: float) -> None:
        """An accepted call, sent at `sent`: towards the burst (the calls sent within `window` before the
        first 429 since unlimited) and the calls accepted since the last decrease's 429."""
        if self.burst_ends is None or sent <= self.burst_ends:
            self.burst_sent.append(sent)
            start = (self.burst_ends if self.burst_ends is not None else sent) - self.settings.window
            while self.burst_sent and self.burst_sent[0] < start:
                self.burst_sent.popleft()
        if self.event_at is not None and sent > self.event_at:
            self.count_since += 1
            self.sent_since.append(sent)

    @property
    def burst_seen(self) -> int:
        """The most the API's bucket is taken to hold: the calls it accepted that were sent within `window`
        before the first 429 since unlimited (what a full bucket let through, and what it refilled
        meanwhile: more than it holds, unless another client of the key was using it up), until that
        429 the calls of the last `window`."""
        if self.burst_ends is None:
            return len(self.burst_sent)
        start = self.burst_ends - self.settings.window
        return sum(1 for t in self.burst_sent if start <= t <= self.burst_ends)

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
        log_change(news, rate)
        return wait

    def observe(self, outcome: RequestOutcome) -> None:
        """One request's outcome (the client's observer); PUTs are not paced and say nothing."""
        if outcome.endpoint == PUT:
            return
        with self._lock:
            self._pacer.observe(self.clock(), status=outcome.status, seconds=outcome.seconds,
                                retry_after=outcome.retry_after)
            news, rate = self._news()
        log_change(news, rate, outcome.endpoint)

    def rate(self) -> float | None:
        """API calls per second allowed now; None when unlimited."""
        with self._lock:
            self._pacer.tick(self.clock())
            news, rate = self._news()
        log_change(news, rate)
        return rate

    def _news(self) -> tuple[str | None, float | None]:
        news, self._pacer.news = self._pacer.news, None
        return news, self._pacer.rate


def log_change(news: str | None, rate: float | None, endpoint: str | None = None) -> None:
    """Log how the rate moved (`Pacer.news`): a decrease or the return to unlimited at info, a rise at debug."""
    if news == "decreased":
        log.info("api_pacing", rate=round(rate or 0.0, 2), reason="throttled", endpoint=endpoint,
                 hint="the API answered 429: API calls are paced below the rate it accepted")
    elif news == "unlimited":
        log.info("api_pacing", rate=None, reason="quiet", hint="no 429 for a while: API calls are not paced")
    elif news == "increased":
        log.debug("api_pacing", rate=round(rate or 0.0, 2), reason="probing")
