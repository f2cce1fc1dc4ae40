"""What an answer of the API or of a presigned PUT means: the error of `watcher.errors` it becomes.

An API answer of 429, 408 or 5xx is transient (Retry-After kept); 401 and 403 are `AuthError`; a 404
on an application's endpoint is `_NotFound` until the client confirms whether the application exists;
`POST .../runs` alone is refused (`RejectedError`: 400, 409, 413, 422); anything else is transient and
not repeated at once. A presigned PUT's failure is S3's (`s3error`).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from watcher.cloud import s3error
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    RejectedError,
    TransientError,
    UncertainError,
    UploadFailed,
)

PUT = "put"   # the endpoint name of presigned uploads in request outcomes (`RequestOutcome.endpoint`)
# Refusals of `POST .../runs` that fail the folder (a 404 too, once the application is confirmed).
REFUSED = (400, 409, 413, 422)


class NotFound(ApiError):
    """A 404 on an application's endpoint, before `_app_call` confirms what it means (never raised further)."""


def retryable(err: ApiError) -> bool:
    """Worth repeating the same request at once: the network failed, or the API answered 408, 429 or 5xx."""
    if not isinstance(err, TransientError) or isinstance(err, UncertainError | UploadFailed):
        return False
    return err.status is None or err.status in (408, 429) or err.status >= 500


def status_error(endpoint: str, resp: httpx.Response, app: str | None,
                  uncertain_after_send: bool) -> ApiError | None:
    status = resp.status_code
    if 200 <= status < 300:
        return None
    if endpoint == PUT:
        return s3error.put_error(status, resp.content, _retry_after(resp))
    message = f"{endpoint}: HTTP {status}: {_api_message(resp)}"
    if status == 429:
        return TransientError(message, status=status, retry_after=_retry_after(resp))
    if status == 408 or status >= 500:
        if uncertain_after_send:
            return UncertainError(message, status=status)
        return TransientError(message, status=status, retry_after=_retry_after(resp))
    if status in (401, 403):
        return AuthError(f"API key rejected (HTTP {status}): {_api_message(resp)}", status=status)
    if status == 404 and app is not None:
        return ApplicationNotFound(app) if endpoint == "get_application" else NotFound(message, status=404)
    if endpoint == "create_run" and status in REFUSED:
        return RejectedError(message, status=status)
    # Anything else (another 4xx, a 3xx: redirects are not followed) refuses no folder, and the same
    # request is not repeated at once: the folder is tried again later.
    return TransientError(message, status=status)


def _api_message(resp: httpx.Response) -> str:
    try:
        resp.read()
        data = resp.json()
    except (ValueError, httpx.HTTPError):
        return resp.text[:300].strip() or resp.reason_phrase
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])[:500]
    return json.dumps(data)[:300]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def json_object(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise TransientError(f"unexpected non-JSON response (HTTP {resp.status_code})") from None
    if not isinstance(data, dict):
        raise TransientError(f"unexpected JSON response shape (HTTP {resp.status_code})")
    return data
