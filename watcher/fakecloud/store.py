"""The emulator's state: upload slots and their content, recorded runs, and the run listing.

All state sits behind one lock; uploads are hashed while streaming, outside the lock, and committed
at the end. Run creation times are strictly increasing (bumped by a microsecond on ties or when the
wall clock steps back), so creation order, `created_at` order and listing order are one order and
page tokens can name a run as their cursor.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import dataclasses
import hashlib
import secrets
import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from watcher.fakecloud.behaviour import Behaviour
from watcher.fakecloud.validation import (
    LOGS_FIELD,
    apply_limits,
    bad_request,
    check_batch_experiment,
    validate_run_body,
)

PAGE_SIZE = 50


@dataclass(frozen=True)
class RecordedUpload:
    """The content last PUT to an upload id; `data` is None when `size` exceeded the storage limit."""

    upload_id: str
    size: int
    sha256: str
    data: bytes | None


@dataclass(frozen=True)
class RecordedRun:
    """A run as created through `POST .../runs`.

    `artifacts` snapshots, at creation, the uploads the body referenced, keyed "input" for the
    top-level `upload_id` and by the `result.*_upload_id` key for the others. `body` is the run as
    recorded (listed and returned): with `Behaviour.over_limit` "truncate", `truncated` names the
    fields that were cut to their limit.
    """

    run_id: str
    application_id: str
    created_at: datetime
    body: dict[str, Any]
    query: dict[str, str]
    artifacts: Mapping[str, RecordedUpload] = dataclasses.field(default_factory=dict, repr=False)
    truncated: tuple[str, ...] = ()

    def artifact(self, field: str) -> RecordedUpload | None:
        """The upload behind `field` ("input", "output_upload_id", "error_upload_id", ...), or None."""
        return self.artifacts.get(field)

    @property
    def status(self) -> str:
        """`result.status`, or "queued" for a run sent without a result (not an external run)."""
        result = self.body.get("result")
        return str(result["status"]) if isinstance(result, dict) else "queued"


@dataclass
class _Slot:
    application_id: str
    content: RecordedUpload | None = None
    utf8: bool | None = None  # None: not known yet, decided from `content.data` on first need


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z, as the API writes times: 2026-11-25T02:40:28.123456Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_item(run: RecordedRun) -> dict[str, Any]:
    """The run as the list and metadata endpoints return it."""
    result = run.body.get("result")
    result = result if isinstance(result, dict) else {}
    status = run.status
    sizes = {name: upload.size for name, upload in run.artifacts.items()}
    return {
        "id": run.run_id,
        "name": run.body.get("name", ""),
        "description": run.body.get("description", ""),
        "created_at": format_time(run.created_at),
        "status_v2": status,
        "application_id": run.application_id,
        "application_instance_id": run.query.get("instance_id", ""),
        "experiment_id": run.body.get("batch_experiment_id", ""),
        "user_email": "",
        "metadata": {
            "status_v2": status,
            "duration": result.get("execution_duration", 0),
            "error": result.get("error_message", ""),
            "input_size": sizes.get("input", 0),
            "output_size": sizes.get("output_upload_id", 0),
        },
    }


class UploadReceiver:
    """Consumes one PUT body chunk by chunk: hashes everything, keeps bytes only up to the limit."""

    def __init__(self, upload_id: str, declared_size: int, max_stored_bytes: int) -> None:
        self._upload_id = upload_id
        self._hash = hashlib.sha256()
        self._size = 0
        self._keep = declared_size <= max_stored_bytes
        self._chunks: list[bytes] = []
        # Content we do not keep is checked for UTF-8 as it streams, in case it turns out to be logs.
        self._decoder = None if self._keep else codecs.getincrementaldecoder("utf-8")()
        self._utf8: bool | None = None if self._keep else True

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        if self._keep:
            self._chunks.append(chunk)
        elif self._decoder is not None and self._utf8:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._utf8 = False

    def finish(self) -> tuple[RecordedUpload, bool | None]:
        if self._decoder is not None and self._utf8:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self._utf8 = False
        data = b"".join(self._chunks) if self._keep else None
        return RecordedUpload(self._upload_id, self._size, self._hash.hexdigest(), data), self._utf8


class Store:
    """Thread-safe uploads and runs; see the module docstring for the ordering guarantee."""

    def __init__(self, max_stored_bytes: int) -> None:
        self.max_stored_bytes = max_stored_bytes
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._runs: list[RecordedRun] = []
        self._by_app: dict[str, list[RecordedRun]] = {}
        self._position: dict[str, int] = {}  # run_id -> index in its application's list
        self._last_created = datetime.min.replace(tzinfo=UTC)

    # --- uploads ---------------------------------------------------------------------------------

    def new_upload(self, application_id: str) -> str:
        """Reserve a fresh upload id for `application_id`."""
        with self._lock:
            while True:
                upload_id = "upload-" + secrets.token_hex(12)
                if upload_id not in self._slots:
                    self._slots[upload_id] = _Slot(application_id)
                    return upload_id

    def has_upload(self, upload_id: str) -> bool:
        with self._lock:
            return upload_id in self._slots

    def receiver(self, upload_id: str, declared_size: int) -> UploadReceiver:
        return UploadReceiver(upload_id, declared_size, self.max_stored_bytes)

    def commit_upload(self, receiver: UploadReceiver) -> RecordedUpload:
        """Make a fully received body the content of its upload id (replacing earlier content)."""
        content, utf8 = receiver.finish()
        with self._lock:
            slot = self._slots[content.upload_id]
            slot.content, slot.utf8 = content, utf8
        return content

    def upload(self, upload_id: str) -> RecordedUpload | None:
        """The current content of `upload_id`, or None when unknown or never PUT."""
        with self._lock:
            slot = self._slots.get(upload_id)
            return slot.content if slot is not None else None

    def uploads(self) -> list[RecordedUpload]:
        """The current content of every upload id that was PUT."""
        with self._lock:
            return [slot.content for slot in self._slots.values() if slot.content is not None]

    def upload_count(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.content is not None)

    # --- runs ------------------------------------------------------------------------------------

    def create_run(
        self, application_id: str, body: object, query: Mapping[str, str], rules: Behaviour | None = None
    ) -> RecordedRun:
        """Validate `body` and record the run.

        Checked in this order: the field rules, the name and description limits of `rules` (default
        `Behaviour()`), its known batch experiments. Raises `ApiError` (400 naming the offending field
        and, for a limit, the limit; 404 for an unknown batch experiment).
        """
        rules = rules if rules is not None else Behaviour()
        limits = {"name": rules.max_name_length, "description": rules.max_description_length}
        with self._lock:
            fields = validate_run_body(body, self._resolve)
            body, truncated = apply_limits(
                cast(dict[str, Any], body),  # validate_run_body refuses anything but an object
                limits,
                truncate=rules.over_limit == "truncate",
            )
            check_batch_experiment(body, rules.batch_experiments)
            artifacts = {name: self._slots[upload_id].content for name, upload_id in fields.items()}
            now = datetime.now(UTC)
            if now <= self._last_created:
                now = self._last_created + timedelta(microseconds=1)
            self._last_created = now
            while True:
                run_id = "run-" + secrets.token_hex(6)
                if run_id not in self._position:
                    break
            run = RecordedRun(
                run_id=run_id,
                application_id=application_id,
                created_at=now,
                body=body,
                query=dict(query),
                artifacts={name: c for name, c in artifacts.items() if c is not None},
                truncated=truncated,
            )
            app_runs = self._by_app.setdefault(application_id, [])
            self._position[run_id] = len(app_runs)
            app_runs.append(run)
            self._runs.append(run)
            return run

    def _resolve(self, field_path: str, value: object) -> str:
        # Called with the lock held, by validate_run_body.
        if not isinstance(value, str):
            raise bad_request(f"{field_path} must be a string")
        slot = self._slots.get(value)
        if slot is None:
            raise bad_request(f"{field_path} {value!r} is unknown: ask for an upload URL first")
        if slot.content is None:
            raise bad_request(f"{field_path} {value!r} was never uploaded: PUT the content first")
        if field_path.endswith(LOGS_FIELD):
            if slot.utf8 is None:
                slot.utf8 = _is_utf8(slot.content.data or b"")
            if not slot.utf8:
                raise bad_request(f"{field_path} {value!r}: the logs are not valid UTF-8")
        return value

    def runs(self, application_id: str | None = None) -> list[RecordedRun]:
        """Recorded runs, oldest first, of one application or of all."""
        with self._lock:
            if application_id is None:
                return list(self._runs)
            return list(self._by_app.get(application_id, ()))

    def run_count(self) -> int:
        with self._lock:
            return len(self._runs)

    def get_run(self, application_id: str, run_id: str) -> RecordedRun | None:
        with self._lock:
            index = self._position.get(run_id)
            app_runs = self._by_app.get(application_id, [])
            if index is None or index >= len(app_runs) or app_runs[index].run_id != run_id:
                return None
            return app_runs[index]

    def list_runs(
        self,
        application_id: str,
        *,
        lag_seconds: float,
        page_token: str | None,
        page_size: int | None,
        oldest_first: bool = False,
    ) -> tuple[list[RecordedRun], str]:
        """Visible runs newest first (or oldest first), and the token of the next page ("" when none).

        A run is visible once it is `lag_seconds` old. With `page_size` None every visible run is
        returned. A page token names the last run of the previous page, so pages stay contiguous
        while runs are being created (new runs come before the first page newest first, after the
        last one oldest first). Raises `ApiError(400)` for a token this server did not issue.
        """
        with self._lock:
            app_runs = self._by_app.get(application_id, [])
            visible = len(app_runs)
            if lag_seconds > 0:
                cutoff = datetime.now(UTC) - timedelta(seconds=lag_seconds)
                visible = bisect_right(app_runs, cutoff, key=lambda run: run.created_at)
            after = self._token_position(application_id, page_token) if page_token else None
            if oldest_first:
                start = 0 if after is None else min(visible, after + 1)
                end = visible if page_size is None else min(visible, start + page_size)
                more = end < visible
            else:
                end = visible if after is None else min(visible, after)
                start = 0 if page_size is None else max(0, end - page_size)
                more = start > 0
            page = app_runs[start:end]
        if not oldest_first:
            page.reverse()
        next_token = _token(page[-1].run_id) if more and page else ""
        return page, next_token

    def _token_position(self, application_id: str, token: str) -> int:
        try:
            run_id = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        except (ValueError, binascii.Error):
            run_id = ""
        index = self._position.get(run_id)
        app_runs = self._by_app.get(application_id, [])
        if index is None or index >= len(app_runs) or app_runs[index].run_id != run_id:
            raise bad_request("pagetoken is not a valid page token")
        return index


def _token(run_id: str) -> str:
    return base64.urlsafe_b64encode(run_id.encode("ascii")).decode("ascii")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def all_runs_json(runs: Iterable[RecordedRun]) -> list[dict[str, Any]]:
    """Runs for `GET /_fake/runs`: everything recorded, with size and sha256 of each artifact."""
    return [
        {
            "run_id": run.run_id,
            "application_id": run.application_id,
            "created_at": format_time(run.created_at),
            "body": run.body,
            "query": run.query,
            "artifacts": {
                name: {"upload_id": up.upload_id, "size": up.size, "sha256": up.sha256}
                for name, up in run.artifacts.items()
            },
        }
        for run in runs
    ]
