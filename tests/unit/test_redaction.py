"""Redactor: the API key, presigned URL query strings and bearer tokens never reach the log output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from watcher import logs
from watcher.logs import REDACTED, Redactor

SECRET = "sk-live-0123456789abcdef"
SIGNED = "https://bucket.test/upload/u1?X-Amz-Signature=deadbeef&X-Amz-Expires=900"


@pytest.fixture(autouse=True)
def _isolated_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure() changes process-wide state: structlog's config, the shared redactor, stdlib levels."""
    monkeypatch.setattr(logs.REDACTOR, "_secrets", ())
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "watchdog")}
    yield
    structlog.reset_defaults()
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


def configured(fmt: str, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level=level, fmt=fmt, stream=stream)
    logs.REDACTOR.add_secret(SECRET)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- the processor -------------------------------------------------------------------------------


def test_an_added_secret_is_replaced_everywhere_in_a_string() -> None:
    r = Redactor()
    r.add_secret(SECRET)

    assert r.scrub(f"key={SECRET}; again {SECRET}.") == f"key={REDACTED}; again {REDACTED}."


def test_url_query_strings_are_removed_and_the_rest_of_the_url_kept() -> None:
    r = Redactor()

    assert r.scrub(f"PUT {SIGNED} failed") == f"PUT https://bucket.test/upload/u1?{REDACTED} failed"
    assert r.scrub("see https://docs.test/page") == "see https://docs.test/page"


@pytest.mark.parametrize("header", ["Bearer abc.def-ghi", "bearer abc.def-ghi", "Authorization: BEARER abc.def-ghi",
                                    "x-auth: BeArEr\tabc.def-ghi"])
def test_bearer_tokens_are_removed(header: str) -> None:
    scrubbed = Redactor().scrub(header)

    assert "abc.def-ghi" not in scrubbed
    assert scrubbed.endswith(REDACTED)


def test_text_without_secrets_is_unchanged() -> None:
    r = Redactor()
    r.add_secret(SECRET)

    assert r.scrub("run_tracked folder=/runs/a run_id=r-1") == "run_tracked folder=/runs/a run_id=r-1"


def test_empty_and_tiny_secrets_are_ignored_rather_than_redacting_everything() -> None:
    r = Redactor()
    r.add_secret("")
    r.add_secret("abc")

    assert r.scrub("abcdef") == "abcdef"


def test_every_string_in_nested_values_is_scrubbed_and_other_values_kept() -> None:
    r = Redactor()
    r.add_secret(SECRET)
    event = {
        "event": f"failed with {SECRET}",
        "request": {"headers": {"Authorization": f"Bearer {SECRET}"}, "url": SIGNED},
        "attempts": [1, f"key {SECRET}", ("tuple", SIGNED)],
        "count": 3,
        "ok": False,
        "missing": None,
    }

    out = r(None, "info", event)

    assert SECRET not in repr(out)
    assert "deadbeef" not in repr(out)
    assert out["event"] == f"failed with {REDACTED}"
    assert out["request"]["headers"]["Authorization"] == f"Bearer {REDACTED}"
    assert out["attempts"][2] == ("tuple", f"https://bucket.test/upload/u1?{REDACTED}")
    assert (out["count"], out["ok"], out["missing"]) == (3, False, None)
    assert out["attempts"][0] == 1


# --- through a configured structlog --------------------------------------------------------------


def test_json_output_never_holds_the_secret() -> None:
    stream = configured("json")
    log = structlog.get_logger("test")

    log.info("upload_failed", error=f"HTTP 403 for key {SECRET}", url=SIGNED,
             detail={"tries": [SECRET, "fine"]})

    (line,) = json_lines(stream)
    assert SECRET not in stream.getvalue()
    assert "deadbeef" not in stream.getvalue()
    assert line["event"] == "upload_failed"
    assert line["error"] == f"HTTP 403 for key {REDACTED}"
    assert line["detail"] == {"tries": [REDACTED, "fine"]}
    assert line["level"] == "info"
    assert line["priority"] == 6


def _reject(key: str) -> None:
    raise PermissionError(f"API key {key} rejected at {SIGNED}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_an_exception_trace_never_prints_the_secret(fmt: str) -> None:
    stream = configured(fmt)
    log = structlog.get_logger("test")

    try:
        _reject(SECRET)
    except PermissionError:
        log.exception("folder_error", error=f"key {SECRET}")

    output = stream.getvalue()
    assert "PermissionError" in output  # the trace is there...
    assert "_reject" in output
    assert SECRET not in output  # ...without the key
    assert "deadbeef" not in output
    assert REDACTED in output


def test_the_exception_is_structured_in_json_output() -> None:
    stream = configured("json")
    log = structlog.get_logger("test")

    try:
        _reject(SECRET)
    except PermissionError:
        log.exception("folder_error")

    (line,) = json_lines(stream)
    assert line["level"] == "error"
    assert line["priority"] == 3
    exception = line["exception"]
    assert isinstance(exception, list)
    assert exception[0]["exc_type"] == "PermissionError"
    assert exception[0]["exc_value"] == (
        f"API key {REDACTED} rejected at https://bucket.test/upload/u1?{REDACTED}")


def test_events_below_the_configured_level_are_dropped() -> None:
    stream = configured("json", level="warning")
    log = structlog.get_logger("test")

    log.info("chatty")
    log.warning("worth_knowing")

    assert [line["event"] for line in json_lines(stream)] == ["worth_knowing"]
