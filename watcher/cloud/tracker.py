"""track(): the upload-and-track sequence for one valid run folder, resumable from its journal.

    1. If the journal holds intents (POSTs that may have created the run), look the run up by
       the intents' tokens and adopt it; post again only after a grace period without a match.
    2. Fingerprint every file, prepare the artifacts (spooling archives), check every artifact's
       size against `api.max_upload_bytes`, and upload each one (fresh upload URL, streamed PUT; a
       failed PUT is tried again with a fresh URL, a few times), in parallel: small ones together from
       the calling thread (two connections, no upload thread), larger ones on the upload threads.
    3. Check that no file changed and that the claim is still ours, record a new intent with a
       unique token durably, then POST the run with the token in its description.
    4. Write the tracked marker, then drop the journal.

The token line is appended to the run's description after the user's description and a blank
line, because the description is the only free text the run listing returns: it is how a run
created by a POST whose answer was lost is found again. The API most likely limits both fields
(`api.max_name_length`, `api.max_description_length`, in characters): a longer name is cut (with a
warning), and the user's description is cut so that it fits with the blank line and the token line,
which is never cut. A look-up that could not see the whole list (`LookupInconclusive`) never leads
to a new POST: only a conclusive "not found" after the grace period does.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from watcher.cloud.client import RETRY_AFTER_CAP, NextmvClient, UploadTarget
from watcher.cloud.lookup import RunLookup
from watcher.config import RUN_TOKEN_PREFIX, TOKEN_LINE_LENGTH, Config
from watcher.errors import (
    FolderChanged,
    InvalidFolder,
    RetryLater,
    StateError,
    TransientError,
    UncertainError,
    UploadExpired,
    UploadFailed,
    UploadRefused,
    UploadTooLarge,
)
from watcher.runfolder.folder import RunFolder, fingerprint, verify_fingerprint
from watcher.runfolder.markers import Intent, Journal, StateStore, UploadRecord
from watcher.runfolder.prepare import PreparedRun, Upload, prepare

log = structlog.get_logger("watcher.cloud.tracker")

TOKEN_PREFIX = RUN_TOKEN_PREFIX
URL_LIFETIME_SECONDS = 15 * 60
# An upload id is reused after a restart only while it has this much of its lifetime left.
REUSE_MARGIN_SECONDS = 3 * 60
# Uploads at least this large are journaled as soon as they finish, so a crash does not redo them.
JOURNAL_UPLOAD_BYTES = 1 << 20
# Artifacts this small are uploaded together from the worker's own thread (`_upload_together`).
TOGETHER_BYTES = 256 << 10
# Upload URLs per artifact per attempt: a failed PUT is tried again with a fresh URL, never the same one.
UPLOAD_TRIES = 4
REFUSED_HINT = ("the storage refused the signed upload: check the system clock (skew) and any proxy that "
                "rewrites requests (headers, path or query); retried with a fresh URL")
RESULT_FIELDS = {"output": "output_upload_id", "logs": "error_upload_id", "statistics": "statistics_upload_id",
                 "metrics": "metrics_upload_id", "assets": "assets_upload_id"}


@dataclass(frozen=True)
class Limits:
    """What the tracker holds a run to, from the current configuration (read at each use)."""

    grace_seconds: float = 30.0               # retry.lookup_grace_seconds
    max_name_length: int = 128                # api.max_name_length
    max_description_length: int = 256         # api.max_description_length
    max_upload_bytes: int = 500_000_000       # api.max_upload_bytes
    together_bytes: int = TOGETHER_BYTES      # artifacts up to this size go together (`_upload_together`)

    @classmethod
    def of(cls, config: Config, *, paced: bool = False) -> Limits:
        """`paced`: the API's rate limit was met; each upload then goes on a thread of its own, every call
        sent the moment it has its turn, as the pace's estimates expect (with uploads together throughout,
        two runs under 30 calls/s settled at 8.5-8.7 runs/s against 9.2; CPU is not what limits then)."""
        return cls(grace_seconds=config.retry.lookup_grace_seconds, max_name_length=config.api.max_name_length,
                   max_description_length=config.api.max_description_length,
                   max_upload_bytes=config.api.max_upload_bytes, together_bytes=0 if paced else TOGETHER_BYTES)


@dataclass(frozen=True)
class Outcome:
    run_id: str
    adopted: bool          # True when an earlier POST's run was found and adopted
    warnings: tuple[str, ...] = ()


def description_with_token(description: str | None, token: str, limit: int = 256) -> str:
    """The run's description: the user's (cut to fit `limit` characters with what follows), a blank
    line, the token line; the token line alone without a description. The token line is never cut
    (`limit` is at least `config.TOKEN_LINE_LENGTH`)."""
    line = f"{TOKEN_PREFIX}{token}"
    room = limit - len(line) - 2
    if not description or room <= 0:
        return line
    return f"{description[:room]}\n\n{line}"


def run_name(name: str, limit: int) -> str:
    """The run's name as sent: `name` cut to `limit` characters."""
    return name[:limit]


