"""The daemon's lifecycle: start, run, drain, stop.

    STARTING --start()--> RUNNING --request_stop()--> DRAINING --> STOPPED
                                   --request_abort()------------> STOPPED

Threads: watchdog's observer (events -> queue), one start-up scan (folders -> queue as they
are found), `workers` worker threads (queue -> FolderProcessor), a lease keeper, and the
caller's thread running `run()`: periodic reconciliation scans, probes of a paused API, and
nothing else. Signal handlers (installed by the CLI) only call request_stop/request_abort,
which set flags.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import structlog

from watcher.claim import Claims, LeaseKeeper
from watcher.client import NextmvClient, RequestOutcome, build_verify
from watcher.config import Config, resolve_api_key
from watcher.errors import ApiError, ApplicationNotFound, AuthError, ConfigError
from watcher.logs import REDACTOR
from watcher.lookup import RunLookup
from watcher.prepare import clean_spool
from watcher.queue import WorkQueue
from watcher.retry import GLOBAL, ApiGate
from watcher.scan import iter_folders, quick_state
from watcher.state import StateStore
from watcher.tracker import Tracker
from watcher.watch import Detector, ObserverFactory
from watcher.worker import FolderProcessor

log = structlog.get_logger("watcher.service")
FULL_RECONCILE_EVERY = 12   # every Nth reconciliation also re-reads the markers of finished folders


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_TRANSITIONS = {
    State.STARTING: {State.RUNNING, State.STOPPED},
    State.RUNNING: {State.DRAINING, State.STOPPED},
    State.DRAINING: {State.STOPPED},
    State.STOPPED: set(),
}


class Service:
    def __init__(self, config: Config, api_key: str, *, clock: Callable[[], float] = time.time,
                 observer_factory: ObserverFactory | None = None,
                 transport: httpx.BaseTransport | None = None, watch: bool = True,
                 recheck_incomplete: bool = True) -> None:
        self.config = config
        self.clock = clock
        self.state = State.STARTING
        self.started_at = clock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._wake = threading.Event()
        self.ready = threading.Event()
        self.watching = watch
        self.recheck_incomplete = recheck_incomplete

        self.store = StateStore(config.state_dir)
        self.spool_dir = config.state_dir / "spool"
        self.queue = WorkQueue(clock)
        self.gate = ApiGate(clock)
        self.client = NextmvClient(
            config.api.url, api_key, connect_timeout=config.api.connect_timeout_seconds,
            read_timeout=config.api.read_timeout_seconds, verify=build_verify(config.api.ca_bundle),
            transport=transport, max_connections=max(16, config.workers * 4), observer=self._on_request,
            clock=clock,
        )
        self.executor = ThreadPoolExecutor(max_workers=max(4, config.workers * 2), thread_name_prefix="upload")
        self.lookup = RunLookup(self.client, clock=clock)
        self.tracker = Tracker(self.client, self.store, self.spool_dir, executor=self.executor,
                               lookup=self.lookup, clock=clock, grace_seconds=config.retry.lookup_grace_seconds)
        self.claims = Claims(clock=clock, fallback_dir=self.store.fallback_dir)
        self.keeper = LeaseKeeper(self.claims)
        roots = [w.path for w in config.watch]
        self.detector = (Detector(roots, self._enqueue, observer_factory=observer_factory,
                                  on_overflow=self._on_overflow)
                         if observer_factory else Detector(roots, self._enqueue, on_overflow=self._on_overflow))
        self._reconcile_now = threading.Event()
        self._rescan_reason = ""
        self.observer_restarts = 0
        self.processor = FolderProcessor(
            config, self.store, self.claims, self.keeper, self.tracker, self.gate,
            watch_folder=self._watch_folder, unwatch_folder=self.detector.unwatch_folder, clock=clock,
            recheck_incomplete=recheck_incomplete)
        self._workers: list[threading.Thread] = []
        self._scanner: threading.Thread | None = None
        self._reconciles = 0
        self._next_reconcile = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def _transition(self, new: State) -> None:
        with self._state_lock:
            if new not in _TRANSITIONS[self.state]:
                raise RuntimeError(f"cannot go from {self.state.value} to {new.value}")
            self.state = new

    def start(self) -> None:
        """Start observers, the start-up scan and the workers. Raises OSError if a path cannot be watched."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        removed = clean_spool(self.spool_dir)
        if removed:
            log.info("spool_cleaned", files=removed)
        if self.watching:
            self.detector.start()
        self.keeper.start()
        self._scanner = threading.Thread(target=self._startup_scan, name="startup-scan", daemon=True)
        self._scanner.start()
        for i in range(self.config.workers):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        self._next_reconcile = self.clock() + self.config.reconcile_seconds
        self._transition(State.RUNNING)
        log.info("daemon_started", watched=[str(w.path) for w in self.config.watch],
                 workers=self.config.workers, api=self.config.api.url)

    def request_stop(self) -> None:
        """First stop request: drain. Safe to call from a signal handler."""
        if self._stop.is_set():
            self.request_abort()
            return
        self._stop.set()
        self._wake.set()

    def request_abort(self) -> None:
        """Second stop request: stop waiting for in-flight work."""
        self._abort.set()
        self._stop.set()
        self.client.cancel.set()
        self._wake.set()

    def run(self) -> None:
        """Run until a stop is requested, then drain. Returns when stopped."""
        while not self._stop.is_set():
            self._tick()
            self._wake.wait(self._next_wait())
            self._wake.clear()
        self.shutdown()

    def run_until_idle(self, timeout: float | None = None) -> bool:
        """Process until nothing is queued, in flight or paused (for `sync` and tests). True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._scanner is not None:
            self._scanner.join()
        while not self._stop.is_set():
            self._tick()
            if self.is_idle():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._wake.wait(min(0.05, self._next_wait()))
            self._wake.clear()
        return self.is_idle()

    def is_idle(self) -> bool:
        return (self._scanner is None or not self._scanner.is_alive()) and not self.queue.in_flight() \
            and len(self.queue) == 0 and not self.gate.is_paused()

    def shutdown(self) -> None:
        """Drain: stop taking work, let in-flight folders finish up to the drain timeout, stop everything."""
        if self.state is State.STOPPED:
            return
        if self.state is State.RUNNING:
            self._transition(State.DRAINING)
        self._stop.set()
        in_flight = self.queue.in_flight()
        log.info("daemon_stopping", in_flight=len(in_flight), queued=len(self.queue))
        self.queue.close()
        deadline = time.monotonic() + self.config.drain_timeout_seconds
        for t in self._workers:
            while t.is_alive() and not self._abort.is_set() and time.monotonic() < deadline:
                t.join(timeout=0.1)
        left = [t.name for t in self._workers if t.is_alive()]
        if left:
            log.warning("drain_timeout", workers=left, hint="their folders resume from the journal next time")
            self.client.cancel.set()
        self.detector.stop()
        self.keeper.stop()
        self.executor.shutdown(wait=not left, cancel_futures=True)
        if not left:
            self.client.close()
        self._transition(State.STOPPED)
        log.info("daemon_stopped")

    # -- threads ---------------------------------------------------------------------------

    def _enqueue(self, folder: Path) -> None:
        self.queue.put(folder)

    def _watch_folder(self, folder: Path) -> bool:
        return self.detector.watch_folder(folder) if self.watching else False

    def _startup_scan(self) -> None:
        queued = finished = 0
        started = time.monotonic()
        for watch in self.config.watch:
            for folder in iter_folders(watch.path):
                if self._stop.is_set():
                    return
                if quick_state(self.store, folder) is not None:
                    self.processor.finished.add(folder)
                    finished += 1
                else:
                    self.queue.put(folder)
                    queued += 1
        self.ready.set()
        log.info("startup_scan_done", queued=queued, finished=finished,
                 seconds=round(time.monotonic() - started, 3))

    def _work(self) -> None:
        while not self._stop.is_set():
            folder = self.queue.get(timeout=0.5)
            if folder is None:
                continue
            self.queue.done(folder, self.processor.process(folder))

    def _on_request(self, outcome: RequestOutcome) -> None:
        if outcome.error is None:
            self.gate.record_success()
        elif outcome.error in ("transient", "uncertain") and self.gate.record_transient(
                f"{outcome.endpoint}: {outcome.status or 'no response'}"):
            log.error("api_paused", reason="unreachable", endpoint=outcome.endpoint, status=outcome.status,
                      hint="every recent request failed; work resumes by itself when the API answers")

    # -- periodic work in the main thread ---------------------------------------------------

    def _next_wait(self) -> float:
        now = self.clock()
        times = [self._next_reconcile]
        probe = self.gate.next_probe_at()
        if probe is not None:
            times.append(probe)
        return max(0.01, min(1.0, min(times) - now))

    def _tick(self) -> None:
        self._probe()
        self._check_observer()
        if self._reconcile_now.is_set() or self.clock() >= self._next_reconcile:
            if self._reconcile_now.is_set():
                self._reconcile_now.clear()
                log.warning("rescanning", reason=self._rescan_reason)
            self._reconcile()
            self._next_reconcile = self.clock() + self.config.reconcile_seconds

    def _on_overflow(self) -> None:
        # Called on watchdog's thread: only set flags.
        self._rescan_reason = "inotify queue overflowed: events were lost"
        self._reconcile_now.set()
        self._wake.set()

    def _check_observer(self) -> None:
        """A dead observer is replaced and the watched paths rescanned, so no folder is missed."""
        if not self.watching or self.detector.alive() or self._stop.is_set():
            return
        self.observer_restarts += 1
        log.error("observer_died", restarts=self.observer_restarts, action="restarting it and rescanning")
        try:
            self.detector.restart()
        except OSError as exc:
            log.error("observer_restart_failed", error=str(exc), action="polling instead")
            self.detector.use_polling(2.0)
            self.detector.restart()
        self._rescan_reason = "observer restarted"
        self._reconcile_now.set()

    def _reconcile(self) -> None:
        """Queue folders the observer may have missed; finished ones are skipped by name."""
        self._reconciles += 1
        full = self._reconciles % FULL_RECONCILE_EVERY == 0
        busy = set(self.queue.snapshot()) | self.queue.in_flight()
        queued = 0
        for watch in self.config.watch:
            for folder in iter_folders(watch.path):
                if folder in busy:
                    continue
                if folder in self.processor.finished:
                    if not full or quick_state(self.store, folder) is not None:
                        continue
                    self.processor.finished.discard(folder)
                if quick_state(self.store, folder) is None:
                    self.queue.put(folder)
                    queued += 1
        if queued:
            log.info("reconcile_queued", folders=queued, full=full)

    def _probe(self) -> None:
        for scope, pause in self.gate.due_probes():
            app = scope if scope != GLOBAL else self.config.watch[0].application_id
            if pause.reason == "auth":
                self._reload_key()
            try:
                self.client.get_application(app, attempts=1)
            except AuthError as exc:
                self.gate.still_closed(scope, "auth", str(exc))
                continue
            except ApplicationNotFound as exc:
                if scope == GLOBAL:
                    self._reopen(GLOBAL)
                    if self.gate.close(app, "application_not_found", str(exc)):
                        log.error("application_paused", application_id=app, error=str(exc))
                else:
                    self.gate.still_closed(scope, "application_not_found", str(exc))
                continue
            except ApiError as exc:
                self.gate.still_closed(scope, "unreachable", str(exc))
                continue
            self._reopen(scope)

    def _reopen(self, scope: str) -> None:
        pause, parked = self.gate.opened(scope)
        if pause is None:
            return
        log.info("api_resumed", scope="all" if scope == GLOBAL else scope, paused_for=round(
            self.clock() - pause.since, 1), reason=pause.reason, folders=len(parked))
        for folder in parked:
            self.queue.put(folder)

    def _reload_key(self) -> None:
        try:
            key, _ = resolve_api_key(self.config.api)
        except ConfigError:
            return
        REDACTOR.add_secret(key)
        self.client.set_api_key(key)
