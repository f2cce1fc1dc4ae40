"""Validation of a `POST .../runs` body the way the real API judges it (docs/protocol.md, "Field rules").

Pure functions: the caller supplies `resolve`, which turns an upload id into its recorded content
or raises `ApiError`, so this module knows nothing about where uploads live.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

ALLOWED_TOP_LEVEL = frozenset(
    {"upload_id", "name", "description", "options", "configuration", "batch_experiment_id", "result"}
)
ALLOWED_RESULT = frozenset(
    {
        "status",
        "execution_duration",
        "output_upload_id",
        "error_upload_id",
        "error_message",
        "statistics_upload_id",
        "metrics_upload_id",
        "assets_upload_id",
    }
)
RESULT_UPLOAD_FIELDS = (
    "output_upload_id",
    "error_upload_id",
    "statistics_upload_id",
    "metrics_upload_id",
    "assets_upload_id",
)
FORMAT_TYPES = frozenset({"json", "multi-file", "text", "csv-archive"})
STATUSES = frozenset({"succeeded", "failed"})
LOGS_FIELD = "error_upload_id"


class ApiError(Exception):
    """The request is refused: answer `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def validate_run_body(body: object, resolve: Callable[[str, object], str]) -> dict[str, str]:
    """Check a run-creation body; return the artifacts it references as {field: upload_id}.

    Artifact fields are "input" (the top-level `upload_id`) and the `result.*_upload_id` keys.
    `resolve(field_path, value)` must return the upload id when `value` names an upload that has
    content, and raise `ApiError` otherwise. Raises `ApiError(400, ...)` naming the first bad field.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _no_unknown_keys(body, ALLOWED_TOP_LEVEL, "")
    if "upload_id" not in body:
        raise bad_request("upload_id is required: the input must be uploaded first")
    artifacts = {"input": resolve("upload_id", body["upload_id"])}
    for key in ("name", "description", "batch_experiment_id"):
        if key in body and not isinstance(body[key], str):
            raise bad_request(f"{key} must be a string")
    if "options" in body:
        _check_options(body["options"])
    if "configuration" in body:
        _check_configuration(body["configuration"])
    if "result" in body:
        artifacts.update(_check_result(body["result"], resolve))
    return artifacts


def _no_unknown_keys(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        names = ", ".join(prefix + key for key in unknown)
        raise bad_request(f"unknown field(s): {names}; allowed: {', '.join(sorted(allowed))}")


def _check_options(options: object) -> None:
    if not isinstance(options, dict):
        raise bad_request("options must be an object of strings to strings")
    for key, value in options.items():
        if not isinstance(value, str):
            raise bad_request(f"options.{key} must be a string, got {type(value).__name__}")


def _check_configuration(configuration: object) -> None:
    # Other configuration keys (execution class, secrets, queuing...) exist in the real API: not judged here.
    if not isinstance(configuration, dict):
        raise bad_request("configuration must be an object")
    if "format" not in configuration:
        return
    fmt = configuration["format"]
    if not isinstance(fmt, dict):
        raise bad_request("configuration.format must be an object")
    for side in ("input", "output"):
        if side not in fmt:
            continue
        spec = fmt[side]
        if not isinstance(spec, dict):
            raise bad_request(f"configuration.format.{side} must be an object")
        kind = spec.get("type")
        if kind not in FORMAT_TYPES:
            allowed = ", ".join(sorted(FORMAT_TYPES))
            raise bad_request(f"configuration.format.{side}.type must be one of {allowed}, got {kind!r}")


def _check_result(result: object, resolve: Callable[[str, object], str]) -> dict[str, str]:
    if not isinstance(result, dict):
        raise bad_request("result must be an object")
    _no_unknown_keys(result, ALLOWED_RESULT, "result.")
    status = result.get("status")
    if status not in STATUSES:
        raise bad_request(f"result.status must be 'succeeded' or 'failed', got {status!r}")
    if "error_message" in result:
        if status == "succeeded":
            raise bad_request("result.error_message is allowed only when result.status is 'failed'")
        if not isinstance(result["error_message"], str):
            raise bad_request("result.error_message must be a string")
    if "execution_duration" in result:
        duration = result["execution_duration"]
        if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
            raise bad_request(f"result.execution_duration must be a non-negative integer, got {duration!r}")
    return {key: resolve(f"result.{key}", result[key]) for key in RESULT_UPLOAD_FIELDS if key in result}


def apply_limits(
    body: dict[str, Any], limits: Mapping[str, int | None], truncate: bool
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Hold `name`/`description` to their limits ({field: characters or None}) in a validated body.

    Returns the body to record (a copy with values cut when `truncate`) and the fields cut. Without
    `truncate`, raises `ApiError(400)` naming the first field over its limit and the limit.
    """
    cut: list[str] = []
    out = body
    for field, limit in limits.items():
        value = body.get(field)
        if limit is None or not isinstance(value, str) or len(value) <= limit:
            continue
        if not truncate:
            raise bad_request(f"{field} must be at most {limit} characters long, got {len(value)}")
        out = {**out, field: value[:limit]}
        cut.append(field)
    return out, tuple(cut)


def check_batch_experiment(body: Mapping[str, Any], known: frozenset[str] | None) -> None:
    """Raise `ApiError(404)` when the body names a batch experiment outside `known` (None: any)."""
    experiment = body.get("batch_experiment_id")
    if known is not None and experiment is not None and experiment not in known:
        raise ApiError(404, f"batch experiment not found: {experiment!r}")
