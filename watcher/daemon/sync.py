"""`nextmv-watcher sync`: track every complete folder once, without a daemon, then exit.

    Service(watch=False) --start()--> run_until_idle() in slices --shutdown()--> summary

The service does the work exactly as the daemon would (claims, journal, markers), so a sync
and a running daemon never track a folder twice. Incomplete folders are left for the daemon or
the next sync. On a terminal a progress bar follows the workers' counters on `err`; elsewhere
the service's log events are the progress. The summary goes to `out`: a table on a terminal,
plain aligned text otherwise.

A sync gives up early when waiting cannot help: at once when the API rejects the key or an
application does not exist, or when every folder left waits after an inconclusive run look-up (it
is never posted again on its own); and after `timeout` seconds without progress (no folder
finished, no byte uploaded: the API unreachable or paused, folders claimed by another process),
naming what it waited for. A backfill that keeps making progress is never cut off. Its events are
`sync_started` and `sync_finished` (the service's `daemon_*` events are not logged).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from watcher import __version__
from watcher.config import Config
from watcher.daemon.gate import GLOBAL
from watcher.daemon.service import Service
from watcher.errors import EXIT_FAILED, EXIT_OK, FolderError, StateError
from watcher.runfolder.markers import StateStore, parse_iso
from watcher.runfolder.scan import classify, iter_folders, missing_paths

log = structlog.get_logger("watcher.daemon.sync")

OK, FAILED = EXIT_OK, EXIT_FAILED
SLICE_SECONDS = 0.2   # how often the progress bar and the give-up rules are looked at
DEFAULT_TIMEOUT = 300.0   # `sync --timeout`: the longest wait without progress (0: no limit)
WAIT_SHOWN_AFTER = 2.0    # on a terminal, what the sync waits for is shown after this long without progress


@dataclass(frozen=True)
class FailedFolder:
    folder: str
    reason: str
    error: str


@dataclass
class SyncSummary:
    """What a sync did. `failed` lists the folders that failed during this sync; `left` the complete
    folders that are still untracked (they appeared during the sync, or the sync gave up)."""

    tracked: int = 0
    failed: list[FailedFolder] = field(default_factory=list)
    incomplete: int = 0
    already_tracked: int = 0
    already_failed: int = 0
    left: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def exit_code(self) -> int:
        return FAILED if self.failed or self.stopped else OK

    def rows(self) -> list[tuple[str, int]]:
        return [("tracked", self.tracked), ("failed", len(self.failed)),
                ("skipped incomplete", self.incomplete), ("already tracked", self.already_tracked),
                ("already failed", self.already_failed), ("not tracked yet", len(self.left))]


def run_sync(config: Config, key: str, *, out: TextIO, err: TextIO, timeout: float = DEFAULT_TIMEOUT,
             service_factory: Callable[[Config, str], Service] | None = None) -> int:
    """Track every complete folder under the watched paths once; print the summary on `out`.

    Returns 0 when nothing failed, 1 when a folder failed, the sync gave up (`timeout` seconds without
    progress; 0: no limit), or the service could not start. `service_factory` builds the service
    (tests); by default a Service that watches nothing, leaves incomplete folders alone, keeps the
    spool files of a daemon beside it and logs no `daemon_*` events."""
    make = service_factory or (lambda c, k: Service(c, k, watch=False, recheck_incomplete=False, daemon=False))
    started = math.floor(time.time() * 1000) / 1000   # markers carry milliseconds
    service = make(config, key)
    try:
        service.start()
    except OSError as exc:
        service.shutdown()
        print(f"nextmv-watcher: cannot start: {exc}", file=err)
        return FAILED
    log.info("sync_started", watched=[str(w.path) for w in config.watch], workers=config.workers,
             api=config.api.url, version=__version__, timeout=timeout)
    for gone in missing_paths(config):
        log.warning("watched_path_missing", path=str(gone.path), problem=gone.problem, hint="skipped by this sync")
        print(f"nextmv-watcher: watched path {gone.path} {gone.problem}: skipped", file=err)
    stopped: str | None = None
    stall = Stall(time.monotonic())
    try:
        with _progress_for(err) as progress:
            while not service.run_until_idle(timeout=SLICE_SECONDS):
                idle = stall.idle_for(progress_mark(service), time.monotonic())
                progress.update(service, waiting_for(service) if idle >= WAIT_SHOWN_AFTER else "")
                stopped = give_up_reason(service)
                if stopped is None and 0 < timeout <= idle:
                    stopped = (f"no progress for {round(idle)} s (--timeout {timeout:g}); "
                               f"waited for: {waiting_for(service)}")
                if stopped is not None:
                    break
            progress.update(service, "")
    finally:
        service.shutdown()
    summary = summarize(config, service.store, started, service.outcomes.totals()["tracked"])
    summary.stopped = stopped
    log.info("sync_finished", tracked=summary.tracked, failed=len(summary.failed), incomplete=summary.incomplete,
             left=len(summary.left), stopped=stopped)
    if stopped is not None:
        print(f"nextmv-watcher: sync stopped early: {stopped}", file=err)
    print_summary(summary, out)
    return summary.exit_code


class Stall:
    """How long the sync has gone without progress: `idle_for(mark, now)` with the latest progress mark."""

    def __init__(self, now: float) -> None:
        self._mark: tuple[int, ...] | None = None
        self._since = now

    def idle_for(self, mark: tuple[int, ...], now: float) -> float:
        if mark != self._mark:
            self._mark, self._since = mark, now
        return now - self._since


def progress_mark(service: Service) -> tuple[int, ...]:
    """What changes when the sync makes progress: folders found by the start-up scan, folders finished
    (tracked or failed), bytes uploaded."""
    c = service.outcomes.totals()
    return service.index.size(), c["tracked"], c["failed"], service.metrics.uploaded_bytes()


def waiting_for(service: Service) -> str:
    """What the sync is waiting for, in words: pauses first, then why folders wait, then what is in flight."""
    now = service.clock()
    parts = []
    pauses, waiting = service.gate.pauses(), service.index.waiting_reasons()
    for scope, pause in sorted(pauses.items()):
        what = "the API" if scope == GLOBAL else f"application {scope}"
        state = {"upload_refused": "had every upload refused", "uploads_failing": "had every upload fail",
                 "auth": "rejected the key", "application_not_found": "was not found"
                 }.get(pause.reason, "has been unreachable")
        parts.append(f"{what} {state} for {round(now - pause.since)} s: {pause.message}")
    for reason, n in sorted(waiting.items()):
        if reason == "claimed_elsewhere":
            parts.append(f"{n} folder(s) claimed by another process")
        elif reason == "state_error":   # our own files: say which error, e.g. the spool's bytes needed
            errors = [e for _, e in service.index.waiting_with(reason) if e]
            parts.append(f"{n} folder(s) whose state could not be written" + (f" ({errors[0]})" if errors else ""))
        else:
            parts.append(f"{n} folder(s) waiting to be retried ({reason})")
    failing = service.gate.failing()
    if failing is not None and not pauses:
        parts.append(f"the API: {failing[0]} request(s) failed in a row, the last: {failing[1]}")
    last = service.outcomes.last_retry()
    if last is not None and waiting:
        parts.append(f"the last attempt: {last[0]}: {last[1]}")
    counts = service.index.counts()
    if counts["parked"]:
        parts.append(f"{counts['parked']} folder(s) held until the pause ends")
    if counts["in_flight"]:
        parts.append(f"{counts['in_flight']} folder(s) in flight")
    return "; ".join(parts) or "the start-up scan"


def give_up_reason(service: Service) -> str | None:
    """Why waiting any longer cannot help, whatever the timeout, or None."""
    for scope, pause in service.gate.pauses().items():
        if pause.reason == "auth":
            return f"the API rejected the key: {pause.message}"
        if pause.reason == "application_not_found":
            return f"application {scope} not found: {pause.message}"
    # Folders whose run look-up could not see the whole list are never posted again on their own.
    inconclusive = service.index.waiting_for("lookup_inconclusive")
    if inconclusive and len(inconclusive) == len(service.index) and not service.index.in_flight():
        return (f"{len(inconclusive)} folder(s) wait after an inconclusive run look-up (their run may exist; "
                "`nextmv-watcher scan` says why; `nextmv-watcher track FOLDER --repost` posts anyway)")
    return None


def summarize(config: Config, store: StateStore, started: float, tracked: int) -> SyncSummary:
    """Read the markers of every folder under the watched paths: what this sync (from `started` on) did."""
    summary = SyncSummary(tracked=tracked)
    now = time.time()
    for watch in config.watch:
        for folder in iter_folders(watch.path):
            try:
                marker = store.tracked(folder)
                if marker is not None:
                    # Tracked during this sync: counted by the workers (a moved or deleted one is gone).
                    if _since(marker.get("tracked_at"), started) is False:
                        summary.already_tracked += 1
                    continue
                failed = store.failed(folder)
            except (StateError, FolderError) as exc:
                summary.left.append((str(folder), str(exc)))
                continue
            if failed is not None:
                if _since(failed.get("failed_at"), started) is False:
                    summary.already_failed += 1
                else:
                    summary.failed.append(FailedFolder(str(folder), str(failed.get("reason", "")),
                                                       str(failed.get("error", ""))))
                continue
            report = classify(folder, watch, config, store, now)
            if report.state == "incomplete":
                summary.incomplete += 1
            else:
                summary.left.append((report.folder, report.reason))
    return summary


def _since(stamp: Any, started: float) -> bool | None:
    """Whether the ISO time `stamp` is at or after `started` (None when it is not a time)."""
    if not isinstance(stamp, str):
        return None
    try:
        return parse_iso(stamp) >= started
    except ValueError:
        return None


def print_summary(summary: SyncSummary, out: TextIO) -> None:
    if out.isatty():
        _print_rich(summary, out)
        return
    for name, count in summary.rows():
        print(f"{name:<20}{count:>8}", file=out)
    if summary.failed:
        print("\nfailed folders:", file=out)
        width = max(len(f.folder) for f in summary.failed)
        for f in summary.failed:
            print(f"  {f.folder:<{width}}  {f.reason}: {f.error}", file=out)
    if summary.left:
        print("\nnot tracked yet:", file=out)
        width = max(len(folder) for folder, _ in summary.left)
        for folder, reason in summary.left:
            print(f"  {folder:<{width}}  {reason}", file=out)


def _print_rich(summary: SyncSummary, out: TextIO) -> None:
    console = Console(file=out, force_terminal=True)
    counts = Table(title="sync summary")
    counts.add_column("folders")
    counts.add_column("count", justify="right")
    for name, count in summary.rows():
        style = "red" if name == "failed" and count else None
        counts.add_row(name, str(count), style=style)
    console.print(counts)
    if summary.failed:
        failed = Table(title="failed folders")
        for column in ("folder", "reason", "error"):
            failed.add_column(column, overflow="fold")
        for f in summary.failed:
            failed.add_row(f.folder, f.reason, f.error)
        console.print(failed)
    if summary.left:
        left = Table(title="not tracked yet")
        left.add_column("folder", overflow="fold")
        left.add_column("why", overflow="fold")
        for folder, reason in summary.left:
            left.add_row(folder, reason)
        console.print(left)


class _NoProgress:
    """Not on a terminal: the service's log events are the progress."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, service: Service, waiting: str) -> None:
        return None


class _BarProgress(_NoProgress):
    """A rich progress bar on `err`: folders done (tracked or failed) of those queued so far.

    The total grows while the start-up scan queues folders and shrinks when an incomplete folder
    is skipped, so it is recomputed on every update."""

    def __init__(self, err: TextIO) -> None:
        self._progress = Progress(
            TextColumn("tracking"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=Console(file=err, force_terminal=True),
            redirect_stdout=False, redirect_stderr=True)
        self._task: TaskID | None = None

    def __enter__(self) -> _BarProgress:
        self._progress.start()
        self._task = self._progress.add_task("sync", total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, service: Service, waiting: str) -> None:
        """`waiting`: what the sync waits for when it has not progressed for a while ("" otherwise)."""
        assert self._task is not None
        c = service.outcomes.totals()
        done = c["tracked"] + c["failed"]
        total = done + len(service.index) + len(service.index.in_flight())
        detail = f"{c['failed']} failed, {c['retried']} retried" + (f"; waiting: {waiting}" if waiting else "")
        self._progress.update(self._task, completed=done, total=total, detail=detail)


def _progress_for(err: TextIO) -> _NoProgress:
    return _BarProgress(err) if err.isatty() else _NoProgress()
