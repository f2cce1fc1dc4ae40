"""Fault injection for the emulator: what can go wrong, and deciding per request whether it does.

`Faults` is the configuration (plain data, changed at runtime). `FaultInjector` owns the current
`Faults`, the one random generator and the queues of one-shot faults; `decide(endpoint)` is called
once per API or upload request and returns a `Decision` the HTTP layer carries out:

    1. sleep `latency`                     (random faults' endpoint filter applies)
    2. `before`: answer a status or reset the connection without processing the request
    3. process the request
    4. `after`: discard the real answer and send a status or reset the connection instead

One-shot faults (`fail_next`) win over random ones and ignore the endpoint filter. The `put`
endpoint's faults are answered the way S3 answers (s3errors.py): the `Injected.code` names the S3
error code of the XML body.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

# The endpoints faults can target; control endpoints (/_fake/*) are never faulted.
ENDPOINTS = frozenset({"get_application", "uploadurl", "put", "create_run", "list_runs", "get_run"})

_KNOWN = ", ".join(sorted(ENDPOINTS))
_ERROR_STATUSES = (500, 502, 503, 504)
_PUT_RATES = ("put_request_timeout_rate", "put_slow_down_rate", "put_signature_mismatch_rate")
_PUT_CODES = ("RequestTimeout", "SlowDown", "SignatureDoesNotMatch")
_PUT_STATUSES = (400, 503, 403)
_RATES = ("error_rate", "throttle_rate", "reset_rate", "reset_after_rate", *_PUT_RATES)
_NON_NEGATIVE = ("latency_seconds", "throttle_retry_after", "post_delay_seconds", "list_lag_seconds")


@dataclass
class Faults:
    """What the emulator does wrong; every default means "nothing".

    Rates are fractions of eligible requests: those of `endpoints` (None = all) for latency,
    `reset_rate`, `error_rate`, `throttle_rate` and `reset_after_rate`; every presigned PUT for the
    `put_*` rates, which name their endpoint themselves. One random draw decides, in this order of
    precedence: `reset_rate`, `error_rate`, `throttle_rate`, then (PUTs only)
    `put_request_timeout_rate`, `put_slow_down_rate`, `put_signature_mismatch_rate`; so each is
    exactly the fraction it names as long as they sum to at most 1 (beyond that, later ones get what
    is left). `reset_after_rate` is drawn separately, for requests none of those hit.

    On PUTs the answers are S3's: `error_rate` gives 500 `InternalError`, 503 `SlowDown`, or 502/504
    with a gateway's HTML page; `throttle_rate` gives 503 `SlowDown` (S3 never answers 429);
    `put_request_timeout_rate` 400 `RequestTimeout`, `put_slow_down_rate` 503 `SlowDown`,
    `put_signature_mismatch_rate` 403 `SignatureDoesNotMatch` (as if a proxy rewrote the request).
    None of them stores the body. `url_lifetime_seconds` may be zero or negative to hand out URLs that
    are already expired.
    """

    latency_seconds: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    throttle_retry_after: float = 1.0
    reset_rate: float = 0.0
    reset_after_rate: float = 0.0
    url_lifetime_seconds: float = 900.0
    post_delay_seconds: float = 0.0
    list_lag_seconds: float = 0.0
    put_request_timeout_rate: float = 0.0
    put_slow_down_rate: float = 0.0
    put_signature_mismatch_rate: float = 0.0
    endpoints: frozenset[str] | None = None
    seed: int = 0


def checked_changes(changes: Mapping[str, object]) -> dict[str, object]:
    """Validate and normalize changes to `Faults` fields (from Python or from JSON).

    Numbers become floats (`seed` an int), `endpoints` a frozenset of known endpoint names or None.
    Raises ValueError naming the first offending field.
    """
    known = {f.name for f in dataclasses.fields(Faults)}
    out: dict[str, object] = {}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"unknown fault field {name!r}; known: {', '.join(sorted(known))}")
        if name == "endpoints":
            out[name] = _endpoints(value)
        elif name == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("seed must be an integer")
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number")
            number = float(value)
            if name in _RATES and not 0.0 <= number <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
            if name in _NON_NEGATIVE and number < 0:
                raise ValueError(f"{name} must not be negative")
            out[name] = number
    return out


def _endpoints(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise TypeError("endpoints must be a collection of endpoint names or null")
    names = frozenset(value)
    unknown = {str(n) for n in names} - ENDPOINTS
    if unknown:
        raise ValueError(f"unknown endpoint(s) {', '.join(sorted(unknown))}; known: {_KNOWN}")
    return frozenset(str(n) for n in names)


def _apply(base: Faults, changes: Mapping[str, object]) -> Faults:
    return dataclasses.replace(base, **checked_changes(changes))  # type: ignore[arg-type]


def to_json(faults: Faults) -> dict[str, object]:
    """`faults` as a JSON-ready dict (endpoints as a sorted list or null)."""
    data = dataclasses.asdict(faults)
    data["endpoints"] = None if faults.endpoints is None else sorted(faults.endpoints)
    return data


@dataclass(frozen=True)
class Injected:
    """An injected outcome: answer `status` (with `Retry-After` when set), or reset when status is None.

    `code`: the S3 error code of a PUT's XML body (None: the default for the status, see s3errors.py).
    """

    status: int | None
    retry_after: float | None = None
    code: str | None = None


@dataclass(frozen=True)
class Decision:
    """What to do to one request; see the module docstring for the order."""

    latency: float = 0.0
    before: Injected | None = None
    after: Injected | None = None


_NOTHING = Decision()


class FaultInjector:
    """Thread-safe holder of the current faults, the random generator and the one-shot queues."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        # Validate the initial faults like any change, and copy them so the caller's object is not shared.
        self._faults = _apply(Faults(), dataclasses.asdict(faults) if faults is not None else {})
        self._rng = random.Random(self._faults.seed)
        self._one_shots: dict[str, deque[tuple[Injected, bool]]] = {}
        self._throttled = 0

    @property
    def current(self) -> Faults:
        """A copy of the faults in force (changing it changes nothing)."""
        with self._lock:
            return dataclasses.replace(self._faults)

    def update(self, changes: Mapping[str, object]) -> Faults:
        """Apply `changes` atomically (see `checked_changes`); a new `seed` restarts the random sequence."""
        checked = checked_changes(changes)  # validate outside the lock
        with self._lock:
            self._faults = _apply(self._faults, checked)
            if "seed" in checked:
                self._rng = random.Random(self._faults.seed)
            return dataclasses.replace(self._faults)

    def fail_next(
        self,
        endpoint: str,
        status: int | None = None,
        *,
        after_processing: bool = False,
        count: int = 1,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        """Queue `count` one-shot faults for `endpoint` (status None = reset); ValueError on bad input.

        `code` (put only) names the S3 error code of the answer's XML body.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {_KNOWN}")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code (100-599) or None for a reset")
        if count < 1:
            raise ValueError("count must be at least 1")
        if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
            raise ValueError("retry_after must be a non-negative number")
        if code is not None:
            if endpoint != "put" or status is None:
                raise ValueError("code names the S3 error of a put answer: it needs endpoint put and a status")
            if not isinstance(code, str) or not code.isascii() or not code.isalnum():
                raise ValueError("code must be an S3 error code such as RequestTimeout")
        shot = (Injected(status, retry_after, code), after_processing)
        with self._lock:
            self._one_shots.setdefault(endpoint, deque()).extend([shot] * count)

    def decide(self, endpoint: str) -> Decision:
        """Draw the faults for one request to `endpoint`, consuming a one-shot fault if one is queued."""
        with self._lock:
            faults = self._faults
            eligible = faults.endpoints is None or endpoint in faults.endpoints
            latency = faults.latency_seconds if eligible else 0.0
            queue = self._one_shots.get(endpoint)
            if queue:
                injected, after_processing = queue.popleft()
                if after_processing:
                    return Decision(latency, None, injected)
                return Decision(latency, injected, None)
            put_rated = endpoint == "put" and any(getattr(faults, rate) > 0 for rate in _PUT_RATES)
            if not eligible and not put_rated:
                return _NOTHING
            before = self._draw_before(faults, endpoint, eligible)
            after = None
            if eligible and before is None and faults.reset_after_rate > 0:
                after = Injected(None) if self._rng.random() < faults.reset_after_rate else None
            if latency == 0.0 and before is None and after is None:
                return _NOTHING
            return Decision(latency, before, after)

    def _draw_before(self, faults: Faults, endpoint: str, eligible: bool) -> Injected | None:
        draw = self._rng.random()
        threshold = 0.0
        if eligible:
            threshold += faults.reset_rate
            if draw < threshold:
                return Injected(None)
            threshold += faults.error_rate
            if draw < threshold:
                return Injected(self._rng.choice(_ERROR_STATUSES))
            threshold += faults.throttle_rate
            if draw < threshold:
                if endpoint == "put":
                    return Injected(503, None, "SlowDown")  # S3 throttles with 503 SlowDown, never 429
                # Alternate with and without Retry-After so clients exercise both of their paths.
                self._throttled += 1
                retry_after = faults.throttle_retry_after if self._throttled % 2 == 1 else None
                return Injected(429, retry_after)
        if endpoint == "put":
            for rate, status, code in zip(_PUT_RATES, _PUT_STATUSES, _PUT_CODES, strict=True):
                threshold += getattr(faults, rate)
                if draw < threshold:
                    return Injected(status, None, code)
        return None
