"""The command line: `main(argv) -> exit code`. The only place that configures logging or exits.

Exit codes: 0 success, 1 an operational failure (a folder could not be tracked, the API
refused the key), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, cast

import structlog

from watcher import __version__, logs
from watcher.attempt import Attempts, Job
from watcher.claim import Claims, LeaseKeeper
from watcher.client import NextmvClient, build_verify
from watcher.config import (
    LOG_LEVELS,
    Config,
    FilesConfig,
    FormatConfig,
    default_control_socket,
    default_state_dir,
    key_file_is_shared,
    load_config,
    resolve_api_key,
    resolve_config_path,
)
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    ConfigError,
    FolderError,
    StateError,
    UnsafeStateFile,
    WatcherError,
)
from watcher.hardening import disabled_link_protections, scrub_variable
from watcher.lookup import RunLookup
from watcher.rundir import RunDir
from watcher.scan import iter_folders, quick_state, scan_all
from watcher.state import FAILED as FAILED_MARKER
from watcher.state import JOURNAL, StateStore
from watcher.state import TRACKED as TRACKED_MARKER
from watcher.status import format_status, print_scan_status
from watcher.tracker import Tracker

OK, FAILED, USAGE = 0, 1, 2
log = structlog.get_logger("watcher.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nextmv-watcher",
                                description="Track run folders in Nextmv Cloud, exactly once. See README.md.")
    p.add_argument("--version", action="version", version=f"nextmv-watcher {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_)

    def with_config(c: argparse.ArgumentParser) -> None:
        c.add_argument("--config", metavar="F", help="config file (default: $NEXTMV_WATCHER_CONFIG, "
                                                     "else /etc/nextmv-watcher/config.yaml)")

    with_config(cmd("run", "run the daemon in the foreground"))
    c = cmd("track", "track one folder now, ignoring completion rules")
    c.add_argument("folder", type=Path)
    c.add_argument("--application-id", metavar="A", help="application to track it in (default: its watched path's)")
    with_config(c)
    c = cmd("scan", "list every folder under the watched paths with its state, uploading nothing")
    c.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    with_config(c)
    c = cmd("check", "validate the configuration and the API key, and that each application exists")
    c.add_argument("--offline", action="store_true", help="check the configuration only, no API calls")
    with_config(c)
    c = cmd("retry", "forget the failed marker of a folder (or of every failed folder) so that it is tracked again")
    c.add_argument("folder", type=Path, nargs="?", help="the failed folder (or --all-failed)")
    c.add_argument("--all-failed", action="store_true", help="every failed folder under the watched paths")
    c.add_argument("--application", metavar="A", help="with --all-failed: only folders of application A")
    with_config(c)
    c = cmd("forget", "remove a folder's tracked marker so that it is tracked again (as a new run)")
    c.add_argument("folder", type=Path)
    c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    with_config(c)
    c = cmd("status", "show the running daemon's state (or, without one, a scan summary)")
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    with_config(c)
    c = cmd("sync", "track every complete folder once, without a daemon, then exit")
    with_config(c)
    c = cmd("fake-cloud", "run a local emulator of the Nextmv runs API (for trying things out)")
    c.add_argument("--port", type=int, default=8765)
    c.add_argument("--api-key", default="demo-key", help="the API key it accepts (default: demo-key)")
    c = cmd("demo", "run the emulator and the daemon on sample folders in a temporary directory")
    c.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"nextmv-watcher: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return FAILED


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(getattr(args, "config", None)))


def _api_key(config: Config, *, scrub_env: bool = False) -> str:
    """The API key (see `resolve_api_key`), registered for redaction. With `scrub_env` (the daemon, which
    lives long; not the one-shot commands, whose `main` may be called in-process) a key that came from
    the environment is removed from it, /proc/<pid>/environ included."""
    key, source = resolve_api_key(config.api)
    logs.REDACTOR.add_secret(key)
    if scrub_env and source == f"${config.api.key_env}" and not scrub_variable(config.api.key_env):
        log.warning("api_key_left_in_environment", variable=config.api.key_env,
                    hint="could not overwrite it in /proc/self/environ; prefer LoadCredential= or api.key_file")
    if config.api.key_file is not None and source == str(config.api.key_file) \
            and key_file_is_shared(config.api.key_file):
        log.warning("key_file_readable_by_others", path=source, hint=f"chmod 600 {source}")
    return key


def _client(config: Config, key: str) -> NextmvClient:
    return NextmvClient(config.api.url, key, connect_timeout=config.api.connect_timeout_seconds,
                        read_timeout=config.api.read_timeout_seconds, verify=build_verify(config.api.ca_bundle))


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.service import Service

    config = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    # Threads that come back from I/O (the start-up scan's stats, HTTP answers) wait for the GIL at most
    # this long instead of the default 5 ms; measured: the 100,000-folder scan under load goes faster.
    sys.setswitchinterval(0.001)
    service = Service(config, _api_key(config, scrub_env=True),
                      on_reload=lambda new: logs.configure(new.logging.level, new.logging.format))

    def on_stop(signum: int, frame: FrameType | None) -> None:
        service.request_stop()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        service.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    try:
        service.start()
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        service.shutdown()
        return FAILED
    service.run()
    return OK


def cmd_track(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    folder = Path(args.folder).absolute()
    watch = config.watch_for(folder)
    app = args.application_id or (watch.application_id if watch else None)
    if app is None:
        print(f"nextmv-watcher: {folder} is not in a watched path; give --application-id", file=sys.stderr)
        return USAGE
    files: FilesConfig = watch.files if watch else config.files
    formats = watch.format if watch else FormatConfig()
    store = StateStore.of(config)
    opened = _open_with_marker(store, folder)
    if opened is None:
        return FAILED
    d, tracked = opened
    with d:
        if tracked is not None:
            print(f"nextmv-watcher: {folder} is already tracked as run {tracked.get('run_id')}", file=sys.stderr)
            return FAILED
        job = Job(app, watch.instance_id if watch else None, files, formats, config.completion.marker)
        return _track_open(config, store, d, job)


def _open_with_marker(store: StateStore, folder: Path) -> tuple[RunDir, dict[str, Any] | None] | None:
    """The folder, open, and its tracked marker (or None); None after printing why it cannot be read."""
    try:
        d = RunDir.open(folder)
    except FolderError as exc:
        print(f"nextmv-watcher: {folder}: {exc.problem}", file=sys.stderr)
        return None
    try:
        return d, store.tracked(d)
    except WatcherError as exc:
        d.close()
        print(f"nextmv-watcher: {folder}: {exc}", file=sys.stderr)
        return None


def _track_open(config: Config, store: StateStore, d: RunDir, job: Job) -> int:
    """Track the open folder now, the way the daemon does (`watcher.attempt`), its lease kept alive."""
    folder = d.path
    client = _client(config, _api_key(config))
    claims = Claims(clock=time.time, store=store)
    keeper = LeaseKeeper(claims)
    keeper.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            tracker = Tracker(client, store, config.state_dir / "spool", executor=pool, lookup=RunLookup(client))
            with Attempts(store, claims, keeper, tracker).claimed(d) as held:
                if held is None:
                    print(f"nextmv-watcher: {folder} is being tracked by another process ({claims.holder(d)})",
                          file=sys.stderr)
                    return FAILED
                if held.recheck() == "tracked":   # a failed marker is what `track` overrides
                    print(f"nextmv-watcher: {folder} was tracked by another process meanwhile", file=sys.stderr)
                    return FAILED
                outcome = held.track(held.inspect(job), job)
                store.remove(d, FAILED_MARKER)
    except WatcherError as exc:
        print(f"nextmv-watcher: {folder}: could not track: {logs.REDACTOR.scrub(str(exc))}", file=sys.stderr)
        return FAILED
    finally:
        keeper.stop()
        client.close()
    print(outcome.run_id)
    return OK


def cmd_scan(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    reports = list(scan_all(config, StateStore.of(config), time.time()))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
        return OK
    width = max((len(r.folder) for r in reports), default=6)
    print(f"{'STATE':<11} {'FOLDER':<{width}}  REASON")
    for r in reports:
        reason = f"run {r.run_id}" if r.state == "tracked" else r.reason
        print(f"{r.state:<11} {r.folder:<{width}}  {reason}")
    counts = {s: sum(1 for r in reports if r.state == s) for s in ("tracked", "failed", "pending", "incomplete",
                                                                  "invalid")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return OK


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    key = _api_key(config)
    print(f"configuration {config.source}: ok ({len(config.watch)} watched path(s))")
    for i, watch in enumerate(config.watch):
        if not os.access(watch.path, os.W_OK | os.X_OK):
            # Under the hardened unit (ProtectSystem=strict) only ReadWritePaths= are writable.
            print(f"warning: watch[{i}].path {watch.path} is not writable by this user: markers would go to "
                  f"{config.state_dir}/folders; under systemd add it to ReadWritePaths= with a drop-in "
                  f"(systemctl edit nextmv-watcher) and restart", file=sys.stderr)
    for sysctl, risk in disabled_link_protections():
        log.warning("link_protection_disabled", sysctl=sysctl, risk=risk,
                    hint=f"sysctl -w {sysctl}=1, and set it in /etc/sysctl.d/ to keep it")
    if args.offline:
        return OK
    client = _client(config, key)
    problems = 0
    try:
        for app in sorted({w.application_id for w in config.watch}):
            try:
                client.get_application(app, attempts=2)
            except ApplicationNotFound:
                print(f"application {app}: NOT FOUND (check watch[].application_id)")
                problems += 1
            except AuthError as exc:
                print(f"API key: REJECTED ({exc.status})")
                return FAILED
            except ApiError as exc:
                print(f"API {config.api.url}: UNREACHABLE ({logs.REDACTOR.scrub(str(exc))})")
                return FAILED
            else:
                print(f"application {app}: ok")
    finally:
        client.close()
    return FAILED if problems else OK


def cmd_retry(args: argparse.Namespace) -> int:
    if args.all_failed == (args.folder is not None):
        print("nextmv-watcher: retry: give either FOLDER or --all-failed", file=sys.stderr)
        return USAGE
    if args.application and not args.all_failed:
        print("nextmv-watcher: retry: --application goes with --all-failed", file=sys.stderr)
        return USAGE
    if args.all_failed:
        return _retry_all(_load(args), args.application)
    try:
        config: Config | None = _load(args)
    except ConfigError:
        if args.config:
            raise
        config = None
    state_dir = config.state_dir if config else default_state_dir()
    store = StateStore.of(config) if config else StateStore(state_dir)
    folder = Path(args.folder).absolute()
    try:
        cleared = _clear_failure(store, folder)
    except WatcherError as exc:
        print(f"nextmv-watcher: {folder}: {exc}", file=sys.stderr)
        return FAILED
    if not cleared:
        print(f"nextmv-watcher: {folder} has no failed marker", file=sys.stderr)
        return FAILED
    print(f"{folder}: failed marker removed; it will be tracked again")
    _poke(config.control_socket if config else default_control_socket(state_dir))
    return OK


def _retry_all(config: Config, application: str | None) -> int:
    watches = [w for w in config.watch if application is None or w.application_id == application]
    if not watches:
        print(f"nextmv-watcher: no watched path has application {application}", file=sys.stderr)
        return USAGE
    store = StateStore.of(config)
    count = problems = 0
    for watch in watches:
        for folder in sorted(iter_folders(watch.path)):
            if quick_state(store, folder) != "failed":
                continue
            try:
                cleared = _clear_failure(store, folder)
            except WatcherError as exc:
                print(f"nextmv-watcher: {exc}", file=sys.stderr)
                problems += 1
                continue
            if cleared:
                print(folder)
                count += 1
    print(f"{count} failed folder(s) will be tracked again", file=sys.stderr)
    if count:
        _poke(config.control_socket)
    return FAILED if problems else OK


def _clear_failure(store: StateStore, folder: Path) -> bool:
    """Remove the failed marker and reset the attempt count; open intents stay, so that a run a POST
    may have created is looked up before anything is posted again. False when there was no marker.
    The folder is opened once and everything goes through it. Raises WatcherError (FolderError when the
    folder cannot be opened or a state file is not ours, StateError)."""
    with RunDir.open(folder) as d:
        if not store.remove(d, FAILED_MARKER):
            return False
        try:
            journal = store.journal(d)
        except UnsafeStateFile:
            return True   # not ours: left alone; the daemon will find it again and say so
        journal.attempts, journal.next_attempt_at, journal.last_error, journal.repeats = 0, None, None, 0
        if journal.is_empty:
            store.remove(d, JOURNAL)
        else:
            store.save_journal(d, journal)
    return True


def _poke(socket_path: Path | None) -> None:
    """Ask a running daemon to rescan now, so that it sees a folder whose marker was removed."""
    if socket_path is None:
        return
    from watcher import control

    try:
        control.request(socket_path, "rescan")
    except OSError:
        return   # no daemon: it rescans at start-up anyway


def cmd_forget(args: argparse.Namespace) -> int:
    config = _load(args)
    store = StateStore.of(config)
    folder = Path(args.folder).absolute()
    opened = _open_with_marker(store, folder)
    if opened is None:
        return FAILED
    d, tracked = opened
    with d:
        if tracked is None:
            print(f"nextmv-watcher: {folder} has no tracked marker", file=sys.stderr)
            return FAILED
        if not args.yes:
            if not sys.stdin.isatty():
                print("nextmv-watcher: forget: not asking without a terminal; give --yes", file=sys.stderr)
                return USAGE
            print(f"Forget run {tracked.get('run_id')} of {folder} and track it again? [y/N] ", end="",
                  file=sys.stderr, flush=True)
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                print("nextmv-watcher: nothing forgotten", file=sys.stderr)
                return FAILED
        try:
            store.remove(d, TRACKED_MARKER)
        except StateError as exc:
            print(f"nextmv-watcher: {exc}", file=sys.stderr)
            return FAILED
    print(f"{folder}: forgot run {tracked.get('run_id')}; it will be tracked again as a new run")
    _poke(config.control_socket)
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    from watcher import control

    config = _load(args)
    socket_path = config.control_socket
    try:
        if socket_path is None:
            raise FileNotFoundError("no control socket configured")
        response = control.request(socket_path, "status")
    except OSError as exc:
        print(f"nextmv-watcher: no daemon answers on {socket_path} ({exc.strerror or exc}); "
              "showing a scan of the watched paths instead", file=sys.stderr)
        return print_scan_status(config, json_output=args.json)
    if not response.get("ok") or not isinstance(response.get("status"), dict):
        print(f"nextmv-watcher: the daemon answered: {response.get('error', response)}", file=sys.stderr)
        return FAILED
    status: dict[str, Any] = response["status"]
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return OK


def cmd_sync(args: argparse.Namespace) -> int:
    from watcher.sync import run_sync

    config = _load(args)
    if sys.stderr.isatty():
        # The progress bar owns the terminal: only warnings and errors are logged, above it.
        level = config.logging.level if LOG_LEVELS.index(config.logging.level) >= LOG_LEVELS.index("warning") \
            else "warning"
        logs.configure(level, config.logging.format, stream=cast(TextIO, _CurrentStderr()))
    else:
        logs.configure(config.logging.level, config.logging.format)
    return run_sync(config, _api_key(config), out=sys.stdout, err=sys.stderr)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time, so that log lines go through the progress bar's
    redirection and appear above it instead of tearing it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def cmd_fake_cloud(args: argparse.Namespace) -> int:
    from watcher.fakecloud import serve

    serve(args.port, [args.api_key], None, None)
    return OK


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return run_demo(keep=args.keep)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "track": cmd_track, "scan": cmd_scan, "check": cmd_check, "retry": cmd_retry,
    "forget": cmd_forget, "status": cmd_status, "sync": cmd_sync, "fake-cloud": cmd_fake_cloud, "demo": cmd_demo,
}