def run_body(run: RunFolder, upload_ids: dict[str, str], token: str, limits: Limits = Limits()) -> dict[str, Any]:
    """The `POST .../runs` body; fields that are not set are left out; the name and the description
    within `limits` (see `run_name`, `description_with_token`)."""
    inp = run.artifact("input")
    out = run.artifact("output")
    assert inp is not None
    result: dict[str, Any] = {"status": run.status}
    if run.duration_ms is not None:
        result["execution_duration"] = run.duration_ms
    if run.error_message is not None and run.status == "failed":
        result["error_message"] = run.error_message
    for role, field_name in RESULT_FIELDS.items():
        if role in upload_ids:
            result[field_name] = upload_ids[role]
    body: dict[str, Any] = {
        "upload_id": upload_ids["input"],
        "name": run_name(run.name, limits.max_name_length),
        "description": description_with_token(run.description, token, limits.max_description_length),
        "configuration": {"format": {"input": {"type": inp.format},
                                     "output": {"type": out.format if out is not None else "json"}}},
        "result": result,
    }
    if run.options:
        body["options"] = dict(run.options)
    if run.batch_experiment_id:
        body["batch_experiment_id"] = run.batch_experiment_id
    return body


class Tracker:
    """Stateless between calls apart from its collaborators; safe to share between worker threads."""

    def __init__(self, client: NextmvClient, store: StateStore, spool_dir: Path, *, executor: Executor,
                 lookup: RunLookup, clock: Callable[[], float] = time.time,
                 limits: Limits | Callable[[], Limits] = Limits(),
                 progress: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.store = store
        self.spool_dir = spool_dir
        self.executor = executor
        self.lookup = lookup
        self.clock = clock
        # Read each time it is used (the daemon passes the current configuration's).
        self.limits: Callable[[], Limits] = limits if callable(limits) else (lambda: limits)
        self.progress = progress

    def track(self, run: RunFolder, application_id: str, instance_id: str | None,
              check_claim: Callable[[], None] = lambda: None, journal: Journal | None = None) -> Outcome:
        """Track `run` once. Returns the run id (new or adopted) after writing the tracked marker.

        `journal` is the folder's journal as the caller read it (read here when not given); it is
        updated in place and saved as the attempt goes. Raises InvalidFolder/FolderChanged (folder
        problems), StateError, ClaimLost, RetryLater, and the ApiError family; the journal keeps whatever
        progress survives the error."""
        if journal is None:
            journal = self.store.journal(run.handle)
        if journal.intents:
            # Looked up where the intents were posted, even if a reload moved the folder to another
            # application since.
            adopted = self._resolve(run, journal.application_id or application_id, journal)
            if adopted is not None:
                return adopted
        if journal.application_id not in (None, application_id):
            journal.uploads.clear()   # made for another application: never referenced in this one
        journal.application_id = application_id
        before = fingerprint(run)
        with prepare(run, self.spool_dir) as prepared:
            upload_ids = self._upload_all(run, application_id, prepared, journal, before)
            verify_fingerprint(run, before)
            check_claim()
            token = uuid.uuid4().hex
            journal.intents.append(Intent(token=token, created_at=self.clock()))
            try:
                self.store.save_journal(run.handle, journal)
            except StateError:
                journal.intents.pop()   # not durable, so not posted: no intent to look up later
                raise
            log.debug("posting_run", token=token)
            limits = self.limits()
            _warn_if_cut(run, limits)
            try:
                run_id = self.client.create_run(application_id, run_body(run, upload_ids, token, limits),
                                                instance_id or None)
            except UncertainError:
                adopted = self._resolve(run, application_id, journal)
                if adopted is not None:
                    return adopted
                raise
            except Exception:
                # Any other failure means the run was certainly not created: forget the intent.
                journal.intents.pop()
                self.store.save_journal(run.handle, journal)
                raise
            self._finish(run, application_id, run_id, token, adopted=False)
            return Outcome(run_id=run_id, adopted=False, warnings=prepared.warnings)

    # -- steps -----------------------------------------------------------------------------

    def _finish(self, run: RunFolder, application_id: str, run_id: str, token: str, *, adopted: bool) -> None:
        # The name as it was sent (cut to the limit), which is the one to look for in Nextmv.
        name = run_name(run.name, self.limits().max_name_length)
        self.store.mark_tracked(run.handle, run_id, application_id, self.clock(), name=name,
                                token=token, adopted=adopted)
        self.store.clear_journal(run.handle)

    def _resolve(self, run: RunFolder, application_id: str, journal: Journal) -> Outcome | None:
        """Look the open intents up. Adopt a found run; raise RetryLater while the grace period runs;
        after it, clear the intents so that the caller posts again. A look-up that could not see the
        whole list raises LookupInconclusive (the intents stay: nothing is posted on its strength)."""
        found = self.lookup.find(application_id, journal.intents)
        if journal.lookups_inconclusive:
            log.info("run_lookup_conclusive", after=journal.lookups_inconclusive)
            journal.lookups_inconclusive = 0
            if found is None:
                self.store.save_journal(run.handle, journal)
        if found is not None:
            token, run_id = found
            log.info("run_adopted", run_id=run_id, reason="an earlier POST had created it")
            self._finish(run, application_id, run_id, token, adopted=True)
            return Outcome(run_id=run_id, adopted=True)
        newest = max(i.created_at for i in journal.intents)
        wait_until = newest + self.limits().grace_seconds
        if self.clock() < wait_until:
            raise RetryLater("run not in the listing yet; looking again before posting", at=wait_until)
        log.info("run_not_found", intents=len(journal.intents), reason="posting again after grace period")
        journal.intents.clear()
        self.store.save_journal(run.handle, journal)
        return None

    def _upload_all(self, run: RunFolder, application_id: str, prepared: PreparedRun, journal: Journal,
                    before: dict[str, tuple[int, int, int]]) -> dict[str, str]:
        """Upload every artifact (at once), reusing journaled uploads that are still fresh. Raises
        InvalidFolder before anything is uploaded when an artifact is larger than `max_upload_bytes`."""
        lock = threading.Lock()
        ids: dict[str, str] = {}
        todo: list[tuple[Upload, dict[str, list[int]]]] = []
        self._check_sizes(run, prepared)
        now = self.clock()
        for upload in prepared.uploads:
            art = run.artifact(upload.role)
            assert art is not None
            keys = [f"{art.path.name}/{m.arcname}" if art.is_dir else art.path.name for m in art.members]
            members = {key: list(before.get(key, ())) for key in keys}
            rec = journal.uploads.get(upload.role)
            if (rec is not None and rec.fingerprint == members
                    and now - rec.obtained_at < URL_LIFETIME_SECONDS - REUSE_MARGIN_SECONDS):
                ids[upload.role] = rec.upload_id
                continue
            journal.uploads.pop(upload.role, None)
            todo.append((upload, members))

        def one(upload: Upload, members: dict[str, list[int]]) -> None:
            record(upload, members, self._upload(application_id, prepared, upload, run))

        def record(upload: Upload, members: dict[str, list[int]], target: UploadTarget) -> None:
            with lock:
                ids[upload.role] = target.upload_id
                journal.uploads[upload.role] = UploadRecord(target.upload_id, target.obtained_at, members)
                if upload.size >= JOURNAL_UPLOAD_BYTES:
                    self.store.save_journal(run.handle, journal)

        if todo:
            log.info("uploading", artifacts=[u.role for u, _ in todo],
                     bytes=sum(u.size for u, _ in todo))
        together = self.limits().together_bytes
        if len(todo) > 1 and all(u.size <= together for u, _ in todo):
            todo = self._upload_together(application_id, prepared, run, todo, record)
        # Each upload thread logs with the caller's context (folder, application_id): a copy each.
        futures: list[Future[None]] = [self.executor.submit(contextvars.copy_context().run, one, u, m)
                                       for u, m in todo[1:]]
        first_error: BaseException | None = None
        if todo:
            try:
                one(*todo[0])
            except BaseException as exc:  # noqa: BLE001 - re-raised below after the others finish
                first_error = exc
        for fut in futures:
            err = fut.exception()
            if err is not None and first_error is None:
                first_error = err
        if first_error is not None:
            raise first_error
        return ids

    def _upload_together(self, application_id: str, prepared: PreparedRun, run: RunFolder,
                         todo: list[tuple[Upload, dict[str, list[int]]]],
                         record: Callable[[Upload, dict[str, list[int]], UploadTarget], None],
                         ) -> list[tuple[Upload, dict[str, list[int]]]]:
        """Small artifacts' URLs asked for together, then their PUTs sent together, from this thread (no
        upload thread to wake and wait for: a run's uploads cost two round trips and two waits). Each
        request is tried once; what did not succeed is returned, for the usual way (retries, fresh URLs,
        the errors judged)."""
        targets = self.client.new_uploads(application_id, len(todo))
        ready = [(u, m, t) for (u, m), t in zip(todo, targets, strict=True) if isinstance(t, UploadTarget)]
        try:
            puts = [(t, partial(prepared.open, u), u.size, _label(run, u)) for u, _, t in ready]
            failed = self.client.put_files(puts, self.progress, folder=str(run.path))
        except Exception:  # noqa: BLE001 - a source that cannot be opened: the usual way says why
            return todo
        done = set()
        for (upload, members, target), error in zip(ready, failed, strict=True):
            if error is None:
                record(upload, members, target)
                done.add(upload.role)
        return [(u, m) for u, m in todo if u.role not in done]

    def _check_sizes(self, run: RunFolder, prepared: PreparedRun) -> None:
        """Every artifact (a file as it is, an archive as spooled) fits `max_upload_bytes`, or the folder is
        invalid: Nextmv documents at most 500 MB per upload, and a larger one would be sent in full and
        refused on every attempt."""
        limit = self.limits().max_upload_bytes
        for upload in prepared.uploads:
            if upload.size > limit:
                raise InvalidFolder(str(run.path), f"{_label(run, upload)} is {upload.size:,} bytes, over the upload "
                                                   f"limit of {limit:,} bytes (api.max_upload_bytes)")

    def _upload(self, application_id: str, prepared: PreparedRun, upload: Upload, run: RunFolder) -> UploadTarget:
        """Get an upload URL and PUT the bytes. A failed PUT (an S3 error, a reset, a timeout, an expired or
        refused URL) is tried again with a fresh URL, up to UPLOAD_TRIES URLs, after a jittered backoff
        (none after an expired URL; cancelled on drain); then its error is raised (`UploadFailed`, the
        folder is retried later). The storage refusing the size (EntityTooLarge) makes the folder invalid."""
        label = _label(run, upload)
        for attempt in range(1, UPLOAD_TRIES + 1):
            target = self.client.new_upload(application_id)
            try:
                self.client.put_file(target, lambda: prepared.open(upload), upload.size, progress=self.progress,
                                     folder=str(run.path), label=label)
            except PermissionError:
                raise InvalidFolder(str(run.path), f"{label}: permission denied") from None
            except OSError as exc:
                raise FolderChanged(str(run.path), f"{label}: cannot be read ({exc.strerror})") from None
            except UploadTooLarge as exc:
                raise InvalidFolder(str(run.path), f"{label} ({upload.size:,} bytes) refused by the storage "
                                                   f"as too large ({exc})") from None
            except UploadFailed as exc:
                if isinstance(exc, UploadRefused):
                    log.warning("upload_refused", artifact=upload.role, status=exc.status, code=exc.code,
                                error=str(exc), hint=REFUSED_HINT)
                if attempt == UPLOAD_TRIES or self.client.cancel.is_set():
                    raise
                self._pause_before_retry(upload, exc, attempt)
                continue
            return target
        raise TransientError("unreachable")  # pragma: no cover

    def _pause_before_retry(self, upload: Upload, exc: UploadFailed, attempt: int) -> None:
        """Wait before the next URL (at once after an expired one); raises `exc` when cancelled meanwhile."""
        if isinstance(exc, UploadExpired):
            log.info("upload_url_expired", artifact=upload.role, reason="fresh URL requested")
            return
        delay = self.client.backoff.delay(attempt)
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, RETRY_AFTER_CAP))
        if not isinstance(exc, UploadRefused):
            log.info("upload_retrying", artifact=upload.role, status=exc.status, code=exc.code, error=str(exc),
                     retry_in=round(delay, 2))
        if self.client.cancel.wait(delay):
            raise exc


def _label(run: RunFolder, upload: Upload) -> str:
    """The artifact as an operator knows it: its role and its name in the folder (never a spool file's)."""
    art = run.artifact(upload.role)
    name = art.path.name if art is not None else upload.path.name
    return f"{upload.role} {name}" + (" (as an archive)" if art is not None and art.is_dir else "")

def _warn_if_cut(run: RunFolder, limits: Limits) -> None:
    """Say so when the name or the user's description will be cut to fit the API's limits."""
    if len(run.name) > limits.max_name_length:
        log.warning("run_name_truncated", folder=str(run.path), length=len(run.name),
                    limit=limits.max_name_length)
    room = limits.max_description_length - TOKEN_LINE_LENGTH
    if run.description and len(run.description) > room:
        log.warning("run_description_truncated", folder=str(run.path), length=len(run.description),
                    limit=room, reason="room is kept for the tracking token line")
