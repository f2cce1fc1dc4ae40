"""Logging set-up (called once, by the CLI) and the redaction of secrets.

Events go to stderr: JSON lines when not on a terminal (journald keeps them), a console
renderer on a terminal. Every event passes through `Redactor`, which removes the API key and
anything that looks like a presigned URL's query string, wherever it appears in the event,
including exception traces. Library code only calls `structlog.get_logger()`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
import structlog.tracebacks

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
REDACTED = "[REDACTED]"
# Query strings of URLs (signatures, expiries) and bearer tokens.
_URL_QUERY = re.compile(r"(https?://[^\s\"'?]+)\?[^\s\"']*")
_BEARER = re.compile(r"(Bearer\s+)[^\s\"']+", re.IGNORECASE)
# journald priorities by level, for `journalctl -p`.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


class Redactor:
    """A structlog processor that scrubs secrets from every string in the event."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()   # replaced whole, never changed: read without a lock
        self._lock = threading.Lock()

    def add_secret(self, secret: str) -> None:
        if secret and len(secret) >= 4:
            with self._lock:
                if secret not in self._secrets:
                    self._secrets = (*self._secrets, secret)

    def scrub(self, text: str) -> str:
        # Each pattern only where its fixed part occurs: most strings are paths and names, and an
        # event's strings were scrubbed at 5 us each (a run logs four events of about ten).
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
        if "bearer" in text.lower():
            text = _BEARER.sub(rf"\1{REDACTED}", text)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._walk(v) for v in value)
        if value is None or isinstance(value, bool | int | float):
            return value
        # Anything else (an exception, a Path, an object) would be rendered by repr(): scrub that text.
        return self.scrub(str(value))

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {k: self._walk(v) for k, v in event.items()}


REDACTOR = Redactor()
_STATIC: dict[str, str] = {}


def bind_static(**fields: str) -> None:
    """Fields every event of this process carries from now on, whatever its thread (e.g. its `shard`)."""
    _STATIC.update(fields)


def _static(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in _STATIC.items():
        event.setdefault(key, value)
    return event


def _priority(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["priority"] = PRIORITY.get(str(event.get("level", method)), 6)
    return event


class JournalJSON:
    """JSON lines; under systemd (stderr connected to the journal, $JOURNAL_STREAM set) each line starts
    with its syslog priority, `<3>{...}`, which journald strips and records, so `journalctl -p err` works."""

    def __init__(self, journal: bool) -> None:
        self.journal = journal
        self._json = structlog.processors.JSONRenderer(sort_keys=False)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        priority = event.get("priority", 6)
        text = str(self._json(logger, method, event))
        return f"<{priority}>{text}" if self.journal else text


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              journal: bool | None = None) -> None:
    """Configure structlog for the process. `fmt`: json, console, or auto (console on a terminal).
    `journal` (default: $JOURNAL_STREAM is set) prefixes JSON lines with their syslog priority."""
    stream = stream or sys.stderr
    if journal is None:
        journal = bool(os.environ.get("JOURNAL_STREAM"))
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        _static,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_console:
        renderer: list[structlog.typing.Processor] = [
            structlog.processors.format_exc_info, REDACTOR,
            # Colours only on a terminal (and never with NO_COLOR): a file or a pipe gets plain text.
            structlog.dev.ConsoleRenderer(colors=stream.isatty() and not os.environ.get("NO_COLOR"))]
    else:
        # No local variables in traces: they would hold request headers and URLs.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        renderer = [tracebacks, REDACTOR, _priority, JournalJSON(journal)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(stream),   # a line and its newline in one write
        cache_logger_on_first_use=False,
    )
    # httpx logs every request URL at INFO; presigned URLs carry signatures. Keep them quiet.
    for name in ("httpx", "httpcore", "watchdog"):
        logging.getLogger(name).setLevel(logging.WARNING)
