"""Control endpoints under /_fake/, for driving an emulator that runs in another process.

No authentication and no faults. `GET /_fake/runs`, `GET /_fake/stats`, `POST /_fake/faults`
(a JSON object of `Faults` fields; answers the faults now in force), `POST /_fake/keys`
(`{"api_keys": [...]}`) and `POST /_fake/fail_next` (the arguments of `FakeCloud.fail_next`).
"""

from __future__ import annotations

import json
from typing import Any

from watcher.fakecloud.api import Api, Response, error_response, json_response
from watcher.fakecloud.body import BodyError, BodyReader
from watcher.fakecloud.faults import to_json
from watcher.fakecloud.store import all_runs_json

_MAX_BODY = 2**20


def handle_control(api: Api, method: str, path: str, body: BodyReader) -> Response:
    """Answer one /_fake/ request; 400 with the reason for a bad body, 404 for an unknown one."""
    try:
        payload = _read_json(body) if method == "POST" else None
        match (method, path):
            case ("GET", "/_fake/runs"):
                return json_response(all_runs_json(api.store.runs()))
            case ("GET", "/_fake/stats"):
                return json_response(stats(api))
            case ("POST", "/_fake/faults"):
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object of fault fields")
                return json_response(to_json(api.faults.update(payload)))
            case ("POST", "/_fake/keys"):
                keys = payload.get("api_keys") if isinstance(payload, dict) else None
                if not isinstance(keys, list):
                    raise ValueError('expected {"api_keys": [...]}')
                api.set_api_keys(keys)
                return json_response({"api_keys": len(keys)})  # a count: keys are never echoed
            case ("POST", "/_fake/fail_next"):
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object with endpoint, status, after_processing, count")
                _fail_next(api, payload)
                return json_response({})
    except (ValueError, TypeError, BodyError) as exc:
        return error_response(400, str(exc))
    return error_response(404, "no such control endpoint")


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


def _fail_next(api: Api, payload: dict[str, Any]) -> None:
    unknown = set(payload) - {"endpoint", "status", "after_processing", "count", "retry_after"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    status, count, retry_after = payload.get("status"), payload.get("count", 1), payload.get("retry_after")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise ValueError("status must be an integer or null")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("count must be an integer")
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, int | float)):
        raise ValueError("retry_after must be a number or null")
    api.faults.fail_next(
        str(payload.get("endpoint")),
        status,
        after_processing=bool(payload.get("after_processing", False)),
        count=count,
        retry_after=None if retry_after is None else float(retry_after),
    )
