"""`check` (is the configuration, the key and each application right?) and `status` (what is the running
daemon doing?)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

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
    locate_api_key,
    log,
    require_a_watched_path,
)
from watcher.cli.hardening import disabled_link_protections
from watcher.cli.status import format_status, print_scan_status
from watcher.cloud.roundtrip import PROBE_NAME, Result, Roundtrip
from watcher.cloud.tracker import Limits
from watcher.config import Config
from watcher.daemon import control_socket as control
from watcher.daemon.identity import Match, config_of, match
from watcher.errors import ApiError, ApplicationNotFound, AuthError, ConfigError


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args)
    logs.configure(config.logging.level, config.logging.format)
    missing = {g.path: g.problem for g in require_a_watched_path(config)}
    print(f"configuration {config.source}: ok ({len(config.watch)} watched path(s))")
    for i, watch in enumerate(config.watch):
        if watch.path in missing:
            print(f"warning: watch[{i}].path {watch.path} {missing[watch.path]}: nothing there is tracked until "
                  "a directory is back at this path; the daemon watches it again as soon as it is",
                  file=sys.stderr)
        elif not os.access(watch.path, os.W_OK | os.X_OK):
            # Under the hardened unit (ProtectSystem=strict) only ReadWritePaths= are writable.
            print(f"warning: watch[{i}].path {watch.path} is not writable by this user: markers would go to "
                  f"{config.state_dir}/folders; under systemd add it to ReadWritePaths= with a drop-in "
                  f"(systemctl edit nextmv-watcher) and restart", file=sys.stderr)
    _warn_settle_mode(config)
    for sysctl, risk in disabled_link_protections():
        log.warning("link_protection_disabled", sysctl=sysctl, risk=risk,
                    hint=f"sysctl -w {sysctl}=1, and set it in /etc/sysctl.d/ to keep it")
    if args.offline:
        if args.roundtrip:
            raise CommandError(USAGE, "check: --roundtrip needs the API; drop --offline")
        print(_offline_key_note(config))
        return OK
    key = api_key(config)   # without --offline a missing key is a usage error (exit 2)
    if args.roundtrip:
        return _roundtrip(config, key, args)
    api = client(config, key)
    problems = 0
    try:
        for app in sorted({w.application_id for w in config.watch}):
            try:
                api.get_application(app, attempts=2)
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
        api.close()
    return FAILED if problems else OK


def _offline_key_note(config: Config) -> str:
    """`check --offline` validates without the key (CI, configuration management): where it would come
    from, if anywhere, and that it was not checked. Never the key itself."""
    try:
        _, source = locate_api_key(config)
    except ConfigError as exc:
        return f"API key: not checked (--offline; {'; '.join(exc.problems)}; `run` needs one)"
    return f"API key: found in {source}, not checked (--offline)"


def _warn_settle_mode(config: Config) -> None:
    """Settle mode guesses when a producer is done; say so, and what is safer (a warning: exit 0)."""
    if config.completion.marker is not None:
        return
    paths = ", ".join(str(w.path) for w in config.watch)
    print(f"warning: completion.marker is not set, so {paths} use(s) settle mode: a folder counts as complete "
          f"once nothing in it changed for {config.completion.settle_seconds:g} s (completion.settle_seconds) "
          "and none of its files is seen open. The daemon cannot see a file opened before it watched the "
          "folder, nor any open on a `polling: true` path, and it judges only .json files by their content, so "
          "a producer that pauses mid-file may get a partial file tracked. Marker mode is safer: set "
          "completion.marker: DONE and have producers write DONE after closing every file (or write a "
          "dot-folder and rename it into place)", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    socket_path = config.control_socket
    try:
        if socket_path is None:
            raise FileNotFoundError("no control socket configured")
        response = control.request(socket_path, "status")
    except OSError as exc:
        print(f"nextmv-watcher: no daemon answers on {socket_path} ({exc.strerror or exc}); "
              "showing a scan of the watched paths instead", file=sys.stderr)
        return print_scan_status(config, json_output=args.json)
    daemon = response.get("daemon")
    same = match(daemon, config)
    if same is Match.OTHER:   # two configurations on one socket: its answer is not about ours
        print(f"nextmv-watcher: the daemon answering on {socket_path} runs another configuration "
              f"({config_of(daemon)}), not {config.source}; showing a scan of the watched paths instead "
              "(daemons on one host need their own state_dir)", file=sys.stderr)
        return print_scan_status(config, json_output=args.json)
    if not response.get("ok") or not isinstance(response.get("status"), dict):
        raise CommandError(FAILED, f"the daemon answered: {response.get('error', response)}")
    status: dict[str, Any] = response["status"]
    if same is Match.RELOAD_PENDING:
        status = {**status, "reload_pending": True}
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return OK


def _roundtrip(config: Config, key: str, args: argparse.Namespace) -> int:
    """Post a probe run to each application and print, per assumption, held / violated / could not tell."""
    apps = [args.application] if args.application else sorted({w.application_id for w in config.watch})
    confirm(f"check --roundtrip posts probe runs named {PROBE_NAME!r} to {', '.join(apps)}; they stay in "
            "the run history, where experiments and shadow tests may see them. Go on?",
            yes=args.yes, command="check --roundtrip", declined="no probe posted")
    api = client(config, key)
    violated = False
    try:
        for app in apps:
            check = Roundtrip(api, Limits.of(config), max_pages=config.api.lookup_max_pages)
            try:
                findings = check.run(app)
            except ApplicationNotFound:
                print(f"application {app}: NOT FOUND")
                violated = True
                continue
            except AuthError as exc:
                raise CommandError(FAILED, f"API key: REJECTED ({exc.status})") from None
            except ApiError as exc:
                raise CommandError(FAILED, f"API {config.api.url}: UNREACHABLE "
                                           f"({logs.REDACTOR.scrub(str(exc))})") from None
            for f in findings:
                print(f"application {app}: {f.assumption}: {f.result.value} ({f.detail})")
                if f.result is Result.VIOLATED:
                    violated = True
                    print(f"  means: {f.meaning}")
    finally:
        api.close()
    return FAILED if violated else OK
