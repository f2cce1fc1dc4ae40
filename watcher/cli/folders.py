"""`track`, `scan`, `retry` and `forget`: one folder, or every folder under the watched paths, on disk.

Every folder is opened once (`RunDir`) and everything done to it goes through that descriptor, so
an admin running these as root is as safe inside a producer's folder as the daemon is."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from watcher import logs
from watcher.cli.common import (
    FAILED,
    OK,
    USAGE,
    CommandError,
    api_key,
    client,
    confirm,
    load,
    tell_daemon,
    tell_daemon_at,
)
from watcher.cloud.lookup import RunLookup
from watcher.cloud.tracker import Limits, Tracker
from watcher.config import (
    Config,
    FilesConfig,
    FormatConfig,
    default_control_socket,
    default_state_dir,
    is_system_config,
    resolve_config_path,
)
from watcher.daemon import identity
from watcher.daemon.attempt import Attempts, Held, Job
from watcher.daemon.lease import LeaseKeeper
from watcher.errors import ConfigError, FolderError, LookupInconclusive, NewerState, WatcherError
from watcher.runfolder.claims import Claims
from watcher.runfolder.markers import FAILED as FAILED_MARKER
from watcher.runfolder.markers import STATE_FILES, StateStore
from watcher.runfolder.markers import TRACKED as TRACKED_MARKER
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.scan import iter_folders, missing_paths, quick_state, scan_all, table
from watcher.runfolder.schema import refuse_newer

log = structlog.get_logger("watcher.cli.folders")


def cmd_track(args: argparse.Namespace) -> int:
    config = load(args)
    logs.configure(config.logging.level, config.logging.format)
    folder = Path(args.folder).absolute()
    if not os.path.lexists(folder):
        raise CommandError(USAGE, f"{folder} does not exist")
    watch = config.watch_for(folder)
    app = args.application_id or (watch.application_id if watch else None)
    if app is None:
        raise CommandError(USAGE, f"{folder} is not in a watched path; give --application-id")
    files: FilesConfig = watch.files if watch else config.files
    formats = watch.format if watch else FormatConfig()
    store = StateStore.of(config)
    d, tracked = _open_with_marker(store, folder)
    with d:
        if tracked is not None:
            raise CommandError(FAILED, f"{folder} is already tracked as run {tracked.get('run_id')}")
        try:   # a newer version's journal or failed marker: not ours to read, post or remove
            refuse_newer(lambda name: store.read(d, name), STATE_FILES)
        except NewerState as exc:
            raise CommandError(FAILED, str(exc)) from None
        if args.repost:
            _confirm_repost(store, d, app, yes=args.yes)
        elif args.yes:
            raise CommandError(USAGE, "track: --yes goes with --repost")
        job = Job(app, watch.instance_id if watch else None, files, formats, config.completion.marker)
        print(_track_open(config, store, d, job, repost=args.repost))
    return OK


def _confirm_repost(store: StateStore, d: RunDir, app: str, *, yes: bool) -> None:
    """Ask before dropping the open intents (unless `yes`); refuse without a terminal. Raises CommandError."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(USAGE, "track --repost: not asking without a terminal; give --yes")
    try:
        intents = len(store.journal(d).intents)
    except WatcherError as exc:
        raise CommandError(FAILED, f"{d.path}: {exc}") from None
    print(f"{d.path} has {intents} open intent(s): a run it posted may already exist in application {app} "
          "even though the look-up could not find it. Posting again may create a duplicate run. "
          "Drop the intents and post again? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError(FAILED, "nothing posted")


def _open_with_marker(store: StateStore, folder: Path) -> tuple[RunDir, dict[str, Any] | None]:
    """The folder, open, and its tracked marker (or None). Raises CommandError when it cannot be read."""
    try:
        d = RunDir.open(folder)
    except FolderError as exc:
        raise CommandError(FAILED, f"{folder}: {exc.problem}") from None
    try:
        return d, store.tracked(d)
    except WatcherError as exc:
        d.close()
        raise _failed(folder, exc) from None


def _failed(folder: Path, exc: WatcherError) -> CommandError:
    """The command's error for `folder`: a NewerState names the folder itself, others get it in front."""
    return CommandError(FAILED, str(exc) if isinstance(exc, NewerState) else f"{folder}: {exc}")


def _track_open(config: Config, store: StateStore, d: RunDir, job: Job, *, repost: bool = False) -> str:
    """Track the open folder now, the way the daemon does (`watcher.daemon.attempt`), its lease kept alive;
    `repost`: drop its open intents first (under the claim), so that it is posted without a look-up.
    Returns the run id."""
    folder = d.path
    api = client(config, api_key(config))
    claims = Claims(clock=time.time, store=store)
    keeper = LeaseKeeper(claims)
    keeper.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool, \
                structlog.contextvars.bound_contextvars(folder=str(folder), application_id=job.application_id):
            lookup = RunLookup(api, max_pages=config.api.lookup_max_pages)
            tracker = Tracker(api, store, config.state_dir / "spool", executor=pool, lookup=lookup,
                              limits=Limits.of(config))
            with Attempts(store, claims, keeper, tracker).claimed(d) as held:
                if held is None:
                    raise CommandError(FAILED, f"{folder} is being tracked by another process "
                                               f"({claims.holder(d)})")
                if held.recheck() == "tracked":   # a failed marker is what `track` overrides
                    raise CommandError(FAILED, f"{folder} was tracked by another process meanwhile")
                run = held.inspect(job)
                if repost:
                    _drop_intents(store, held)
                outcome = held.track(run, job)
                store.remove(d, FAILED_MARKER)
                log.info("run_tracked", run_id=outcome.run_id, adopted=outcome.adopted, by="track")
    except LookupInconclusive as exc:
        raise CommandError(FAILED, f"{folder}: could not track: {logs.REDACTOR.scrub(str(exc))}; "
                                   "--repost posts again anyway (a duplicate run is possible)") from None
    except WatcherError as exc:
        raise CommandError(FAILED, f"{folder}: could not track: {logs.REDACTOR.scrub(str(exc))}") from None
    finally:
        keeper.stop()
        api.close()
    return outcome.run_id


def _drop_intents(store: StateStore, held: Held) -> None:
    """`track --repost`: forget the POSTs that may have created the run (durably, before anything is posted)."""
    journal = held.journal()
    if not journal.intents and not journal.lookups_inconclusive:
        return
    log.warning("intents_dropped", folder=str(held.d.path), intents=len(journal.intents),
                reason="track --repost: posting again without a look-up; a duplicate run is possible")
    journal.intents.clear()
    journal.lookups_inconclusive = 0
    store.save_journal(held.d, journal)


def cmd_scan(args: argparse.Namespace) -> int:
    config = load(args)
    logs.configure(config.logging.level, config.logging.format)
    reports = list(scan_all(config, StateStore.of(config), time.time()))
    for gone in missing_paths(config):
        print(f"warning: watched path {gone.path} is missing ({gone.problem}): no folder listed there",
              file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        print("\n".join(table(reports)))
    return OK


def cmd_retry(args: argparse.Namespace) -> int:
    if args.all_failed == (args.folder is not None):
        raise CommandError(USAGE, "retry: give either FOLDER or --all-failed")
    if args.application and not args.all_failed:
        raise CommandError(USAGE, "retry: --application goes with --all-failed")
    if args.all_failed:
        return _retry_all(load(args), args.application)
    try:
        config: Config | None = load(args)
    except ConfigError:
        if args.config:
            raise
        config = None
    # An unreadable default configuration does not stop a retry: the default state directory is used.
    system = config is None and is_system_config(resolve_config_path(None))
    state_dir = config.state_dir if config else default_state_dir(system=system)
    store = StateStore.of(config) if config else StateStore(state_dir)
    folder = Path(args.folder).absolute()
    try:
        cleared = store.clear_failure(folder)
    except WatcherError as exc:
        raise _failed(folder, exc) from None
    if not cleared:
        raise CommandError(FAILED, f"{folder} has no failed marker")
    print(f"{folder}: failed marker removed; it will be tracked again")
    if config is not None:
        tell_daemon(config, "retried", folders=[str(folder)])
    else:   # no configuration to compare: tell the daemon on the default socket only if it watches the folder
        tell_daemon_at(default_control_socket(state_dir, system=system), "retried",
                       meant=lambda d: identity.watches(d, folder),
                       mine=f"a configuration watching {folder.parent}", folders=[str(folder)])
    return OK


def _retry_all(config: Config, application: str | None) -> int:
    watches = [w for w in config.watch if application is None or w.application_id == application]
    if not watches:
        raise CommandError(USAGE, f"no watched path has application {application}")
    store = StateStore.of(config)
    cleared: list[str] = []
    problems = 0
    for watch in watches:
        for folder in sorted(iter_folders(watch.path)):
            if quick_state(store, folder) != "failed":
                continue
            try:
                if store.clear_failure(folder):
                    print(folder)
                    cleared.append(str(folder))
            except WatcherError as exc:
                print(f"nextmv-watcher: {exc}", file=sys.stderr)
                problems += 1
    print(f"{len(cleared)} failed folder(s) will be tracked again", file=sys.stderr)
    if cleared:
        tell_daemon(config, "retried", folders=cleared)
    return FAILED if problems else OK


def cmd_forget(args: argparse.Namespace) -> int:
    config = load(args)
    store = StateStore.of(config)
    folder = Path(args.folder).absolute()
    d, tracked = _open_with_marker(store, folder)
    with d:
        if tracked is None:
            raise CommandError(FAILED, f"{folder} has no tracked marker")
        confirm(f"Forget run {tracked.get('run_id')} of {folder} and track it again?", yes=args.yes,
                command="forget", declined="nothing forgotten")
        try:
            store.remove(d, TRACKED_MARKER)
        except WatcherError as exc:
            raise CommandError(FAILED, str(exc)) from None
    print(f"{folder}: forgot run {tracked.get('run_id')}; it will be tracked again as a new run")
    tell_daemon(config, "rescan")
    return OK
