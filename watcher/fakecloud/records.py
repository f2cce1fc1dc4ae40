"""What the emulator saw: one `RequestRecord` per request, and counters for `stats()`.

Records never hold header values beyond whether `Authorization` was present: keys and upload
signatures must not leak into test output or the stats endpoint.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by the server.

    `endpoint` is one of the fault endpoint names, "control" for /_fake/* or "unknown". `status` is
    the status sent, or None when no response was sent (connection reset, or the client went away
    mid-request). `path` excludes the query string, which carries upload signatures. `s3_code` is the
    S3 error code of an answered PUT error (None otherwise).
    """

    endpoint: str
    method: str
    path: str
    status: int | None
    has_authorization: bool
    content_length: int | None
    chunked: bool
    content_type: str | None
    s3_code: str | None = None


class RequestLog:
    """Thread-safe, append-only list of records plus counters; records are appended on completion."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        self._s3_codes: Counter[str] = Counter()
        self._connections = 0
        self._internal_errors: list[str] = []

    def add(self, record: RequestRecord) -> None:
        key = (record.endpoint, "reset" if record.status is None else str(record.status))
        with self._lock:
            self._records.append(record)
            self._counts[key] += 1
            if record.s3_code is not None:
                self._s3_codes[record.s3_code] += 1

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def internal_error(self, description: str) -> None:
        """Note a bug in the emulator itself (tests assert there are none)."""
        with self._lock:
            self._internal_errors.append(description)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters: requests by endpoint and status ("reset" for no response), PUT errors by
        S3 code, and more."""
        with self._lock:
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, status), count in sorted(self._counts.items()):
                by_endpoint.setdefault(endpoint, {})[status] = count
            return {
                "requests": len(self._records),
                "by_endpoint": by_endpoint,
                "s3_codes": dict(sorted(self._s3_codes.items())),
                "connections": self._connections,
                "internal_errors": list(self._internal_errors),
                "cpu_seconds": time.process_time(),
            }
