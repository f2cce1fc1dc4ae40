"""Control endpoints under /_fake/, for driving an emulator that runs in another process.

No authentication, no faults, no rate limit; bad bodies answer 400 with the reason:

    GET  /_fake/runs, /_fake/stats            what happened (`FakeCloud.runs`, `stats`)
    GET  /_fake/faults, POST /_fake/faults    the faults in force; change some `Faults` fields
    GET  /_fake/behaviour, POST ...behaviour  the behaviour in force; change some `Behaviour` fields
    POST /_fake/keys                          {"api_keys": [...]}
    POST /_fake/fail_next                     the arguments of `FakeCloud.fail_next`

`nextmv-watcher fake-cloud --help` documents them for users (watcher/cli/tools.py; a test keeps the
two in step).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from watcher.fakecloud import behaviour
from watcher.fakecloud.api import Api
from watcher.fakecloud.body import BodyError, BodyReader
from watcher.fakecloud.faults import to_json
from watcher.fakecloud.messages import Response, error_response, json_response
from watcher.fakecloud.store import all_runs_json

_MAX_BODY = 2**20
_FAIL_NEXT_FIELDS = ("endpoint", "status", "after_processing", "count", "retry_after", "code")


def handle_control(api: Api, method: str, path: str, body: BodyReader) -> Response:
    """Answer one /_fake/ request; 400 with the reason for a bad body, 404 for an unknown one."""
    action = _ACTIONS.get((method, path))
    try:
        payload = _read_json(body)
        if action is None:
            return error_response(404, "no such control endpoint")
        return json_response(action(api, payload))
    except (ValueError, TypeError, BodyError) as exc:
        return error_response(400, str(exc))


def stats(api: Api) -> dict[str, Any]:
    """The request log's counters plus the number of recorded runs and uploads."""
    data = api.log.stats()
    data["runs"] = api.store.run_count()
    data["uploads"] = api.store.upload_count()
    return data


def _read_json(body: BodyReader) -> object:
    raw = body.read(_MAX_BODY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise ValueError("the request body is not valid JSON") from None


def _object(payload: object, expected: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise TypeError(f"expected a JSON object: {expected}")
    return payload


def _runs(api: Api, payload: object) -> object:
    return all_runs_json(api.store.runs())


def _stats(api: Api, payload: object) -> object:
    return stats(api)


def _faults(api: Api, payload: object) -> object:
    return to_json(api.faults.update(_object(payload, "fields of Faults")))


def _get_faults(api: Api, payload: object) -> object:
    return to_json(api.faults.current)


def _behaviour(api: Api, payload: object) -> object:
    return behaviour.to_json(api.behaviours.update(_object(payload, "fields of Behaviour")))


def _get_behaviour(api: Api, payload: object) -> object:
    return behaviour.to_json(api.behaviours.current)


def _keys(api: Api, payload: object) -> object:
    keys = _object(payload, '{"api_keys": [...]}').get("api_keys")
    if not isinstance(keys, list):
        raise TypeError('expected {"api_keys": [...]}')
    api.set_api_keys(keys)
    return {"api_keys": len(keys)}  # a count: keys are never echoed


def _fail_next(api: Api, payload: object) -> object:
    fields = _object(payload, ", ".join(_FAIL_NEXT_FIELDS))
    unknown = set(fields) - set(_FAIL_NEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    status, count, retry_after = fields.get("status"), fields.get("count", 1), fields.get("retry_after")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise TypeError("status must be an integer or null")
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError("count must be an integer")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int | float)
    ):
        raise TypeError("retry_after must be a number or null")
    code = fields.get("code")
    if code is not None and not isinstance(code, str):
        raise TypeError("code must be a string or null")
    api.faults.fail_next(
        str(fields.get("endpoint")),
        status,
        after_processing=bool(fields.get("after_processing", False)),
        count=count,
        retry_after=None if retry_after is None else float(retry_after),
        code=code,
    )
    return {}


_ACTIONS: dict[tuple[str, str], Callable[[Api, object], object]] = {
    ("GET", "/_fake/runs"): _runs,
    ("GET", "/_fake/stats"): _stats,
    ("GET", "/_fake/faults"): _get_faults,
    ("POST", "/_fake/faults"): _faults,
    ("GET", "/_fake/behaviour"): _get_behaviour,
    ("POST", "/_fake/behaviour"): _behaviour,
    ("POST", "/_fake/keys"): _keys,
    ("POST", "/_fake/fail_next"): _fail_next,
}
