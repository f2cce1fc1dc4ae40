"""The small JSON files of a run folder: `status.json` checked key by key, the others parsed within
their caps, and big documents handled one at a time.

`status.json` (at most 1 MiB) is an object with any of `STATUS_KEYS`; `parse_status` reports every
problem at once, each naming its key. metrics/statistics/assets (at most `files.max_json_bytes`) need
only be valid JSON (metrics an object). Parsing JSON costs 10-30 times its size in memory, so a
document above `BIG_JSON_BYTES` is read and parsed under a turn: one at a time in the process
(`json_turn`), or in the daemon when it has several processes (`turn_over` a lock they share), so that
workers at the cap together cannot multiply the peak. Pure: bytes in, values or `InvalidFolder` out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from watcher.errors import InvalidFolder

STATUS_MAX_BYTES = 1024 * 1024
STATUSES = ("succeeded", "failed")
_ID_KEYS = ("instance_id", "batch_experiment_id")
_STRING_KEYS = ("error", "name", "description", *_ID_KEYS)
STATUS_KEYS = ("status", "duration", *_STRING_KEYS, "options")
BIG_JSON_BYTES = 1 << 20
_BIG_JSON = threading.RLock()


Turn = Callable[[int], AbstractContextManager[None]]


def turn_over(exclusive: Callable[[], AbstractContextManager[None]]) -> Turn:
    """The turn for reading and parsing a JSON document of `size` bytes: a document above
    `BIG_JSON_BYTES` waits for `exclusive()` (one holder at a time; no other lock is taken inside)."""

    @contextmanager
    def turn(size: int) -> Iterator[None]:
        if size <= BIG_JSON_BYTES:
            yield
            return
        with exclusive():
            yield

    return turn


@contextmanager
def _in_process() -> Iterator[None]:
    with _BIG_JSON:
        yield


json_turn = turn_over(_in_process)   # one big document at a time in the whole process


def parse_json(data: bytes, name: str, folder: str) -> object:
    """Parse the JSON file `name` from its bytes (callers hold their turn: `json_turn` or a `turn_over`).

    Raises: `InvalidFolder` naming the file when it is not UTF-8 or not valid JSON (NaN and
    Infinity are not JSON)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidFolder(folder, f"{name}: not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise InvalidFolder(folder, f"{name}: invalid JSON ({e})") from None


def parse_status(data: bytes, name: str, folder: str) -> dict[str, Any]:
    """The settings in status.json's bytes. Raises `InvalidFolder` naming the file: invalid JSON, not an
    object, or every problem with its keys at once."""
    raw = parse_json(data, name, folder)
    if not isinstance(raw, dict):
        raise InvalidFolder(folder, f"{name}: must be a JSON object, got {_json_type(raw)}")
    problems = _status_problems(raw)
    if problems:
        raise InvalidFolder(folder, f"{name}: {'; '.join(problems)}")
    return raw


def _status_problems(raw: dict[str, Any]) -> list[str]:
    known = ", ".join(STATUS_KEYS)
    problems = [f'unknown key "{key}" (known: {known})' for key in raw if key not in STATUS_KEYS]
    if "status" in raw and raw["status"] not in STATUSES:
        problems.append('"status" must be "succeeded" or "failed"')
    duration = raw.get("duration", 0)
    if not isinstance(duration, int) or isinstance(duration, bool):
        problems.append('"duration" must be an integer number of milliseconds')
    elif duration < 0:
        problems.append('"duration" must be an integer number of milliseconds, not negative')
    for key in _STRING_KEYS:
        if key in raw and not isinstance(raw[key], str):
            problems.append(f'"{key}" must be a string')
        elif key in _ID_KEYS and raw.get(key) == "":
            problems.append(f'"{key}" must not be empty')
    options = raw.get("options", {})
    if not isinstance(options, dict):
        problems.append('"options" must be an object of strings to strings')
    else:
        problems += [f'"options.{k}" must be a string' for k, v in options.items() if not isinstance(v, str)]
    if "error" in raw and raw.get("status") == "succeeded":
        problems.append('"error" is only allowed when "status" is "failed"')
    return problems


def decide_status(settings: dict[str, Any], *, has_output: bool, folder: str) -> str:
    """status.json's status, else failed with an error, else succeeded iff an output exists."""
    status: str = settings.get("status") or (
        "failed" if "error" in settings else "succeeded" if has_output else "failed"
    )
    if status == "succeeded" and not has_output:
        raise InvalidFolder(folder, "status succeeded but no output")
    return status


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
