"""`run` (the daemon in the foreground) and `sync` (every complete folder once, then exit)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from watcher import config as configuration
from watcher import logs
from watcher.cli.common import (
    FAILED,
    USAGE,
    api_key,
    load,
    locate_api_key,
    log,
    require_a_watched_path,
)
from watcher.cli.hardening import scrub_variable
from watcher.config import LOG_LEVELS, PREVIOUS_DEFAULT, SHARD_ENV, Config
from watcher.daemon import allocator, cpupolicy
from watcher.daemon.daemonlock import LOCK_NAME, DaemonLock
from watcher.daemon.identity import config_path
from watcher.daemon.inprocess import serve
from watcher.daemon.notify import Notifier
from watcher.daemon.signals import SignalRelay
from watcher.errors import StateDirInUse

if TYPE_CHECKING:
    from watcher.daemon.service import Service


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: one per state directory (`daemonlock`); a second one exits 2 naming the first."""
    config = load(args)
    logs.configure(config.logging.level, config.logging.format)
    require_a_watched_path(config)   # the missing ones are logged (watched_path_missing) once it starts
    if config.state_dir_from == PREVIOUS_DEFAULT:
        system = configuration.SYSTEM_STATE_DIR
        log.warning("state_dir_previous_default", state_dir=str(config.state_dir), default=str(system),
                    reason="state found here (read-only folders' markers, open intents) is kept, not moved",
                    hint=f"set state_dir: {config.state_dir} in {config.source} to keep it, or move it to "
                         f"{system} while the daemon is stopped")
    if os.environ.get(SHARD_ENV):   # one of `processes`, started by the supervisor (which holds the lock)
        return _run_shard(config)
    try:
        lock = DaemonLock.acquire(config.state_dir, config=config_path(config))
    except StateDirInUse as exc:
        log.error("start_failed", error=str(exc), state_dir=exc.state_dir, holder_pid=exc.pid,
                  holder_config=exc.config)
        return USAGE
    except OSError as exc:
        log.error("start_failed", error=f"state_dir {config.state_dir}: cannot lock {LOCK_NAME}: {exc.strerror}")
        return FAILED
    try:
        return _supervise(config, lock) if config.processes > 1 else _run(config)
    finally:
        lock.release()


def _supervise(config: Config, lock: DaemonLock) -> int:
    """`processes` > 1: this process supervises the others and does process 0's share of the work on a
    thread (`watcher.daemon.supervisor`); every event it logs carries `shard` 0/N."""
    from watcher.daemon.service import Service
    from watcher.daemon.shard import Shard
    from watcher.daemon.supervisor import Supervisor

    key, source = locate_api_key(config)
    from_env = source == f"${config.api.key_env}"
    if from_env:
        scrub_variable(config.api.key_env)
    logs.bind_static(shard=str(Shard(0, config.processes)))
    prepare_process()

    def local(env: Mapping[str, str]) -> Service:   # process 0's share, read as a child would read the file
        return Service(configuration.load_config(Path(config.source), env=env), key, notifier=Notifier(env),
                       on_reload=_relog, config_env=env)

    supervisor = Supervisor(config, lock_fd=lock.fd, key_env={config.api.key_env: key} if from_env else {},
                            local=local, forked_main=lambda: _forked_run(config.source))
    with supervisor.signals():
        return supervisor.run()


def _forked_run(source: str) -> int:
    """A child the supervisor forked (`watcher.daemon.forked`): what `nextmv-watcher run --config source`
    does in a child it starts with exec, its errors and exit codes included."""
    from watcher.cli import main

    return main(["run", "--config", source])


def _run_shard(config: Config) -> int:
    """A child of the supervisor: its lock is the supervisor's, inherited (checked, never taken anew); it
    stops when the supervisor is gone (its parent is no longer the pid the supervisor gave)."""
    from watcher.daemon.shard import Shard
    from watcher.daemon.supervisor import LOCK_FD_ENV, SUPERVISOR_PID_ENV

    try:
        DaemonLock.inherited(int(os.environ.get(LOCK_FD_ENV, "")))
        supervisor = int(os.environ.get(SUPERVISOR_PID_ENV, ""))
    except (ValueError, OSError):
        log.error("start_failed", error=f"${SHARD_ENV} is set by nextmv-watcher for the processes it starts "
                                        f"(processes: N); this one has no state directory lock of theirs")
        return USAGE
    logs.bind_static(shard=str(Shard(*config.shard)))
    if os.getppid() != supervisor:   # killed while this process started
        log.error("supervisor_gone", supervisor_pid=supervisor, action="exiting", hint="start nextmv-watcher again")
        return FAILED
    return _run(config, supervisor)


def _run(config: Config, supervisor: int | None = None) -> int:
    """The daemon, its state directory locked. Exit code: 2 when a listener cannot bind (naming it)."""
    from watcher.daemon.service import Service

    prepare_process()
    service = Service(config, api_key(config, scrub_env=True), on_reload=_relog, supervisor_pid=supervisor)
    with relay_signals(service):
        return serve(service)


def _relog(new: Config) -> None:
    logs.configure(new.logging.level, new.logging.format)


def prepare_process() -> None:
    """Before a daemon's threads start. Threads that come back from I/O (the start-up scan's stats, HTTP
    answers) wait for the GIL at most 1 ms instead of the default 5 ms; measured: the 100,000-folder scan
    under load goes faster."""
    sys.setswitchinterval(0.001)
    tune_allocator()
    log.debug("cpu_scheduling", policy=cpupolicy.apply())   # SCHED_BATCH: see watcher.daemon.cpupolicy


def tune_allocator() -> None:
    """Before the threads start: big JSON documents must not leave every malloc arena full."""
    log.debug("allocator_tuned", settings=allocator.tune())


def relay_signals(service: Service) -> SignalRelay:
    """SIGTERM and SIGINT drain (a second one aborts), SIGHUP reloads: called on the relay's thread, never in a
    signal handler, which could run while the main loop holds the lock of the event it would set
    (`watcher.daemon.signals`). Not started: use it as a context manager, on the main thread."""
    return SignalRelay({signal.SIGTERM: service.request_stop, signal.SIGINT: service.request_stop,
                        signal.SIGHUP: service.request_reload})


def cmd_sync(args: argparse.Namespace) -> int:
    from watcher.daemon.sync import run_sync

    config = load(args)
    if sys.stderr.isatty():
        # The progress bar owns the terminal: only warnings and errors are logged, above it.
        level = config.logging.level if LOG_LEVELS.index(config.logging.level) >= LOG_LEVELS.index("warning") \
            else "warning"
        logs.configure(level, config.logging.format, stream=cast(TextIO, _CurrentStderr()))
    else:
        logs.configure(config.logging.level, config.logging.format)
    tune_allocator()
    return run_sync(config, api_key(config), out=sys.stdout, err=sys.stderr, timeout=args.timeout)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time, so that log lines go through the progress bar's
    redirection and appear above it instead of tearing it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()
