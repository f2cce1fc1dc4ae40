"""The daemon's lifecycle: start, run, drain, stop, reload.

    STARTING --start()--> RUNNING --request_stop()--> DRAINING --> STOPPED
                                   --request_abort()------------> STOPPED

Threads: the watchdog observers (events -> index), one start-up scan (folders -> index as they
are found), `workers` worker threads (index -> FolderProcessor -> index), a lease keeper, the
control socket and metrics listeners, and the caller's thread running `run()`: reloads, probes of
a paused API, observer health, reconciliation scans, systemd notifications and nothing else.

Runtime state has one owner each: the folder index (`watcher.daemon.index`: what is known about each
folder, and the queue), the gate (`watcher.daemon.gate`: pauses and holds), the outcome counts
(`watcher.daemon.outcomes`), the concurrency limit and the API calls' pace (`concurrency`, `pacing`), and
the configuration, one reference (`self.config`) that every component reads through a callable each time.
Signals call request_stop/request_abort/request_reload on a relay thread, never in a handler (`daemon.signals`).
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from watcher import __version__
from watcher.cloud.client import NextmvClient, RequestOutcome, Transport
from watcher.cloud.lookup import RunLookup
from watcher.cloud.tracker import Limits, Tracker
from watcher.cloud.transport import build_verify
from watcher.config import Config, load_config
from watcher.daemon import aftercare, commands
from watcher.daemon.aftercheck import LateChecks
from watcher.daemon.attempt import Attempts
from watcher.daemon.chores import Chores
from watcher.daemon.concurrency import Concurrency
from watcher.daemon.detectors import Detectors
from watcher.daemon.gate import Gate
from watcher.daemon.health import Health
from watcher.daemon.identity import describe
from watcher.daemon.index import FolderIndex
from watcher.daemon.lease import LeaseKeeper
from watcher.daemon.listeners import Listeners, Prepared
from watcher.daemon.metrics import Metrics
from watcher.daemon.notify import Notifier
from watcher.daemon.observers import ObserverFactory
from watcher.daemon.openfiles import OpenFiles
from watcher.daemon.outcomes import Outcomes
from watcher.daemon.pacing import Pacing
from watcher.daemon.reload import diff
from watcher.daemon.scanning import startup_scan
from watcher.daemon.sharedfile import SharedFile
from watcher.daemon.sharedhold import SharedHold
from watcher.daemon.sharedpace import SharedPacing
from watcher.daemon.worker import FolderProcessor
from watcher.errors import ConfigError, ListenerError
from watcher.runfolder.claims import Claims
from watcher.runfolder.dirhandle import DirHandle
from watcher.runfolder.markers import StateStore, trusted_owners
from watcher.runfolder.prepare import clean_spool
from watcher.runfolder.runjson import json_turn, turn_over

log = structlog.get_logger("watcher.daemon.service")
JSON_TURN_FILE = "json-turn"   # `processes`: the state directory's file whose flock is big JSON's turn


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_TRANSITIONS = {State.STARTING: {State.RUNNING, State.STOPPED}, State.RUNNING: {State.DRAINING, State.STOPPED},
                State.DRAINING: {State.STOPPED}, State.STOPPED: set()}


class Service:
    def __init__(self, config: Config, api_key: str, *, clock: Callable[[], float] = time.time,
                 observer_factory: ObserverFactory | None = None,
                 transport: Transport | None = None, watch: bool = True,
                 recheck_incomplete: bool = True, notifier: Notifier | None = None,
                 on_reload: Callable[[Config], None] | None = None, daemon: bool = True,
                 supervisor_pid: int | None = None, config_env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.state = State.STARTING
        self.started_at = clock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._wake = threading.Event()
        self._reload = threading.Event()
        self.ready = threading.Event()
        self.watching = watch
        self.on_reload, self._config_env = on_reload, config_env   # env: a reload's (process 0 of `processes`)
        # The state directory's daemon (`run`, holding its lock) cleans the spool and logs daemon_*; a `sync`
        # beside it must not remove the spool files it is uploading, and logs its own events.
        self._daemon = daemon
        self.notifier = notifier or (Notifier() if watch else Notifier({}))
        current = self.current_config

        self.index = FolderIndex(clock, config.shard)
        self.outcomes = Outcomes(clock)
        self.metrics = Metrics(self.status, self.outcomes.series, self.health)
        self.store = StateStore.of(config)
        self.spool_dir = config.state_dir / "spool"
        self.client = NextmvClient(
            config.api.url, api_key, connect_timeout=config.api.connect_timeout_seconds,
            read_timeout=config.api.read_timeout_seconds, verify=build_verify(config.api.ca_bundle),
            transport=transport, max_connections=config.workers * 3 + 2, observer=self._on_request,
            clock=clock, hold=lambda: self.gate.held_for() or self.pacing.delay(),   # the gate's hold, then the pace
        )
        self.concurrency = Concurrency(current)
        # `processes`: the pace (the supervisor's rule), a 429's hold, big JSON's turn: shared files, closed at the end
        self.pacing: Pacing | SharedPacing = Pacing()
        hold, turn, self._shared = None, json_turn, list[SharedPacing | SharedHold | SharedFile]()
        if config.shard[1] > 1:
            self.pacing = SharedPacing(config.state_dir, self.notifier.send)
            hold, turn_file = SharedHold(config.state_dir), SharedFile(config.state_dir, JSON_TURN_FILE, 0)
            turn, self._shared = turn_over(turn_file.exclusive), [self.pacing, hold, turn_file]
        self.gate = Gate(clock, config=current, client=self.client, unpark=self.index.unpark, shared=hold)
        self._upload_threads = max(4, config.workers * 2)
        self.executor = ThreadPoolExecutor(max_workers=self._upload_threads, thread_name_prefix="upload")
        self.lookup = RunLookup(self.client, clock=clock, max_pages=lambda: self.config.api.lookup_max_pages)
        self.tracker = Tracker(self.client, self.store, self.spool_dir, executor=self.executor, lookup=self.lookup,
                               clock=clock, progress=self._on_bytes,
                               limits=lambda: Limits.of(self.config, paced=self.pacing.rate() is not None))
        self.claims = Claims(clock=clock, store=self.store)
        self.keeper = LeaseKeeper(self.claims)
        self.attempts = Attempts(self.store, self.claims, self.keeper, self.tracker, turn)
        self.open_files = OpenFiles(clock)
        self.late_checks = LateChecks(clock)
        self.detectors = Detectors(config.watch, self.index.offer, observer_factory=observer_factory,
                                   on_overflow=self._on_overflow, open_files=self.open_files)
        self.processor = FolderProcessor(
            current, self.index, self.store, self.attempts, self.gate, self.outcomes,
            watch_folder=self._watch_folder, unwatch_folder=self.detectors.unwatch_folder, clock=clock,
            recheck_incomplete=recheck_incomplete, after_tracked=self._after_tracked_safely,
            activity=self.open_files.activity, late_checks=self.late_checks)
        self.listeners = Listeners(self.handle_control, self.metrics, self.health, self.identity)
        self._workers: list[threading.Thread] = []
        self._target_workers = config.workers
        self._scanner: threading.Thread | None = None
        self.health_view = Health(
            config=current, index=self.index, gate=self.gate, outcomes=self.outcomes, pacing=self.pacing.rate,
            detectors=self.detectors, watching=watch, workers=lambda: self._workers[: self._target_workers],
            state=lambda: self.state.value, clock=clock, concurrency=self.concurrency.snapshot)
        self.chores = Chores(config=current, clock=clock, index=self.index, store=self.store, gate=self.gate,
                             detectors=self.detectors, health=self.health_view, notifier=self.notifier,
                             watching=watch, stopping=self._stop, supervisor=supervisor_pid,
                             on_orphaned=self.request_stop)

    def current_config(self) -> Config:
        """The configuration in force: the one reference every component reads (a reload replaces it)."""
        return self.config

    # -- lifecycle -------------------------------------------------------------------------

    def _transition(self, new: State) -> None:
        with self._state_lock:
            if new not in _TRANSITIONS[self.state]:
                raise RuntimeError(f"cannot go from {self.state.value} to {new.value}")
            self.state = new

    def start(self) -> None:
        """Start observers, the start-up scan, the workers and the listeners.
        Raises OSError if a watched path cannot be watched at all, ListenerError (naming the key and
        the address) if a listener cannot be bound."""
        if self.state is not State.STARTING:
            raise RuntimeError(f"cannot start a service that is {self.state.value}")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        removed = clean_spool(self.spool_dir) if self._daemon else 0
        if removed:
            log.info("spool_cleaned", files=removed)
        if self.watching:
            self.detectors.start()
        self.keeper.start()
        if self.watching:
            self.listeners.start(self.config)
        self._resize_workers(self.config.workers)
        self._transition(State.RUNNING)
        self._scanner = threading.Thread(target=self._startup_scan, name="startup-scan", daemon=True)
        self._scanner.start()   # last: its end sends READY=1, by when `status` must say running
        if self._daemon:
            log.info("daemon_started", watched=[str(w.path) for w in self.config.watch],
                     workers=self.config.workers, api=self.config.api.url, pid=os.getpid(), version=__version__)

    def request_stop(self) -> None:
        """First stop request: drain. A second one aborts. Any thread, never a signal handler (see above)."""
        if self._stop.is_set():
            self.request_abort()
            return
        self._stop.set()
        self._wake.set()

    def request_abort(self) -> None:
        self._abort.set()
        self._stop.set()
        self.client.cancel.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Reload the configuration file (SIGHUP). Any thread, never a signal handler (see above)."""
        self._reload.set()
        self._wake.set()

    def run(self) -> None:
        """Run until a stop is requested, then drain. Returns when stopped."""
        while not self._stop.is_set():
            self._tick()
            self._wake.wait(self.chores.next_wait())
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
            self._wake.wait(min(0.05, self.chores.next_wait()))
            self._wake.clear()
        return self.is_idle()

    def is_idle(self) -> bool:
        """Nothing is being scanned, scheduled, in flight or paused."""
        return (self._scanner is None or not self._scanner.is_alive()) and not self.index.in_flight() \
            and len(self.index) == 0 and not self.gate.is_paused()

    def shutdown(self) -> None:
        """Drain: stop taking work, let in-flight folders finish up to the drain timeout, stop everything."""
        if self.state is State.STOPPED:
            return
        if self.state is State.RUNNING:
            self._transition(State.DRAINING)
        self._stop.set()
        self.notifier.stopping()
        if self._daemon:
            log.info("daemon_stopping", in_flight=len(self.index.in_flight()), queued=len(self.index))
        self.index.close()
        self.concurrency.close()
        deadline = time.monotonic() + self.config.drain_timeout_seconds
        for t in self._workers:
            while t.is_alive() and not self._abort.is_set() and time.monotonic() < deadline:
                t.join(timeout=0.1)
        left = [t.name for t in self._workers if t.is_alive()]
        if left:
            log.warning("drain_timeout", workers=left, hint="their folders resume from the journal next time")
            self.client.cancel.set()
        self.detectors.stop()
        self.keeper.stop()
        self.listeners.stop()
        self.executor.shutdown(wait=not left, cancel_futures=True)
        if not left:   # a worker still running may yet read or lock these
            self.client.close()
            for shared in self._shared:
                shared.close()
        self.notifier.close()
        self._transition(State.STOPPED)
        if self._daemon:
            log.info("daemon_stopped")

    # -- what the outside sees -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.health_view.status()

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.health_view.health()

    def identity(self) -> dict[str, Any]:
        """Which daemon this is (see `watcher.daemon.identity`): carried by every control-socket answer."""
        return describe(self.config, os.getpid())

    def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        return commands.handle(self, request)

    # -- threads ---------------------------------------------------------------------------

    def _watch_folder(self, folder: Path) -> bool:
        return self.detectors.watch_folder(folder) if self.watching else False

    def _startup_scan(self) -> None:
        scanned = startup_scan(self.config, self.store, self.index, stop=self._stop,
                               resume_after_tracking=self._after_tracked_safely)
        if scanned is None:
            return
        self.ready.set()
        log.info("startup_scan_done", queued=scanned.queued, finished=scanned.finished, seconds=scanned.seconds)
        self.notifier.ready(self.health_view.status_line())

    def _resize_workers(self, count: int) -> None:
        self._target_workers = count
        if count * 2 > self._upload_threads:   # a run's artifacts upload in parallel: room for every worker's
            self._upload_threads = count * 2
            old, self.executor = self.executor, ThreadPoolExecutor(max_workers=self._upload_threads,
                                                                   thread_name_prefix="upload")
            self.tracker.executor = self.executor
            old.shutdown(wait=False)
        self._workers = [t for i, t in enumerate(self._workers) if t.is_alive() or i >= count]
        while len(self._workers) < count:
            index = len(self._workers)
            t = threading.Thread(target=self._work, args=(index,), name=f"worker-{index}", daemon=True)
            t.start()
            self._workers.append(t)
        self.index.wake()

    def _work(self, number: int) -> None:
        try:
            while not self._stop.is_set() and number < self._target_workers:
                with self.concurrency.slot(self.index.take, timeout=5.0, slot_timeout=60.0) as folder:  # see slot()
                    if folder is not None:
                        found = self.processor.process(folder)
                        self.health_view.progressed()
                        self.index.settle(folder, found)
        finally:
            self.concurrency.wake()   # its slot is free for good: a waiting worker takes it

    def _on_bytes(self, n: int) -> None:
        self.health_view.progressed()
        self.metrics.upload_bytes(n)

    def _on_request(self, outcome: RequestOutcome) -> None:
        self.health_view.progressed()
        self.metrics.request(outcome)
        for observe in (self.gate.observe, self.concurrency.observe, self.pacing.observe):
            observe(outcome)

    def _after_tracked_safely(self, folder: Path, d: DirHandle | None = None) -> bool:
        """Keep, move or delete a tracked folder (see `aftercare.after_tracked_logged`); True when it is gone."""
        gone = aftercare.after_tracked_logged(folder, self.config, d)
        if gone:
            self.index.forget(folder)
        return gone

    def _on_overflow(self) -> None:
        # Called on watchdog's thread: only set flags.
        self.rescan("inotify queue overflowed: events were lost", lost=True)

    def rescan(self, reason: str, *, full: bool = False, lost: bool = False) -> None:
        self.chores.rescan(reason, full=full, lost=lost)
        self._wake.set()

    # -- the main thread --------------------------------------------------------------------

    def _tick(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self._apply_reload()
        self.chores.tick()
        self.late_checks.run_due()

    def _apply_reload(self) -> None:
        """SIGHUP: validate the file and bind any new listener first; if either fails, keep running as
        before. Then switch: one assignment of the configuration every component reads, and the parts
        that hold resources follow (listeners, observers, workers, the index, pauses, metric series)."""
        self.notifier.reloading()
        old = self.config
        try:
            new = load_config(Path(old.source), env=self._config_env)
            changes = diff(old, new)
            prepared = self.listeners.prepare(old, new) if self.watching else Prepared()
        except (ConfigError, ListenerError) as exc:
            fields = {"key": exc.key, "address": exc.address} if isinstance(exc, ListenerError) else {}
            log.error("reload_failed", error=str(exc), action="keeping the running configuration", **fields)
            self.notifier.ready(self.health_view.status_line())
            return
        self.config = new
        self.listeners.switch(prepared)
        self.store.owners = trusted_owners(new.state_owners, new.state_dir)
        if changes.added or changes.removed or any(k.startswith("watch[") for k in changes.changed):
            if self.watching:
                self.detectors.reconfigure(new.watch)
            self.index.drop_under(Path(p) for p in changes.removed)
        applications = {w.application_id for w in new.watch}
        self.gate.forget_applications(applications)
        self.outcomes.drop_applications(applications)
        if new.workers != self._target_workers:
            self._resize_workers(new.workers)
        self.concurrency.wake()   # workers or concurrency may have changed: the limit is read anew
        if changes.restart_required:
            log.warning("reload_partial", restart_required=changes.restart_required,
                        hint="the API connection settings and state_dir take effect at the next start")
        log.info("config_reloaded", added=changes.added, removed=changes.removed, changed=changes.changed,
                 restart_required=changes.restart_required, workers=new.workers, level=new.logging.level)
        if self.on_reload is not None:
            self.on_reload(new)   # after the event above, so that a quieter level does not hide it
        self.notifier.ready(self.health_view.status_line())
        self.rescan("configuration reloaded")
