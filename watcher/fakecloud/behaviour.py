"""How the emulated service behaves where the real one is undocumented or limited (docs/protocol.md,
"What real services do beyond the happy path"): plain data, changed at runtime like the faults.

`Behaviour` defaults copy the real services as far as the evidence goes, so `FakeCloud()` behaves as
Nextmv most likely does; tests change a field to prove a client copes with the other possibility
(a list oldest first, limits that cut instead of refusing). `Behaviours` is the thread-safe holder.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

LIST_ORDERS = ("newest", "oldest")
OVER_LIMIT = ("refuse", "truncate")

Check = Callable[[str, object], object]


@dataclass(frozen=True)
class Behaviour:
    """The service's rules.

    - `list_order`: "newest" (newest run first, the default: what the run list most likely does) or
      "oldest". Paging stays contiguous either way while runs are created.
    - `max_name_length`, `max_description_length`: characters (code points, not bytes) that
      `POST .../runs` accepts; None = no limit. 128 and 256 because the SDK's `clone_run` cuts to
      those "if it exceeds that limit". `over_limit`: "refuse" (400 naming the field and the limit)
      or "truncate" (the run is created with the value cut, silently).
    - `instances`, `batch_experiments`: the known ids; None = any. `POST .../runs` naming another
      `instance_id` (other than "latest") or `batch_experiment_id` answers 404.
    - `max_upload_bytes`: the largest presigned PUT (declared Content-Length); beyond it 400
      `EntityTooLarge`. Nextmv documents 500 MB per uploaded file. None = no limit.
    - `rate_limit_per_second`, `rate_limit_burst`: a token bucket over API calls (/v1/...); a call
      without a token answers 429 with Retry-After. None = no limit.
    """

    list_order: str = "newest"
    max_name_length: int | None = 128
    max_description_length: int | None = 256
    over_limit: str = "refuse"
    instances: frozenset[str] | None = None
    batch_experiments: frozenset[str] | None = None
    max_upload_bytes: int | None = 500_000_000
    rate_limit_per_second: float | None = None
    rate_limit_burst: int = 10


FIELDS = tuple(f.name for f in dataclasses.fields(Behaviour))


def checked_behaviour(changes: Mapping[str, object]) -> dict[str, object]:
    """Validate and normalize changes to `Behaviour` fields (from Python or from JSON).

    Id collections become frozensets, the rate a float. Raises ValueError or TypeError naming the
    first offending field.
    """
    out: dict[str, object] = {}
    for name, value in changes.items():
        if name not in FIELDS:
            raise ValueError(f"unknown behaviour field {name!r}; known: {', '.join(FIELDS)}")
        out[name] = _CHECKS[name](name, value)
    return out


def _choice(options: tuple[str, ...]) -> Check:
    def check(name: str, value: object) -> str:
        if value not in options:
            raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")
        return str(value)
    return check


def _integer(minimum: int, optional: bool) -> Check:
    def check(name: str, value: object) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer{' or null' if optional else ''}")
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}")
        return value
    return check


def _ids(name: str, value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise TypeError(f"{name} must be a collection of ids or null")
    if any(not isinstance(item, str) or not item for item in value):
        raise ValueError(f"{name} must hold non-empty strings")
    return frozenset(value)


def _rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number or null")
    return float(value)


_CHECKS: dict[str, Check] = {
    "list_order": _choice(LIST_ORDERS),
    "max_name_length": _integer(1, optional=True),
    "max_description_length": _integer(1, optional=True),
    "over_limit": _choice(OVER_LIMIT),
    "instances": _ids,
    "batch_experiments": _ids,
    "max_upload_bytes": _integer(0, optional=True),
    "rate_limit_per_second": _rate,
    "rate_limit_burst": _integer(1, optional=False),
}


def to_json(behaviour: Behaviour) -> dict[str, object]:
    """`behaviour` as a JSON-ready dict (id sets as sorted lists or null)."""
    data = dataclasses.asdict(behaviour)
    for name in ("instances", "batch_experiments"):
        ids = getattr(behaviour, name)
        data[name] = None if ids is None else sorted(ids)
    return data


class Behaviours:
    """The behaviour in force; `update` validates and applies changes atomically."""

    def __init__(self, behaviour: Behaviour | None = None, changes: Mapping[str, object] | None = None) -> None:
        self._lock = threading.Lock()
        base = dataclasses.asdict(behaviour) if behaviour is not None else {}
        self._current = Behaviour(**checked_behaviour({**base, **(changes or {})}))  # type: ignore[arg-type]

    @property
    def current(self) -> Behaviour:
        """The behaviour in force (frozen: read it once per request)."""
        with self._lock:
            return self._current

    def update(self, changes: Mapping[str, object]) -> Behaviour:
        """Apply `changes` (see `checked_behaviour`); returns the behaviour now in force."""
        checked = checked_behaviour(changes)  # validate outside the lock
        with self._lock:
            self._current = dataclasses.replace(self._current, **checked)  # type: ignore[arg-type]
            return self._current
